package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/dynamic"

	"github.com/eastguard/eastguard/controller/kube"
	"github.com/eastguard/eastguard/controller/kube/join"
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
	client  kube.Client
	dynamic dynamic.Interface
}

func newKubeClients(o KubernetesOptions) (*kubeClients, error) {
	cfg, err := kube.RESTConfig(o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	client, dyn, err := kube.NewClients(cfg)
	if err != nil {
		return nil, err
	}
	return &kubeClients{client: client, dynamic: dyn}, nil
}

// verifier checks agents' ServiceAccount tokens with the TokenReview API.
func (k *kubeClients) verifier(o KubernetesOptions, log *zap.Logger) *join.Verifier {
	ns, name, _ := strings.Cut(o.AgentServiceAccount, "/") // check made sure of the form
	return join.NewVerifier(k.client, join.Config{AgentNamespace: ns, AgentServiceAccount: name, Log: log.Named("join")})
}

// runKubernetes publishes the CA for the agents and mirrors pods and
// custom resources into the policy until ctx is done.
func runKubernetes(ctx context.Context, c *Controller, k *kubeClients, o KubernetesOptions, caPEM []byte, reg prometheus.Registerer, log *zap.Logger) error {
	go publishCA(ctx, k, o.Namespace, caPEM, log)
	events, stop := kube.NewEventRecorder(k.client)
	defer stop()
	src := kube.New(kube.Config{Client: k.client, Dynamic: k.dynamic, Repo: c.Policy, Log: log.Named("kubernetes"), Events: events, Registry: reg})
	return src.Run(ctx)
}

// publishCA writes the CA certificate to the ConfigMap the agents mount,
// retrying until it succeeds: agents cannot join before it is there (they
// wait for it), so a failure is logged as an error each time.
func publishCA(ctx context.Context, k *kubeClients, namespace string, caPEM []byte, log *zap.Logger) {
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		err := join.PublishCA(ctx, k.client, namespace, caPEM)
		if err == nil {
			log.Info("CA published for agents", zap.String("configmap", namespace+"/"+join.CAConfigMap))
			return
		}
		log.Error("cannot publish the CA for agents; ServiceAccount joins wait for it", zap.Duration("retry-in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
