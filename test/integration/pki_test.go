package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// rawClient dials the controller with a given client certificate (nil:
// none), trusting its CA, for tests that must say what a real agent never
// would.
func (h *harness) rawClient(cert *tls.Certificate) pb.ControlClient {
	h.T.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(h.CA.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient("passthrough:///"+h.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		h.T.Fatal(err)
	}
	h.T.Cleanup(func() { conn.Close() })
	return pb.NewControlClient(conn)
}

// savedCert reads the certificate and key an agent saved.
func savedCert(t testing.TB, dir *state.Dir) *tls.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir.Path(), "node.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(b, b)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// connect opens a stream, says hello as node and returns the first answer
// (or the error that ended the stream).
func connect(t *testing.T, c pb.ControlClient, node string) (*pb.ControllerMessage, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: &pb.Hello{Node: node}}}); err != nil {
		_, err = st.Recv()
		return nil, err
	}
	return st.Recv()
}

// TestJoin: an agent joins with a token, saves a certificate for its node
// (key never sent: only a CSR), and restarts without a token.
func TestJoin(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	cert := savedCert(t, a.dir)
	if node, err := pki.NodeOf(cert.Leaf); err != nil || node != "node-a" {
		t.Errorf("saved certificate names node %q (%v)", node, err)
	}
	if life := cert.Leaf.NotAfter.Sub(time.Now()); life < 55*time.Minute || life > time.Hour {
		t.Errorf("certificate valid for another %v, want about 1h", life)
	}
	if info, err := os.Stat(filepath.Join(a.dir.Path(), "node.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("node.pem mode: %v %v", info.Mode(), err)
	}
	if st := h.AgentStatus("node-a"); st.CertExpiry == nil || !st.CertExpiry.Equal(cert.Leaf.NotAfter) {
		t.Errorf("controller reports cert expiry %v, certificate says %v", st.CertExpiry, cert.Leaf.NotAfter)
	}
	a.stop()
	again := h.startAgent("node-a", "", a.enf, a.dir)
	testutil.Eventually(t, 10*time.Second, "the agent to reconnect without a token", func() error {
		if !again.client.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

// TestJoinTokenRules: a token is single use, bound to its node, expires,
// and a wrong secret proves nothing.
func TestJoinTokenRules(t *testing.T) {
	h := newHarness(t)
	tok := h.Token("node-a", time.Hour)
	h.startAgent("node-a", tok, nil, nil)
	testutil.Eventually(t, 10*time.Second, "the first join", func() error {
		if h.AgentStatus("node-a").CertExpiry == nil {
			return errors.New("not joined")
		}
		return nil
	})
	cases := []struct {
		name, node, token, want string
	}{
		{"replayed", "node-a", tok, "join token already used"},
		{"other node", "node-b", h.Token("node-a", time.Hour), `join token is for node "node-a", not "node-b"`},
		{"wrong secret", "node-a", forge(t, h.Token("node-a", time.Hour)), "join token not valid"},
		{"unknown id", "node-a", forgeID(t, tok), "join token not valid"},
	}
	expiring := h.Token("node-a", time.Minute)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := h.startAgent(c.node, c.token, nil, nil).wait(t, 10*time.Second)
			if !errors.Is(err, controlplane.ErrJoinRefused) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want a join refused with %q", err, c.want)
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		h.Clock.Advance(2 * time.Minute)
		defer h.Clock.Advance(-2 * time.Minute)
		err := h.startAgent("node-a", expiring, nil, nil).wait(t, 10*time.Second)
		if !errors.Is(err, controlplane.ErrJoinRefused) || !strings.Contains(err.Error(), "join token expired") {
			t.Errorf("got %v", err)
		}
	})
	if got := h.Logged("join refused"); len(got) != len(cases)+1 {
		t.Errorf("%d 'join refused' log lines, want %d: %q", len(got), len(cases)+1, got)
	}
}

// forge replaces a token's secret.
func forge(t *testing.T, token string) string {
	t.Helper()
	tok, err := pki.ParseJoinToken(token)
	if err != nil {
		t.Fatal(err)
	}
	tok.Secret = strings.Repeat("0", len(tok.Secret))
	return tok.String()
}

func forgeID(t *testing.T, token string) string {
	t.Helper()
	tok, _ := pki.ParseJoinToken(token)
	tok.ID = strings.Repeat("a", len(tok.ID))
	return tok.String()
}

// TestWrongCARefused: an agent whose token pins another CA refuses the
// controller before it sends the token, so the token stays usable.
func TestWrongCARefused(t *testing.T) {
	h := newHarness(t)
	tok := h.Token("node-a", time.Hour)
	other, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := pki.ParseJoinToken(tok)
	parsed.CAFingerprint = other.Fingerprint()
	err = h.startAgent("node-a", parsed.String(), nil, nil).wait(t, 10*time.Second)
	if !errors.Is(err, controlplane.ErrJoinRefused) || !strings.Contains(err.Error(), "does not match the join token's CA fingerprint") {
		t.Fatalf("got %v", err)
	}
	if n := len(h.Logged("join refused")); n != 0 {
		t.Errorf("the controller heard of the join (%d refusals logged)", n)
	}
	a := h.startAgent("node-a", tok, nil, nil)
	testutil.Eventually(t, 10*time.Second, "a join with the right CA", func() error {
		if !a.client.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

// TestRenewKeepsStream: the certificate is renewed at two thirds of its
// life over a separate call; the stream stays up past the first
// certificate's expiry.
func TestRenewKeepsStream(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) { c.NodeCertTTL = 3 * time.Second })
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	first := a.client.CertExpiry()
	testutil.Eventually(t, 20*time.Second, "two renewals", func() error {
		if got := a.client.CertExpiry(); !got.After(first.Add(2 * time.Second)) {
			return fmt.Errorf("certificate expiry %v, first %v", got, first)
		}
		return nil
	})
	if time.Now().Before(first) {
		time.Sleep(time.Until(first) + 500*time.Millisecond)
	}
	if !a.client.Connected() || a.client.Streams() != 1 {
		t.Errorf("after renewals: connected %v, %d streams opened (want 1)", a.client.Connected(), a.client.Streams())
	}
	if !h.AgentStatus("node-a").Connected {
		t.Error("controller sees the agent disconnected")
	}
	if saved := savedCert(t, a.dir); !saved.Leaf.NotAfter.Equal(a.client.CertExpiry()) {
		t.Errorf("saved certificate expires %v, in use %v", saved.Leaf.NotAfter, a.client.CertExpiry())
	}
	if n := len(h.Logged("node certificate renewed")); n < 2 {
		t.Errorf("%d renewals logged", n)
	}
}

// TestRevokedAgentRefused: revocation closes the stream, the agent stops
// trying for good (enforcing what it has), and the certificate is refused
// at every later handshake with a log line saying why.
func TestRevokedAgentRefused(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	if _, err := h.Srv.Agents.Revoke(context.Background(), "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 10*time.Second); !errors.Is(err, controlplane.ErrRevoked) {
		t.Errorf("agent ended with %v, want ErrRevoked", err)
	}
	if a.enf.version() != 1 {
		t.Errorf("agent enforces version %d after revocation, want 1 (kept)", a.enf.version())
	}
	testutil.Eventually(t, 5*time.Second, "the revoked node listed", func() error { return h.listedRevoked("node-a") })
	_, err := connect(t, h.rawClient(savedCert(t, a.dir)), "node-a")
	if err == nil {
		t.Fatal("a revoked certificate opened a stream")
	}
	if lines := h.Logged("agent RPC refused", "revoked"); len(lines) == 0 {
		t.Errorf("no log line refusing the revoked certificate; logs: %q", h.Logged("refused"))
	}
	// The revoked certificate cannot renew itself into a valid one.
	if _, err := h.rawClient(savedCert(t, a.dir)).Renew(context.Background(), &pb.RenewRequest{}); status.Code(err) != codes.PermissionDenied ||
		!strings.Contains(err.Error(), "revoked") {
		t.Errorf("renewal with the revoked certificate: %v, want PermissionDenied saying revoked", err)
	}
	// A restarted agent with the revoked certificate (its state dir, no
	// token) keeps being refused, and a new token admits the node again.
	r := h.startAgent("node-a", "", nil, a.dir)
	if err := r.wait(t, 10*time.Second); !errors.Is(err, controlplane.ErrRevoked) {
		t.Errorf("restarted agent with the revoked certificate ended with %v, want ErrRevoked", err)
	}
	if err := h.listedRevoked("node-a"); err != nil {
		t.Errorf("after the restarted agent's attempt: %v", err)
	}
	h.rejoin("node-a")
}

// listedRevoked says what is wrong unless node is listed disconnected and
// revoked, with the revocation as its last error.
func (h *harness) listedRevoked(node string) error {
	if st := h.AgentStatus(node); st.Connected || !st.Revoked || !strings.Contains(st.LastError, "revoked") {
		return fmt.Errorf("%s listed as %+v", node, st)
	}
	return nil
}

// rejoin starts an agent for node with a new token and checks that the
// node is admitted again: connected, no longer revoked, no error.
func (h *harness) rejoin(node string) {
	h.T.Helper()
	a := h.startAgent(node, h.Token(node, time.Hour), nil, nil)
	h.waitApplied(a)
	if st := h.AgentStatus(node); st.Revoked || st.LastError != "" {
		h.T.Errorf("%s joined again with a new token: %+v", node, st)
	}
}

// TestNodeCannotSpeakForAnother: agent A's certificate cannot open node
// B's stream, so it can neither pull nor poison B's rule sets.
func TestNodeCannotSpeakForAnother(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	msg, err := connect(t, h.rawClient(savedCert(t, a.dir)), "node-b")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `cannot speak for node "node-b"`) {
		t.Fatalf("hello as node-b: got %v, %v", msg, err)
	}
	if st := h.AgentStatus("node-b"); st.Connected || st.AppliedVersion != 0 {
		t.Errorf("node-b after the attempt: %+v", st)
	}
	if len(h.Logged("another node")) == 0 {
		t.Error("no log line for the attempt")
	}
	// Without a certificate only Join is open.
	if _, err := connect(t, h.rawClient(nil), "node-a"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("stream without a certificate: %v", err)
	}
	if _, err := h.rawClient(nil).Renew(context.Background(), &pb.RenewRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("renew without a certificate: %v", err)
	}
}

// TestExpiredCertificateRefused: an expired node certificate fails the
// handshake, with a log line naming it.
func TestExpiredCertificateRefused(t *testing.T) {
	h := newHarness(t)
	key, _, err := pki.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := pki.NewCSR(key, "node-a")
	leaf, _, err := h.CA.SignNode(csr, "node-a", time.Hour, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	if _, err := connect(t, h.rawClient(cert), "node-a"); err == nil {
		t.Fatal("an expired certificate opened a stream")
	}
	// The controller logs a refused chain when its side of the handshake
	// returns (agenttls.ServerCredentials, which knows the address), after
	// the client has had the alert: wait for the line.
	testutil.Eventually(t, 10*time.Second, "a clear log line of the refusal", func() error {
		if lines := h.Logged("agent certificate refused", "certificate expired", "node-a"); len(lines) == 0 {
			return fmt.Errorf("none; got %q", h.Logged("refused"))
		}
		return nil
	})
	// So is a certificate from another CA.
	other, _, _ := pki.NewCA(time.Now())
	leaf, _, _ = other.SignNode(csr, "node-a", time.Hour, time.Now())
	cert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	if _, err := connect(t, h.rawClient(cert), "node-a"); err == nil {
		t.Fatal("another CA's certificate opened a stream")
	}
	testutil.Eventually(t, 10*time.Second, "a log line for the foreign certificate", func() error {
		if len(h.Logged("agent certificate refused", "not signed by this controller's CA")) == 0 {
			return fmt.Errorf("none; got %q", h.Logged("refused"))
		}
		return nil
	})
}

// TestBadCSRKeepsToken: a join with an unacceptable CSR is refused before
// the token is used up.
func TestBadCSRKeepsToken(t *testing.T) {
	h := newHarness(t)
	tok := h.Token("node-a", time.Hour)
	parsed, _ := pki.ParseJoinToken(tok)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	_, err = h.rawClient(nil).Join(context.Background(), &pb.JoinRequest{Node: "node-a", TokenId: parsed.ID, TokenSecret: parsed.Secret, Csr: csr})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "want ECDSA P-256 or Ed25519") {
		t.Fatalf("RSA CSR: %v", err)
	}
	a := h.startAgent("node-a", tok, nil, nil)
	testutil.Eventually(t, 10*time.Second, "a join with the same token", func() error {
		if !a.client.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

// TestHugeCSRRefusedQuickly: a Join and a Renew whose CSR carries an RSA
// key with a 64 KiB modulus (and a signature as long: verifying it costs
// seconds of CPU) are refused at once, and a revocation running meanwhile
// is never held up behind them.
func TestHugeCSRRefusedQuickly(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	huge := testutil.HugeRSACSR(64 << 10)
	const bound = 2 * time.Second // target 100 ms

	parsed, _ := pki.ParseJoinToken(h.Token("node-b", time.Hour))
	start := time.Now()
	_, err := h.rawClient(nil).Join(context.Background(), &pb.JoinRequest{Node: "node-b", TokenId: parsed.ID, TokenSecret: parsed.Secret, Csr: huge})
	took := time.Since(start)
	t.Logf("join with a %d-byte CSR refused in %v", len(huge), took)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most") {
		t.Errorf("join: %v, want InvalidArgument for the request's size", err)
	}
	if took > bound {
		t.Errorf("join refused after %v, want under %v", took, bound)
	}

	// A renewal with the huge CSR, and revocations of another node until
	// it is answered: none waits for the other.
	renewed := make(chan error, 1)
	var renewTook time.Duration
	client := h.rawClient(savedCert(t, a.dir))
	go func() {
		start := time.Now()
		_, err := client.Renew(context.Background(), &pb.RenewRequest{Csr: huge})
		renewTook = time.Since(start)
		renewed <- err
	}()
	var slowest time.Duration
	for done := false; !done; {
		start := time.Now()
		if _, err := h.Srv.Agents.Revoke(context.Background(), "node-b"); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, time.Since(start))
		select {
		case err = <-renewed:
			done = true
		default:
		}
	}
	t.Logf("renewal with a %d-byte CSR refused in %v; slowest concurrent revocation %v", len(huge), renewTook, slowest)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most") {
		t.Errorf("renew: %v, want InvalidArgument for the request's size", err)
	}
	if renewTook > bound || slowest > bound {
		t.Errorf("renewal refused after %v, slowest revocation %v; want both under %v", renewTook, slowest, bound)
	}
	if !h.AgentStatus("node-a").Connected {
		t.Error("node-a's stream did not survive")
	}
}

// TestRevocationDuringConnect: a stream opened (and authenticated) before
// its node was revoked, whose Hello comes after, is refused: it never
// becomes the node's stream, and the node stays listed revoked and
// disconnected with the revocation as its last error.
func TestRevocationDuringConnect(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	a.stop()
	testutil.Eventually(t, 5*time.Second, "node-a disconnected", func() error {
		if h.AgentStatus("node-a").Connected {
			return errors.New("still connected")
		}
		return nil
	})

	opened := len(h.Logged("waiting for its Hello"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.rawClient(savedCert(t, a.dir)).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "the controller to authenticate the stream", func() error {
		if len(h.Logged("waiting for its Hello")) == opened {
			return errors.New("not yet")
		}
		return nil
	})
	if _, err := h.Srv.Agents.Revoke(context.Background(), "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: &pb.Hello{Node: "node-a"}}}); err != nil {
		t.Fatal(err)
	}
	msg, err := st.Recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("hello after the revocation: got %v, %v; want PermissionDenied saying revoked", msg, err)
	}
	if err := h.listedRevoked("node-a"); err != nil {
		t.Errorf("after the refused stream: %v", err)
	}
}

// TestRevokedNodeNeedsNewToken: a revocation deletes the node's unused
// join tokens, and only a token created after the revocation admits the
// node again, so an old token (up to 7 days valid) cannot undo it.
func TestRevokedNodeNeedsNewToken(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	spare := h.Token("node-a", time.Hour) // made before the revocation, never used
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	if _, err := h.Srv.Agents.Revoke(context.Background(), "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 10*time.Second); !errors.Is(err, controlplane.ErrRevoked) {
		t.Fatalf("agent ended with %v, want ErrRevoked", err)
	}
	err := h.startAgent("node-a", spare, nil, nil).wait(t, 10*time.Second)
	if !errors.Is(err, controlplane.ErrJoinRefused) || !strings.Contains(err.Error(), "join token not valid") {
		t.Errorf("join with a token made before the revocation: %v, want refused", err)
	}
	// A token made before the revocation that the revocation did not
	// delete (stored after it: a creation racing the revocation) is
	// refused too, and says why.
	late, err := pki.NewJoinToken(h.CA.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	created := h.Clock.Now().Add(-time.Minute)
	if err := h.St.AddJoinToken(context.Background(), store.JoinToken{ID: late.ID, SecretHash: pki.HashSecret(late.Secret),
		Node: "node-a", Created: created, Expires: created.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	err = h.startAgent("node-a", late.String(), nil, nil).wait(t, 10*time.Second)
	if !errors.Is(err, controlplane.ErrJoinRefused) || !strings.Contains(err.Error(), "created before node") {
		t.Errorf("join with a token created before the revocation: %v, want refused saying so", err)
	}
	if err := h.listedRevoked("node-a"); err != nil {
		t.Errorf("after the refused joins: %v", err)
	}
	h.rejoin("node-a")
}

// TestRenewRateLimited: a node that renews over and over (a compromised
// node keeping the certificate lock and the store busy) is refused with
// ResourceExhausted after ten renewals, counted; another node's renewal
// still goes through. Before, every renewal was served.
func TestRenewRateLimited(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	b := h.startAgent("node-b", h.Token("node-b", time.Hour), nil, nil)
	h.waitApplied(a)
	h.waitApplied(b)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	renew := func(dir *state.Dir, node string) error {
		csr, err := pki.NewCSR(key, node)
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.rawClient(savedCert(t, dir)).Renew(context.Background(), &pb.RenewRequest{Csr: csr})
		return err
	}
	served, limited := 0, 0
	for range 30 {
		switch err := renew(a.dir, "node-a"); status.Code(err) {
		case codes.ResourceExhausted:
			limited++
		case codes.OK:
			served++
		default:
			t.Fatalf("renewal: %v", err)
		}
	}
	if served > 11 || limited < 19 {
		t.Errorf("30 renewals of one node: %d served, %d rate limited; want at most 11 served", served, limited)
	}
	if got := h.Counter("eastguard_controller_agent_refusals_total", "reason", "rate_limited"); got < float64(limited) {
		t.Errorf("rate-limited renewals counted %v, want %d", got, limited)
	}
	if err := renew(b.dir, "node-b"); err != nil {
		t.Errorf("another node's renewal: %v", err)
	}
}
