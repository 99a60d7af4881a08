package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/eastguard/eastguard/controller/kube"
)

// KubernetesOptions are the settings of Kubernetes mode.
type KubernetesOptions struct {
	// Enabled runs in Kubernetes mode with the in-cluster configuration;
	// Kubeconfig, if set, uses that file instead (and enables the mode).
	Enabled    bool
	Kubeconfig string
	// AgentServiceAccount is "namespace/name" of the agents'
	// ServiceAccount (default: <Namespace>/eastguard-agent).
	AgentServiceAccount string
	// Namespace is the controller's own namespace (default: the pod's).
	Namespace string
}

// On reports whether the controller runs in Kubernetes mode.
func (k KubernetesOptions) On() bool { return k.Enabled || k.Kubeconfig != "" }

func (k *KubernetesOptions) check() error {
	if !k.On() {
		if k.AgentServiceAccount != "" || k.Namespace != "" {
			return errors.New("--kubernetes-agent-service-account and --kubernetes-namespace need --kubernetes or --kubeconfig")
		}
		return nil
	}
	if k.Namespace == "" {
		k.Namespace = kube.OwnNamespace()
	}
	if k.AgentServiceAccount == "" {
		k.AgentServiceAccount = k.Namespace + "/eastguard-agent"
	}
	ns, name, ok := strings.Cut(k.AgentServiceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("--kubernetes-agent-service-account %q: want NAMESPACE/NAME", k.AgentServiceAccount)
	}
	return nil
}

// kubeClients are the clients of Kubernetes mode.
type kubeClients struct {
	client  kubernetes.Interface
	dynamic dynamic.Interface
}

func newKubeClients(o KubernetesOptions) (*kubeClients, error) {
	cfg, err := kube.RESTConfig(o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &kubeClients{client: client, dynamic: dyn}, nil
}

// runKubernetes mirrors pods and custom resources into the policy until
// ctx is done.
func runKubernetes(ctx context.Context, c *Controller, k *kubeClients, log *zap.Logger) error {
	events, stop := kube.NewEventRecorder(k.client)
	defer stop()
	src := kube.New(kube.Config{Client: k.client, Dynamic: k.dynamic, Repo: c.Policy, Log: log.Named("kubernetes"), Events: events})
	return src.Run(ctx)
}
