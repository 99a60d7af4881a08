package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the server-side apply field manager of Apply and
// ApplyDryRun.
const FieldManager = "eastguard-test"

// Namespace creates a namespace named after t (plus a random suffix, so
// tests sharing a cluster never collide) and returns its name. There is
// no namespace controller: the namespace is not deleted afterwards, it
// goes with the cluster.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	base := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(base) > 50 {
		base = strings.TrimRight(base[:50], "-")
	}
	name := base + "-" + utilrand.String(5)
	c.CreateNamespace(t, name)
	return name
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// CreateNamespace creates namespace name.
func (c *Cluster) CreateNamespace(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := ctx()
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// CreateServiceAccount creates ServiceAccount ns/name. Without a
// controller-manager nobody else does, not even "default".
func (c *Cluster) CreateServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	ctx, cancel := ctx()
	defer cancel()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	sa, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating ServiceAccount %s/%s: %v", ns, name, err)
	}
	return sa
}

// CreatePod creates pod ns/name running as ServiceAccount sa (which must
// exist), bound to node (no scheduler or kubelet runs; the Node object
// need not exist), then sets its status as a kubelet would: phase
// Running, Ready, status.podIP = podIPs[0] and status.podIPs = podIPs
// (at most one IPv4 and one IPv6, the apiserver checks). With no podIPs
// the pod stays Pending, as created. It returns the pod as stored.
func (c *Cluster) CreatePod(t testing.TB, ns, name, node string, labels map[string]string, sa string, podIPs []string) *corev1.Pod {
	t.Helper()
	ctx, cancel := ctx()
	defer cancel()
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName:           sa,
			NodeName:                     node,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	if len(podIPs) == 0 {
		return pod
	}
	now := metav1.NewTime(time.Now())
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.PodIP = podIPs[0]
	pod.Status.PodIPs = nil
	for _, ip := range podIPs {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	pod, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("setting the status of pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// TokenFor returns a ServiceAccount token for ns/serviceAccount bound to
// pod podName (podUID) with the one audience given, valid for an hour:
// what a kubelet mounts as a projected token. The pod must exist, run as
// that ServiceAccount and have that UID, or the apiserver refuses.
func (c *Cluster) TokenFor(t testing.TB, ns, serviceAccount, podName, podUID, audience string) string {
	t.Helper()
	ctx, cancel := ctx()
	defer cancel()
	hour := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{audience},
		ExpirationSeconds: &hour,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: podName, UID: types.UID(podUID)},
	}}
	resp, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s bound to pod %s: %v", ns, serviceAccount, podName, err)
	}
	return resp.Status.Token
}

// Kubectl runs the installed kubectl with the admin kubeconfig and
// returns its output (stdout and stderr); it fails t if kubectl fails.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.RunKubectl(nil, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// RunKubectl runs the installed kubectl with the admin kubeconfig, stdin
// as its standard input, and returns its combined output and error (an
// *exec.ExitError when it ran and failed, as `kubectl auth can-i` does
// for "no").
func (c *Cluster) RunKubectl(stdin []byte, args ...string) (string, error) {
	bin, err := exec.LookPath("kubectl")
	if err != nil {
		return "", fmt.Errorf("kubectl is not installed: %w", err)
	}
	ctx, cancel := ctx()
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Apply server-side-applies every object of yamlDocs (YAML documents
// separated by ---, or JSON), as field manager FieldManager with
// conflicts forced, as admin, and returns the objects as stored. A
// namespaced object without a namespace goes to "default". It fails t
// on the first error.
func (c *Cluster) Apply(t testing.TB, yamlDocs []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.ServerSideApply(yamlDocs, false)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return objs
}

// ApplyDryRun is Apply with dryRun=All: the apiserver validates, admits
// and defaults every object as if it were applied, and stores nothing.
func (c *Cluster) ApplyDryRun(t testing.TB, yamlDocs []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.ServerSideApply(yamlDocs, true)
	if err != nil {
		t.Fatalf("apply --dry-run=server: %v", err)
	}
	return objs
}

// ServerSideApply is Apply and ApplyDryRun returning the error instead:
// for tests that expect the apiserver to refuse. Objects before the
// failing one stay applied (unless dryRun).
func (c *Cluster) ServerSideApply(yamlDocs []byte, dryRun bool) ([]*unstructured.Unstructured, error) {
	ctx, cancel := ctx()
	defer cancel()
	opts := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(yamlDocs), 4096)
	var applied []*unstructured.Unstructured
	for i := 0; ; i++ {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return applied, nil
		} else if err != nil {
			return applied, fmt.Errorf("document %d: %w", i+1, err)
		}
		if len(doc) == 0 {
			continue // an empty document (a leading ---, a comment)
		}
		obj := &unstructured.Unstructured{Object: doc}
		gvk := obj.GroupVersionKind()
		where := fmt.Sprintf("document %d (%s %s)", i+1, gvk.Kind, obj.GetName())
		mapping, err := c.mapper.mapping(gvk)
		if err != nil {
			return applied, fmt.Errorf("%s: %w", where, err)
		}
		res := c.Dynamic.Resource(mapping.Resource)
		var out *unstructured.Unstructured
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace("default")
			}
			out, err = res.Namespace(obj.GetNamespace()).Apply(ctx, obj.GetName(), obj, opts)
		} else {
			out, err = res.Apply(ctx, obj.GetName(), obj, opts)
		}
		if err != nil {
			return applied, fmt.Errorf("%s: %w", where, err)
		}
		applied = append(applied, out)
	}
}

// mapper maps kinds to resources by discovery, cached; the cache is
// refreshed once when a kind is unknown (a CRD applied a moment ago).
type mapper struct {
	mu sync.Mutex // guards m's Reset against concurrent lookups
	m  *restmapper.DeferredDiscoveryRESTMapper
}

func newMapper(client kubernetes.Interface) *mapper {
	return &mapper{m: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))}
}

func (m *mapper) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mapping, err := m.m.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		m.m.Reset()
		mapping, err = m.m.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	return mapping, err
}
