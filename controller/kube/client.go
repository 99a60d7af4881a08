package kube

import (
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/scheme"
	typedauthenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
)

// Component is the name the controller's Events and writes carry.
const Component = "eastguard-controller"

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

// Client is the part of the Kubernetes API the controller uses: core/v1
// (pods, namespaces, Events, the CA ConfigMap), authentication/v1
// (TokenReviews, for agents' joins) and discovery (which custom resource
// definitions are installed). It is deliberately not
// kubernetes.Interface: see the package comment (cold build time). The
// fake clientset (k8s.io/client-go/kubernetes/fake) satisfies it, so
// tests use that.
type Client interface {
	CoreV1() typedcorev1.CoreV1Interface
	AuthenticationV1() typedauthenticationv1.AuthenticationV1Interface
	Discovery() discovery.DiscoveryInterfaces
}

// clients is the Client NewClients builds from the per-group typed
// clients.
type clients struct {
	core typedcorev1.CoreV1Interface
	auth typedauthenticationv1.AuthenticationV1Interface
	disc discovery.DiscoveryInterfaces
}

func (c *clients) CoreV1() typedcorev1.CoreV1Interface { return c.core }
func (c *clients) AuthenticationV1() typedauthenticationv1.AuthenticationV1Interface {
	return c.auth
}
func (c *clients) Discovery() discovery.DiscoveryInterfaces { return c.disc }

// NewClients returns the typed Client and the dynamic client (for the
// custom resources) for cfg. All share one HTTP transport. The typed
// clients share one rate limiter, as kubernetes.NewForConfig's clientset
// did; the dynamic client has its own (cfg's QPS and Burst), as it had
// when it was made apart from the clientset, so status writes to many
// custom resources do not slow pod lists and token reviews.
func NewClients(cfg *rest.Config) (Client, dynamic.Interface, error) {
	c := *cfg
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	dynCfg := c // before the typed clients' shared limiter is set
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
	core, err := typedcorev1.NewForConfigAndClient(&c, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client core/v1: %w", err)
	}
	auth, err := typedauthenticationv1.NewForConfigAndClient(&c, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client authentication/v1: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfigAndClient(&c, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client discovery: %w", err)
	}
	dyn, err := dynamic.NewForConfigAndClient(&dynCfg, httpClient)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client dynamic: %w", err)
	}
	return &clients{core: core, auth: auth, disc: disc}, dyn, nil
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

// NewEventRecorder returns an EventRecorder writing core/v1 Events (for
// the cluster-scoped custom resources they go to the default namespace,
// where `kubectl describe policy NAME` finds them) and the function that
// stops it.
func NewEventRecorder(client Client) (EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return eventRecorder{b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Component})}, b.Shutdown
}
