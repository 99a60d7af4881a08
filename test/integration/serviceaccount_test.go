package integration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// fakeServiceAccounts stands in for controller/kube/join's verifier: each
// token it knows is bound to a pod on one node.
type fakeServiceAccounts struct {
	mu     sync.Mutex
	tokens map[string]saToken
	calls  int
}

type saToken struct {
	node string
	id   agentapi.ServiceAccountIdentity
	err  error // what Verify says of it, whatever the node
}

func (f *fakeServiceAccounts) Verify(_ context.Context, node, token string) (agentapi.ServiceAccountIdentity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	t, ok := f.tokens[token]
	switch {
	case !ok:
		return agentapi.ServiceAccountIdentity{}, fmt.Errorf("%w: the Kubernetes API refuses it", agentapi.ErrServiceAccountInvalid)
	case t.err != nil:
		return agentapi.ServiceAccountIdentity{}, t.err
	case t.node != node:
		return agentapi.ServiceAccountIdentity{}, fmt.Errorf("%w: token belongs to pod %s/%s on node %s, not node %s",
			agentapi.ErrServiceAccountDenied, t.id.Namespace, t.id.Pod, t.node, node)
	}
	return t.id, nil
}

func (f *fakeServiceAccounts) add(token, node string, id agentapi.ServiceAccountIdentity, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tokens == nil {
		f.tokens = map[string]saToken{}
	}
	f.tokens[token] = saToken{node: node, id: id, err: err}
}

func (f *fakeServiceAccounts) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// agentPod is the identity of node's agent pod, created at created.
func agentPod(node, jti string, created time.Time) agentapi.ServiceAccountIdentity {
	return agentapi.ServiceAccountIdentity{Namespace: "eastguard", ServiceAccount: "eastguard-agent", Pod: "eastguard-agent-" + node,
		PodUID: "uid-" + node, PodCreated: created, CredentialID: "JTI=" + jti, Expires: time.Now().Add(time.Hour)}
}

// newSAHarness is a controller in Kubernetes mode (with sa as its
// verifier), and the files an agent pod would mount: the CA's and the
// token's paths (not written).
func newSAHarness(t *testing.T, sa *fakeServiceAccounts, opts ...harnessOpt) (h *harness, caFile, tokenFile string) {
	t.Helper()
	opts = append(opts, func(c *controller.Config) { c.ServiceAccounts = sa })
	h = newHarness(t, opts...)
	h.Apply(twoNodes)
	dir := t.TempDir()
	return h, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
}

func withSA(tokenFile, caFile string) agentOpt {
	return func(c *controlplane.Config) { c.ServiceAccountTokenFile, c.CAFile = tokenFile, caFile }
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestServiceAccountJoin: an agent with a ServiceAccount token file and
// the CA file joins, gets a certificate for its node, renews it, and the
// join is logged and counted by method. The token cannot join a second
// time (replay).
func TestServiceAccountJoin(t *testing.T) {
	sa := &fakeServiceAccounts{}
	h, caFile, tokenFile := newSAHarness(t, sa, func(c *controller.Config) { c.NodeCertTTL = 3 * time.Second })
	sa.add("tok-a", "node-a", agentPod("node-a", "a1", time.Now()), nil)
	writeFile(t, caFile, string(h.CA.CertPEM))
	writeFile(t, tokenFile, "tok-a\n")
	a := h.startAgent("node-a", "", nil, nil, withSA(tokenFile, caFile))
	h.waitApplied(a)
	if node, err := pki.NodeOf(savedCert(t, a.dir).Leaf); err != nil || node != "node-a" {
		t.Fatalf("saved certificate names node %q (%v)", node, err)
	}
	joined := h.Logs.FilterMessage("node joined").FilterField(zap.String("method", "service-account")).
		FilterField(zap.String("pod", "eastguard/eastguard-agent-node-a")).Len()
	if joined != 1 {
		t.Errorf("%d joins logged with method service-account and the pod, want 1", joined)
	}
	if n := h.Counter("eastguard_controller_joins_total", "method", "service-account"); n != 1 {
		t.Errorf("joins_total{method=service-account} = %v, want 1", n)
	}
	// The audit trail has the join as the node's, saying which pod's
	// token admitted it.
	joins, aerr := h.St.AuditRecords(context.Background(), store.AuditQuery{Action: "node.join"})
	if aerr != nil || len(joins) != 1 || joins[0].ActorKind != store.ActorNode || joins[0].Actor != "node-a" ||
		!strings.Contains(joins[0].Detail, "ServiceAccount token of pod eastguard/eastguard-agent-node-a") {
		t.Errorf("node.join audit records: %+v, %v", joins, aerr)
	}
	first := a.client.CertExpiry()
	testutil.Eventually(t, 20*time.Second, "renewals with the certificate, not the token", func() error {
		if got := a.client.CertExpiry(); !got.After(first.Add(2 * time.Second)) {
			return fmt.Errorf("certificate expiry %v, first %v", got, first)
		}
		return nil
	})
	if sa.count() != 1 {
		t.Errorf("the verifier was asked %d times, want once (renewals use the certificate)", sa.count())
	}

	// Replay: the same token (same credential id) again.
	_, err := h.rawClient(nil).Join(context.Background(), saJoinRequest(t, "node-a", "tok-a"))
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "credential already used (JTI=a1") {
		t.Errorf("replayed token: %v, want Unauthenticated, credential already used", err)
	}
	// The agent restarts with its saved certificate: no token needed.
	a.stop()
	os.Remove(tokenFile)
	again := h.startAgent("node-a", "", a.enf, a.dir, withSA(tokenFile, caFile))
	testutil.Eventually(t, 10*time.Second, "the agent to reconnect with its saved certificate", func() error {
		if !again.client.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

func saJoinRequest(t *testing.T, node, token string) *pb.JoinRequest {
	t.Helper()
	key, _, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, node)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.JoinRequest{Node: node, ServiceAccountToken: token, Csr: csr}
}

// TestServiceAccountRefusals: the gRPC answers to a Join with a
// ServiceAccount token, each for its reason.
func TestServiceAccountRefusals(t *testing.T) {
	plain := newHarness(t)
	_, err := plain.rawClient(nil).Join(context.Background(), saJoinRequest(t, "node-a", "tok"))
	if status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "this controller does not accept ServiceAccount tokens: it does not run in Kubernetes mode") {
		t.Errorf("no verifier: %v", err)
	}

	sa := &fakeServiceAccounts{}
	h, _, _ := newSAHarness(t, sa)
	sa.add("tok-a", "node-a", agentPod("node-a", "a1", time.Now()), nil)
	sa.add("tok-down", "node-a", agentapi.ServiceAccountIdentity{}, fmt.Errorf("%w: TokenReview: connection refused", agentapi.ErrServiceAccountUnavailable))
	c := h.rawClient(nil)
	both := saJoinRequest(t, "node-a", "tok-a")
	both.TokenId, both.TokenSecret = "id", "secret"
	for _, tc := range []struct {
		name string
		req  *pb.JoinRequest
		code codes.Code
		msg  string
	}{
		{"both tokens", both, codes.InvalidArgument, "give a join token or a ServiceAccount token, not both"},
		{"unknown token", saJoinRequest(t, "node-a", "forged"), codes.Unauthenticated, "service account token not valid: the Kubernetes API refuses it"},
		// The attack: node-b's agent presents its pod's (valid) token as
		// node-a.
		{"another node's pod", saJoinRequest(t, "node-b", "tok-a"), codes.PermissionDenied,
			"service account token refused: token belongs to pod eastguard/eastguard-agent-node-a on node node-a, not node node-b"},
		{"apiserver down", saJoinRequest(t, "node-a", "tok-down"), codes.Unavailable, "kubernetes API unavailable"},
	} {
		_, err := c.Join(context.Background(), tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %s with %q", tc.name, err, tc.code, tc.msg)
		}
	}
	if n := h.Counter("eastguard_controller_agent_refusals_total", "reason", "service_account"); n != 2 {
		t.Errorf("refusals{reason=service_account} = %v, want 2", n)
	}
	if st := h.AgentStatus("node-b"); st.CertExpiry != nil {
		t.Errorf("node-b got a certificate: %+v", st)
	}
}

// TestServiceAccountRefusedKeepsRetrying: a refused token leaves the agent
// retrying (not exiting) while what it enforces stays as it was; the
// kubelet's next token, once admitted, joins.
func TestServiceAccountRefusedKeepsRetrying(t *testing.T) {
	sa := &fakeServiceAccounts{}
	h, caFile, tokenFile := newSAHarness(t, sa)
	sa.add("tok-bad", "node-a", agentapi.ServiceAccountIdentity{}, fmt.Errorf("%w: it is \"system:serviceaccount:default:default\", not the agents' ServiceAccount", agentapi.ErrServiceAccountDenied))
	sa.add("tok-good", "node-a", agentPod("node-a", "g1", time.Now()), nil)
	writeFile(t, caFile, string(h.CA.CertPEM))
	writeFile(t, tokenFile, "tok-bad")
	pinned := &ruleset.RuleSet{Node: "node-a", Version: 7}
	enf := &fakeEnforcer{cur: pinned}
	core, logs := observer.New(zapcore.WarnLevel)
	a := h.startAgent("node-a", "", enf, nil, withSA(tokenFile, caFile), func(c *controlplane.Config) { c.Log = zap.New(core) })
	testutil.Eventually(t, 10*time.Second, "three refused attempts", func() error {
		if n := sa.count(); n < 3 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	select {
	case err := <-a.done:
		t.Fatalf("the agent stopped: %v", err)
	default:
	}
	if enf.Current() != pinned || len(enf.applied) != 0 {
		t.Fatalf("enforcement changed while refused: %+v, applied %v", enf.Current(), enf.applied)
	}
	if logs.FilterMessageSnippet("join failed; retrying").FilterMessageSnippet("enforcement continues").Len() == 0 {
		t.Error("the refusals are not logged")
	}
	if lines := logs.FilterMessageSnippet("join failed").All(); len(lines) > 0 &&
		!strings.Contains(fmt.Sprint(lines[0].ContextMap()["error"]), "not the agents' ServiceAccount") {
		t.Errorf("the agent's log does not say why: %v", lines[0].ContextMap())
	}
	writeFile(t, tokenFile, "tok-good") // the kubelet rotates the token
	h.waitApplied(a)
}

// TestServiceAccountWaitsForCA: an agent started before the CA ConfigMap
// (and its token) exist waits for them, then joins.
func TestServiceAccountWaitsForCA(t *testing.T) {
	sa := &fakeServiceAccounts{}
	h, caFile, tokenFile := newSAHarness(t, sa)
	sa.add("tok-a", "node-a", agentPod("node-a", "a1", time.Now()), nil)
	core, logs := observer.New(zapcore.WarnLevel)
	a := h.startAgent("node-a", "", nil, nil, withSA(tokenFile, caFile), func(c *controlplane.Config) { c.Log = zap.New(core) })
	testutil.Eventually(t, 10*time.Second, "the agent to say it waits for the CA", func() error {
		for _, e := range logs.FilterMessageSnippet("join failed").All() {
			if strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "waiting for the controller's CA certificate (--ca-file)") {
				return nil
			}
		}
		return errors.New("not logged")
	})
	writeFile(t, caFile, string(h.CA.CertPEM))
	testutil.Eventually(t, 10*time.Second, "the agent to say it waits for the token", func() error {
		for _, e := range logs.FilterMessageSnippet("join failed").All() {
			if strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "waiting for the ServiceAccount token") {
				return nil
			}
		}
		return errors.New("not logged")
	})
	if sa.count() != 0 {
		t.Errorf("the controller was asked %d times before the files existed", sa.count())
	}
	writeFile(t, tokenFile, "tok-a")
	h.waitApplied(a)
}

// TestCAFileMustMatchJoinToken: with a join token, a --ca-file of another
// CA stops the agent (a configuration error), and nothing is asked of
// the controller.
func TestCAFileMustMatchJoinToken(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	other, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, caFile, string(other.CertPEM))
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, func(c *controlplane.Config) { c.CAFile = caFile })
	if err := a.wait(t, 10*time.Second); !errors.Is(err, pki.ErrCAPin) || !strings.Contains(err.Error(), "the join token pins") {
		t.Fatalf("agent ended with %v, want the CA pin error", err)
	}
	// The right CA with the token: joins.
	writeFile(t, caFile, string(h.CA.CertPEM))
	h.waitApplied(h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, func(c *controlplane.Config) { c.CAFile = caFile }))
}

// TestServiceAccountAfterRevocation: a revoked node is not admitted again
// by its running pod's fresh token (the kubelet keeps issuing them), only
// by a pod created after the revocation.
func TestServiceAccountAfterRevocation(t *testing.T) {
	sa := &fakeServiceAccounts{}
	h, caFile, tokenFile := newSAHarness(t, sa)
	start := time.Now().Add(-time.Minute)
	sa.add("tok-1", "node-a", agentPod("node-a", "1", start), nil)
	writeFile(t, caFile, string(h.CA.CertPEM))
	writeFile(t, tokenFile, "tok-1")
	a := h.startAgent("node-a", "", nil, nil, withSA(tokenFile, caFile))
	h.waitApplied(a)
	if _, err := h.Srv.Agents.Revoke(context.Background(), "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 10*time.Second); !errors.Is(err, controlplane.ErrRevoked) {
		t.Fatalf("agent ended with %v, want ErrRevoked", err)
	}
	sa.add("tok-2", "node-a", agentPod("node-a", "2", start), nil) // same pod, the kubelet's next token
	_, err := h.rawClient(nil).Join(context.Background(), saJoinRequest(t, "node-a", "tok-2"))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "was revoked at") ||
		!strings.Contains(err.Error(), "delete the pod so that a new one joins") {
		t.Fatalf("the revoked node's pod's next token: %v, want PermissionDenied", err)
	}
	if err := h.listedRevoked("node-a"); err != nil {
		t.Fatal(err)
	}
	sa.add("tok-3", "node-a", agentPod("node-a", "3", h.Clock.Now().Add(time.Second)), nil) // a new pod
	writeFile(t, tokenFile, "tok-3")
	h.waitApplied(h.startAgent("node-a", "", nil, nil, withSA(tokenFile, caFile)))
}
