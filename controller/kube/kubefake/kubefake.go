// Package kubefake adapts client-go's fake clientset to kube.Client (and
// so to join.Client), for tests: New(objs...) holds objs, and the
// clientset's methods (CoreV1(), PrependReactor, Actions,
// Discovery().(*fakediscovery.FakeDiscovery)) stay available to set up
// and inspect a test's cluster.
//
// Only tests import it: the fake clientset compiles every API group
// (see the kube package comment), and test/repo's
// TestBinariesAvoidAllGroupsClientGo keeps it out of the binaries.
package kubefake

import (
	"context"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/eastguard/eastguard/controller/kube"
)

// Client is kube.Client over a fake clientset. It also forwards the
// clientset's IsWatchListSemanticsUnSupported, so informers list and
// watch instead of waiting for a watch-list the fake cannot serve.
type Client struct{ *fake.Clientset }

var _ kube.Client = (*Client)(nil)

// New returns a Client over fake.NewClientset(objs...).
func New(objs ...runtime.Object) *Client { return &Client{fake.NewClientset(objs...)} }

func (c *Client) ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	return c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
}

func (c *Client) WatchPods(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, opts)
}

func (c *Client) ListNamespaces(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error) {
	return c.CoreV1().Namespaces().List(ctx, opts)
}

func (c *Client) WatchNamespaces(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.CoreV1().Namespaces().Watch(ctx, opts)
}

func (c *Client) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (c *Client) CreateTokenReview(ctx context.Context, review *authv1.TokenReview) (*authv1.TokenReview, error) {
	return c.AuthenticationV1().TokenReviews().Create(ctx, review, metav1.CreateOptions{})
}

func (c *Client) GetConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	return c.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (c *Client) CreateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	return c.CoreV1().ConfigMaps(cm.Namespace).Create(ctx, cm, metav1.CreateOptions{})
}

func (c *Client) UpdateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	return c.CoreV1().ConfigMaps(cm.Namespace).Update(ctx, cm, metav1.UpdateOptions{})
}

func (c *Client) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

func (c *Client) UpdateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Update(ctx, ev, metav1.UpdateOptions{})
}

func (c *Client) PatchEvent(ctx context.Context, ev *corev1.Event, patch []byte) (*corev1.Event, error) {
	return c.CoreV1().Events(ev.Namespace).Patch(ctx, ev.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
}

func (c *Client) ServerResources(_ context.Context, groupVersion string) (*metav1.APIResourceList, error) {
	return c.Discovery().ServerResourcesForGroupVersion(groupVersion)
}
