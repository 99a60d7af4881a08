package kube

import (
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
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
func NewEventRecorder(client kubernetes.Interface) (EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return eventRecorder{b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Component})}, b.Shutdown
}
