package kube

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
)

// Component is the name the controller's Events and writes carry.
const Component = "eastguard-controller"

// discoveryTimeout bounds a look at which custom resources are served,
// as client-go's discovery client bounds its requests.
const discoveryTimeout = 32 * time.Second

// RESTConfig returns the client configuration: from kubeconfig when it is
// given, else the in-cluster one (the pod's ServiceAccount).
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
		return withAgent(cfg), nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: not in a pod (%w); give --kubeconfig to run outside the cluster", err)
	}
	return withAgent(cfg), nil
}

func withAgent(cfg *rest.Config) *rest.Config {
	cfg.UserAgent = Component
	// The defaults (5 qps, burst 10) would make status writes for a few
	// hundred custom resources wait for a minute after a restart.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg
}

// Client is every call the controller makes to the apiserver, apart from
// the custom resources' (the dynamic client): pods and namespaces listed
// and watched (all namespaces) for the informers; one pod, a TokenReview
// and the CA ConfigMap for agents' joins (package join); Events; and
// which eastguard.dev resources the apiserver serves. It is deliberately
// neither kubernetes.Interface nor client-go's typed clients: see the
// package comment (cold build time). NewClients makes the real one over
// client-go's rest client; tests adapt the fake clientset
// (controller/kube/kubefake).
type Client interface {
	ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
	WatchPods(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	ListNamespaces(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error)
	WatchNamespaces(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)

	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	CreateTokenReview(ctx context.Context, review *authv1.TokenReview) (*authv1.TokenReview, error)
	GetConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	// CreateConfigMap and UpdateConfigMap write cm in cm.Namespace.
	CreateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error)
	UpdateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error)

	// CreateEvent, UpdateEvent and PatchEvent (a strategic merge patch)
	// write ev in ev.Namespace: client-go's record.EventSink.
	CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error)
	UpdateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error)
	PatchEvent(ctx context.Context, ev *corev1.Event, patch []byte) (*corev1.Event, error)

	// ServerResources lists the resources the apiserver serves in
	// groupVersion (GROUP/VERSION, not core); a NotFound error when it
	// serves none.
	ServerResources(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error)
}

// scheme knows only the types Client sends and receives: core/v1,
// authentication/v1 and meta/v1's (options, Status, APIResourceList,
// watch events). client-go's kubernetes/scheme registers every API
// group, which compiles all of k8s.io/api (see the package comment).
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	// Both register meta/v1's options and watch events in their group
	// version (metav1.AddToGroupVersion), and core's the unversioned
	// Status and discovery types.
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(fmt.Sprintf("kube: client scheme: %v", err)) // static registrations: a build defect
		}
	}
}

// restClient is the Client over client-go's rest clients of core/v1 and
// authentication/v1, making the requests the typed clients make
// (protobuf preferred, JSON accepted, as they do for built-in types).
type restClient struct {
	core, auth *rest.RESTClient
}

var _ Client = (*restClient)(nil)

// NewClients returns the Client and the dynamic client (for the custom
// resources) for cfg. All share one HTTP transport. Client's requests
// share one rate limiter, as kubernetes.NewForConfig's clientset did;
// the dynamic client has its own (cfg's QPS and Burst), as it had when
// it was made apart from the clientset, so status writes to many custom
// resources do not slow pod lists and token reviews.
func NewClients(cfg *rest.Config) (Client, dynamic.Interface, error) {
	c := *cfg
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	dynCfg := c // before Client's shared limiter is set
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, nil, fmt.Errorf("kubernetes client: burst must be positive when qps (%v) is set", c.QPS)
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	httpClient, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	core, err := newREST(c, "/api", corev1.SchemeGroupVersion, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client core/v1: %w", err)
	}
	auth, err := newREST(c, "/apis", authv1.SchemeGroupVersion, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client authentication/v1: %w", err)
	}
	dyn, err := dynamic.NewForConfigAndClient(&dynCfg, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client dynamic: %w", err)
	}
	return &restClient{core: core, auth: auth}, dyn, nil
}

// newREST is the rest client of one group version, configured as
// client-go's generated clients configure theirs.
func newREST(c rest.Config, apiPath string, gv schema.GroupVersion, httpClient *http.Client) (*rest.RESTClient, error) {
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
	return rest.RESTClientForConfigAndClient(&c, httpClient)
}

// timeout is the server-side timeout of a list or watch, as the typed
// clients derive it.
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds != nil {
		return time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	return 0
}

// list lists resource in all namespaces into out.
func (c *restClient) list(ctx context.Context, resource string, opts metav1.ListOptions, out runtime.Object) error {
	return c.core.Get().UseProtobufAsDefault().Resource(resource).
		VersionedParams(&opts, parameterCodec).Timeout(timeout(opts)).Do(ctx).Into(out)
}

func (c *restClient) watch(ctx context.Context, resource string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.core.Get().UseProtobufAsDefault().Resource(resource).
		VersionedParams(&opts, parameterCodec).Timeout(timeout(opts)).Watch(ctx)
}

func (c *restClient) ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	return out, c.list(ctx, "pods", opts, out)
}

func (c *restClient) WatchPods(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.watch(ctx, "pods", opts)
}

func (c *restClient) ListNamespaces(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error) {
	out := &corev1.NamespaceList{}
	return out, c.list(ctx, "namespaces", opts, out)
}

func (c *restClient) WatchNamespaces(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.watch(ctx, "namespaces", opts)
}

// namespaced checks that a namespaced object names its namespace: an
// empty one would address the resource across all namespaces.
func namespaced(what, namespace, name string) error {
	if namespace == "" {
		return fmt.Errorf("kubernetes client: %s %q: no namespace", what, name)
	}
	return nil
}

// get reads the named object of resource in namespace into out. rest's
// Namespace and Name refuse segments that are not path segments ("..",
// "/"), so a name cannot address another resource.
func (c *restClient) get(ctx context.Context, resource, namespace, name string, out runtime.Object) error {
	if err := namespaced(resource, namespace, name); err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("kubernetes client: %s in %s: no name", resource, namespace)
	}
	return c.core.Get().UseProtobufAsDefault().Namespace(namespace).Resource(resource).Name(name).
		VersionedParams(&metav1.GetOptions{}, parameterCodec).Do(ctx).Into(out)
}

func (c *restClient) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	out := &corev1.Pod{}
	return out, c.get(ctx, "pods", namespace, name, out)
}

func (c *restClient) GetConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	out := &corev1.ConfigMap{}
	return out, c.get(ctx, "configmaps", namespace, name, out)
}

// create posts obj (in namespace) to resource and reads the answer into
// out.
func (c *restClient) create(ctx context.Context, resource, namespace, name string, obj, out runtime.Object) error {
	if err := namespaced(resource, namespace, name); err != nil {
		return err
	}
	return c.core.Post().UseProtobufAsDefault().Namespace(namespace).Resource(resource).
		VersionedParams(&metav1.CreateOptions{}, parameterCodec).Body(obj).Do(ctx).Into(out)
}

// update puts obj (namespace/name) and reads the answer into out.
func (c *restClient) update(ctx context.Context, resource, namespace, name string, obj, out runtime.Object) error {
	if err := namespaced(resource, namespace, name); err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("kubernetes client: update %s in %s: no name", resource, namespace)
	}
	return c.core.Put().UseProtobufAsDefault().Namespace(namespace).Resource(resource).Name(name).
		VersionedParams(&metav1.UpdateOptions{}, parameterCodec).Body(obj).Do(ctx).Into(out)
}

func (c *restClient) CreateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	out := &corev1.ConfigMap{}
	return out, c.create(ctx, "configmaps", cm.Namespace, cm.Name, cm, out)
}

func (c *restClient) UpdateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	out := &corev1.ConfigMap{}
	return out, c.update(ctx, "configmaps", cm.Namespace, cm.Name, cm, out)
}

func (c *restClient) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	return out, c.create(ctx, "events", ev.Namespace, ev.Name, ev, out)
}

func (c *restClient) UpdateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	return out, c.update(ctx, "events", ev.Namespace, ev.Name, ev, out)
}

func (c *restClient) PatchEvent(ctx context.Context, ev *corev1.Event, patch []byte) (*corev1.Event, error) {
	if err := namespaced("events", ev.Namespace, ev.Name); err != nil {
		return nil, err
	}
	if ev.Name == "" {
		return nil, fmt.Errorf("kubernetes client: patch events in %s: no name", ev.Namespace)
	}
	out := &corev1.Event{}
	return out, c.core.Patch(types.StrategicMergePatchType).UseProtobufAsDefault().Namespace(ev.Namespace).
		Resource("events").Name(ev.Name).VersionedParams(&metav1.PatchOptions{}, parameterCodec).
		Body(patch).Do(ctx).Into(out)
}

func (c *restClient) CreateTokenReview(ctx context.Context, review *authv1.TokenReview) (*authv1.TokenReview, error) {
	out := &authv1.TokenReview{}
	return out, c.auth.Post().UseProtobufAsDefault().Resource("tokenreviews").
		VersionedParams(&metav1.CreateOptions{}, parameterCodec).Body(review).Do(ctx).Into(out)
}

// ServerResources asks GET /apis/GROUP/VERSION, as client-go's discovery
// client does (JSON: the discovery documents' usual encoding).
func (c *restClient) ServerResources(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error) {
	gv, err := schema.ParseGroupVersion(groupVersion)
	if err != nil || gv.Group == "" || gv.Version == "" {
		return nil, fmt.Errorf("kubernetes client: discovery of %q: want GROUP/VERSION", groupVersion)
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	out := &metav1.APIResourceList{}
	if err := c.core.Get().AbsPath("/apis", gv.Group, gv.Version).Do(ctx).Into(out); err != nil {
		return nil, err
	}
	if out.GroupVersion != "" && out.GroupVersion != groupVersion {
		return nil, fmt.Errorf("kubernetes client: discovery of %s answered for %s", groupVersion, out.GroupVersion)
	}
	return out, nil
}

// OwnNamespace is the namespace the controller runs in: $POD_NAMESPACE
// (the downward API), else the in-cluster ServiceAccount's namespace file,
// else "eastguard".
func OwnNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "eastguard"
}

// eventRecorder records Events through client-go's broadcaster (which
// aggregates repeats and rate-limits them).
type eventRecorder struct{ rec record.EventRecorder }

func (e eventRecorder) Event(obj *unstructured.Unstructured, eventType, reason, message string) {
	e.rec.Event(obj, eventType, reason, message)
}

// eventSink is record.EventSink over a Client. The broadcaster's calls
// carry no context; each is bounded by eventWriteTimeout so a stuck
// apiserver cannot hold the broadcaster's goroutine for ever.
type eventSink struct{ client Client }

// eventWriteTimeout bounds one Event write.
const eventWriteTimeout = 30 * time.Second

var _ record.EventSink = eventSink{}

func (s eventSink) Create(ev *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventWriteTimeout)
	defer cancel()
	return s.client.CreateEvent(ctx, ev)
}

func (s eventSink) Update(ev *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventWriteTimeout)
	defer cancel()
	return s.client.UpdateEvent(ctx, ev)
}

func (s eventSink) Patch(ev *corev1.Event, patch []byte) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventWriteTimeout)
	defer cancel()
	return s.client.PatchEvent(ctx, ev, patch)
}

// NewEventRecorder returns an EventRecorder writing core/v1 Events (for
// the cluster-scoped custom resources they go to the default namespace,
// where `kubectl describe policy NAME` finds them) and the function that
// stops it. The recorder's scheme is Client's small one: it is only asked
// for the kind of an object that does not say its own, and the custom
// resources (unstructured) say theirs.
func NewEventRecorder(client Client) (EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(eventSink{client})
	return eventRecorder{b.NewRecorder(scheme, corev1.EventSource{Component: Component})}, b.Shutdown
}
