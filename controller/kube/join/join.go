// Package join is the controller's side of agents joining with their
// Kubernetes ServiceAccount token, in Kubernetes mode: the Verifier checks
// a token with the TokenReview API and the token's pod with a Pod lookup
// (agentapi.ServiceAccountVerifier), and PublishCA publishes the
// controller's CA certificate in the ConfigMap agents mount to trust the
// controller on their first join.
//
// A token admits a node only if all of these hold: the apiserver
// authenticates it for the audience (default "eastguard"); it is the
// agents' ServiceAccount in the agents' namespace; it is bound to a pod
// (a projected token: a legacy Secret-based token is refused); that pod
// still exists with the token's UID, is not being deleted, and runs on the
// node the agent claims. The node check is what stops an agent on one node
// from joining as another with its own, valid token.
//
// Permissions it needs (RBAC): create tokenreviews
// (authentication.k8s.io, cluster-wide); get pods in the agents'
// namespace; in the controller's namespace, create configmaps and get and
// update the configmap named eastguard-ca (create cannot be limited to a
// name).
//
// It must not import agent/... (controller and agent never import each
// other); it imports controller/agentapi for the verifier's types.
package join

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/eastguard/eastguard/controller/agentapi"
)

// DefaultAudience is the audience agents' projected tokens are issued for.
const DefaultAudience = "eastguard"

// The TokenReview's extra keys for a token bound to a pod.
const (
	extraPodName      = "authentication.kubernetes.io/pod-name"
	extraPodUID       = "authentication.kubernetes.io/pod-uid"
	extraNodeName     = "authentication.kubernetes.io/node-name"
	extraCredentialID = "authentication.kubernetes.io/credential-id"
)

// Client is the part of the Kubernetes API the verifier and PublishCA use
// (kube.Client satisfies it; tests use the fake clientset through
// controller/kube/kubefake). Not client-go's clientset or typed clients:
// they are most of the controller's cold build time (see the kube
// package comment).
type Client interface {
	CreateTokenReview(ctx context.Context, review *authv1.TokenReview) (*authv1.TokenReview, error)
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	GetConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	// CreateConfigMap and UpdateConfigMap write cm in cm.Namespace.
	CreateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error)
	UpdateConfigMap(ctx context.Context, cm *corev1.ConfigMap) (*corev1.ConfigMap, error)
}

// Config configures a Verifier.
type Config struct {
	// AgentNamespace and AgentServiceAccount are the agents' pods'
	// namespace and ServiceAccount: the only tokens admitted. Both are
	// required.
	AgentNamespace      string
	AgentServiceAccount string
	// Audience is what tokens must be issued for (default
	// DefaultAudience).
	Audience string
	Log      *zap.Logger
}

// Verifier checks agents' ServiceAccount tokens. It implements
// agentapi.ServiceAccountVerifier.
type Verifier struct {
	client Client
	cfg    Config
	log    *zap.Logger
}

var _ agentapi.ServiceAccountVerifier = (*Verifier)(nil)

// NewVerifier makes a Verifier that asks client's apiserver.
func NewVerifier(client Client, cfg Config) *Verifier {
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Verifier{client: client, cfg: cfg, log: cfg.Log}
}

// Verify checks token for node (see the package comment). Its errors wrap
// agentapi.ErrServiceAccountInvalid (Unauthenticated),
// agentapi.ErrServiceAccountDenied (PermissionDenied) or
// agentapi.ErrServiceAccountUnavailable (the apiserver could not answer);
// none carries the token.
func (v *Verifier) Verify(ctx context.Context, node, token string) (agentapi.ServiceAccountIdentity, error) {
	var id agentapi.ServiceAccountIdentity
	if v.cfg.AgentNamespace == "" || v.cfg.AgentServiceAccount == "" {
		return id, errors.New("kube join: the agents' namespace and ServiceAccount are not configured")
	}
	review, err := v.client.CreateTokenReview(ctx, &authv1.TokenReview{
		Spec: authv1.TokenReviewSpec{Token: token, Audiences: []string{v.cfg.Audience}},
	})
	if err != nil {
		return id, fmt.Errorf("%w: TokenReview: %v", agentapi.ErrServiceAccountUnavailable, err)
	}
	st := review.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return id, fmt.Errorf("%w: the Kubernetes API refuses it for audience %q: %s", agentapi.ErrServiceAccountInvalid, v.cfg.Audience, why)
	}
	if !slices.Contains(st.Audiences, v.cfg.Audience) {
		return id, fmt.Errorf("%w: it is not for audience %q (its audiences: %s): mount a projected token with audience %q",
			agentapi.ErrServiceAccountInvalid, v.cfg.Audience, strings.Join(st.Audiences, ", "), v.cfg.Audience)
	}
	want := "system:serviceaccount:" + v.cfg.AgentNamespace + ":" + v.cfg.AgentServiceAccount
	if st.User.Username != want {
		return id, fmt.Errorf("%w: it is %q, not the agents' ServiceAccount %q", agentapi.ErrServiceAccountDenied, st.User.Username, want)
	}
	extra := func(k string) string {
		if vals := st.User.Extra[k]; len(vals) == 1 {
			return vals[0]
		}
		return ""
	}
	id = agentapi.ServiceAccountIdentity{
		Namespace: v.cfg.AgentNamespace, ServiceAccount: v.cfg.AgentServiceAccount,
		Pod: extra(extraPodName), PodUID: extra(extraPodUID), CredentialID: extra(extraCredentialID),
	}
	if id.Pod == "" || id.PodUID == "" {
		return id, fmt.Errorf("%w: it is not bound to a pod (a legacy Secret-based token?): give the agent a projected ServiceAccount token (audience %q)",
			agentapi.ErrServiceAccountDenied, v.cfg.Audience)
	}
	podName := id.Namespace + "/" + id.Pod
	if tokNode := extra(extraNodeName); tokNode != "" && tokNode != node {
		return id, fmt.Errorf("%w: token belongs to pod %s on node %s, not node %s", agentapi.ErrServiceAccountDenied, podName, tokNode, node)
	}
	// The Pod itself, in every case: the node-name claim is optional, and
	// the pod may have been deleted or recreated since the token was
	// issued.
	pod, err := v.client.GetPod(ctx, id.Namespace, id.Pod)
	switch {
	case apierrors.IsNotFound(err):
		return id, fmt.Errorf("%w: token belongs to pod %s, which no longer exists", agentapi.ErrServiceAccountDenied, podName)
	case err != nil:
		return id, fmt.Errorf("%w: pod %s: %v", agentapi.ErrServiceAccountUnavailable, podName, err)
	}
	if err := checkPod(pod, id, node); err != nil {
		return id, err
	}
	id.PodCreated = pod.CreationTimestamp.Time
	claims := unverifiedClaims(token) // TokenReview has authenticated the token
	if id.CredentialID == "" && claims.JTI != "" {
		id.CredentialID = "JTI=" + claims.JTI
	}
	if claims.Exp > 0 {
		id.Expires = time.Unix(claims.Exp, 0)
	}
	v.log.Debug("service account token verified", zap.String("node", node), zap.String("pod", podName),
		zap.String("pod-uid", id.PodUID), zap.String("credential-id", id.CredentialID))
	return id, nil
}

// checkPod says whether pod is the token's pod, alive, on node.
func checkPod(pod *corev1.Pod, id agentapi.ServiceAccountIdentity, node string) error {
	podName := id.Namespace + "/" + id.Pod
	switch {
	case string(pod.UID) != id.PodUID:
		return fmt.Errorf("%w: token belongs to pod %s with UID %s, and that pod is now UID %s (recreated): the agent joins with its new pod's token",
			agentapi.ErrServiceAccountDenied, podName, id.PodUID, pod.UID)
	case pod.DeletionTimestamp != nil:
		return fmt.Errorf("%w: token belongs to pod %s, which is being deleted", agentapi.ErrServiceAccountDenied, podName)
	case pod.Spec.NodeName != node:
		on := pod.Spec.NodeName
		if on == "" {
			on = "(none: not scheduled)"
		}
		return fmt.Errorf("%w: token belongs to pod %s on node %s, not node %s", agentapi.ErrServiceAccountDenied, podName, on, node)
	}
	return nil
}

// claims are the JWT claims read from a token the apiserver has
// authenticated (never trusted before that).
type claims struct {
	JTI string `json:"jti"`
	Exp int64  `json:"exp"`
}

// unverifiedClaims decodes a JWT's payload; anything unreadable gives
// zero claims (the caller then remembers the token by its hash, for
// agentapi's default time).
func unverifiedClaims(token string) claims {
	var c claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c
	}
	_ = json.Unmarshal(payload, &c) // zero claims on error, as documented
	return c
}
