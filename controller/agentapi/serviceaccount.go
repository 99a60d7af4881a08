package agentapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// ServiceAccountVerifier checks an agent's Kubernetes ServiceAccount token
// (controller/kube/join in Kubernetes mode): that it is valid, for the
// agents' ServiceAccount, and bound to a pod that runs on node. Its errors
// wrap ErrServiceAccountInvalid, ErrServiceAccountDenied or
// ErrServiceAccountUnavailable, and never carry the token.
type ServiceAccountVerifier interface {
	Verify(ctx context.Context, node, token string) (ServiceAccountIdentity, error)
}

// ServiceAccountIdentity is what a verified token says about its bearer.
type ServiceAccountIdentity struct {
	Namespace, ServiceAccount string
	// Pod and PodUID are the pod the token is bound to; PodCreated is
	// when it was created (a revoked node is admitted again only by a
	// pod created after the revocation).
	Pod, PodUID string
	PodCreated  time.Time
	// CredentialID identifies the token ("JTI=..."; "" when the apiserver
	// gives none: the token's hash stands in). A token joins once.
	CredentialID string
	// Expires is the token's expiry: its credential id is remembered
	// until then (zero: for maxRememberedTokenLife).
	Expires time.Time
}

// The verifier's errors, by the answer they get.
var (
	// ErrServiceAccountInvalid: the token is not valid (Unauthenticated).
	ErrServiceAccountInvalid = errors.New("service account token not valid")
	// ErrServiceAccountDenied: a valid token that does not admit this
	// node (PermissionDenied).
	ErrServiceAccountDenied = errors.New("service account token refused")
	// ErrServiceAccountUnavailable: the token could not be checked now
	// (Unavailable; the agent retries).
	ErrServiceAccountUnavailable = errors.New("service account token not checked: kubernetes API unavailable")
)

const (
	// maxUsedTokens bounds the credential ids remembered: a source's joins
	// are rate limited (5 a second by default), so this is hours of a
	// hostile node's fresh tokens; beyond it joins wait (ResourceExhausted).
	maxUsedTokens = 1 << 16
	// maxRememberedTokenLife is how long a token without a known expiry
	// is remembered.
	maxRememberedTokenLife = 48 * time.Hour
)

// errNoServiceAccounts answers a ServiceAccount token given to a
// controller without a verifier.
var errNoServiceAccounts = errors.New("this controller does not accept ServiceAccount tokens: it does not run in Kubernetes mode; join with a join token (egctl token create)")

// verifyServiceAccount checks req's ServiceAccount token for req's node
// and uses up its credential id. On success it returns the identity and a
// function that gives the credential id back (issuing failed on the
// controller's side: the agent may try the same token again).
func (s *Service) verifyServiceAccount(ctx context.Context, j *joinAttempt) (ServiceAccountIdentity, func(), error) {
	if s.cfg.ServiceAccounts == nil {
		return ServiceAccountIdentity{}, nil, j.refuse("service_account", codes.FailedPrecondition, errNoServiceAccounts)
	}
	id, err := s.cfg.ServiceAccounts.Verify(ctx, j.req.GetNode(), j.req.GetServiceAccountToken())
	if err != nil {
		switch {
		case errors.Is(err, ErrServiceAccountUnavailable):
			return id, nil, j.refuse("unavailable", codes.Unavailable, err)
		case errors.Is(err, ErrServiceAccountInvalid):
			return id, nil, j.refuse("service_account", codes.Unauthenticated, err)
		case errors.Is(err, ErrServiceAccountDenied):
			return id, nil, j.refuse("service_account", codes.PermissionDenied, err)
		}
		j.log.Error("join failed: service account token not verified", zap.Error(err))
		return id, nil, status.Error(codes.Internal, "join failed; see the controller's log")
	}
	j.fields = append(j.fields, zap.String("pod", id.Namespace+"/"+id.Pod), zap.String("pod-uid", id.PodUID))
	j.log = j.log.With(j.fields[len(j.fields)-2:]...)
	cred := id.CredentialID
	if cred == "" {
		sum := sha256.Sum256([]byte(j.req.GetServiceAccountToken()))
		cred = "sha256=" + hex.EncodeToString(sum[:])
	}
	now := s.now()
	expires := id.Expires
	if expires.IsZero() {
		expires = now.Add(maxRememberedTokenLife)
	}
	if err := s.usedTokens.Use(cred, expires, now); err != nil {
		if errors.Is(err, admission.ErrOnceFull) {
			return id, nil, j.refuse("rate_limited", codes.ResourceExhausted, err)
		}
		return id, nil, j.refuse("service_account", codes.Unauthenticated,
			fmt.Errorf("%w: a ServiceAccount token joins once; the agent joins again with its next token", err))
	}
	return id, func() { s.usedTokens.Forget(cred) }, nil
}

// podAfterRevocation refuses a ServiceAccount token of a pod created
// before its node was revoked (revoked is zero for a node that is not
// revoked): the kubelet keeps issuing fresh tokens to a running pod, so
// only a new pod (the operator deleted the old one) undoes a revocation.
func podAfterRevocation(node string, id ServiceAccountIdentity, revoked time.Time) error {
	if !revoked.IsZero() && !id.PodCreated.After(revoked) {
		return status.Errorf(codes.PermissionDenied, "node %q was revoked at %s and the token's pod %s/%s was created before (%s): delete the pod so that a new one joins, or join with a new join token",
			node, revoked.UTC().Format(time.RFC3339), id.Namespace, id.Pod, id.PodCreated.UTC().Format(time.RFC3339))
	}
	return nil
}

// joinMethod names how a Join authenticates, in logs and metrics.
func joinMethod(req *pb.JoinRequest) string {
	if req.GetServiceAccountToken() != "" {
		return "service-account"
	}
	return "token"
}
