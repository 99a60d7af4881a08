package controlplane

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// savedFiles reads the credentials a client saved in dir.
func savedFiles(t *testing.T, dir string) (leaf *x509.Certificate, key any, ca *x509.Certificate, meta credMeta) {
	t.Helper()
	for _, f := range []string{"node.pem", "ca.crt", "node.json"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("state dir: %v", err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "node.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(pemData, pemData)
	if err != nil {
		t.Fatalf("node.pem does not hold a certificate and its key: %v", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = pki.ParseCertificatePEM(caPEM); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		t.Fatal(err)
	}
	return pair.Leaf, pair.PrivateKey, ca, meta
}

func noCredentials(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{"node.pem", "ca.crt", "node.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s in the state dir after a failed join (stat: %v)", f, err)
		}
	}
}

func TestJoinSavesCredentialsAndRejoinsWithout(t *testing.T) {
	f := startFake(t, nil)
	dir := t.TempDir()
	c := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	s := f.nextStream(t)

	joins := f.joinCalls()
	if len(joins) != 1 {
		t.Fatalf("Join calls: %d, want 1", len(joins))
	}
	req := joins[0]
	if req.GetNode() != testNode || req.GetTokenId() != f.token.ID || req.GetTokenSecret() != f.token.Secret {
		t.Errorf("join request: node %q token %q secret %q", req.GetNode(), req.GetTokenId(), req.GetTokenSecret())
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		t.Fatalf("join request CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil || csr.Subject.CommonName != testNode {
		t.Errorf("CSR: signature %v, subject %q", err, csr.Subject.CommonName)
	}

	// The key behind the CSR, the certificate issued for it and the CA
	// pinned by the token are in the state dir.
	leaf, key, ca, meta := savedFiles(t, dir)
	issued := f.issuedCerts()
	if len(issued) != 1 || !leaf.Equal(issued[0]) {
		t.Fatalf("node.pem holds %s, the controller issued %d certificate(s)", pki.Serial(leaf), len(issued))
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("saved key is a %T", key)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(csr.PublicKey) || !pub.Equal(leaf.PublicKey) {
		t.Errorf("saved key is not the key of the CSR and the certificate")
	}
	if pki.Fingerprint(ca) != f.ca.Fingerprint() {
		t.Errorf("saved CA %s, want the token's %s", pki.Fingerprint(ca), f.ca.Fingerprint())
	}
	if meta.Node != testNode || meta.TokenID != f.token.ID || meta.Received.IsZero() {
		t.Errorf("node.json: %+v", meta)
	}
	if got := c.CertExpiry(); !got.Equal(issued[0].NotAfter) {
		t.Errorf("CertExpiry %v, want %v", got, issued[0].NotAfter)
	}

	// The stream runs on that certificate; with no rule set in force the
	// Hello says so.
	if s.node != testNode || s.serial != pki.Serial(issued[0]) {
		t.Errorf("stream with certificate of %q serial %s", s.node, s.serial)
	}
	if s.hello.GetAppliedVersion() != 0 || s.hello.GetAppliedHash() != "" || s.hello.GetDefaultMode() != "enforce" {
		t.Errorf("hello without a rule set: %v", s.hello)
	}
	if err := r.stop(t); err != nil {
		t.Errorf("Run after cancel: %v, want nil", err)
	}

	// A second agent on the same state dir needs no token.
	c2 := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, "")
	r2 := startRun(t, c2)
	s2 := f.nextStream(t)
	if n := len(f.joinCalls()); n != 1 {
		t.Errorf("Join calls: %d, want still 1", n)
	}
	if s2.serial != pki.Serial(issued[0]) || s2.node != testNode {
		t.Errorf("second agent's stream with certificate %s, want the saved %s", s2.serial, pki.Serial(issued[0]))
	}
	if got := c2.CertExpiry(); !got.Equal(issued[0].NotAfter) {
		t.Errorf("second agent's CertExpiry %v, want %v", got, issued[0].NotAfter)
	}
	if err := r2.stop(t); err != nil {
		t.Errorf("Run after cancel: %v", err)
	}

	// The same token again is not a new join either.
	c3 := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, f.token.String())
	startRun(t, c3)
	if s3 := f.nextStream(t); s3.serial != pki.Serial(issued[0]) || len(f.joinCalls()) != 1 {
		t.Errorf("same token: stream with %s after %d joins", s3.serial, len(f.joinCalls()))
	}
}

func TestNoCredentialsNoToken(t *testing.T) {
	f := startFake(t, nil)
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, "")
	err := startRun(t, c).wait(t)
	if err == nil || !strings.Contains(err.Error(), "join-token") {
		t.Errorf("Run without credentials or token: %v", err)
	}
	if n := len(f.joinCalls()) + f.connectCount(); n != 0 {
		t.Errorf("%d calls to the controller", n)
	}
}

func TestJoinRefusedIsFinal(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"bad token", status.Error(codes.Unauthenticated, "join token not valid"), "join token not valid"},
		{"used token", status.Error(codes.Unauthenticated, "join token already used"), "already used"},
		{"other node", status.Error(codes.PermissionDenied, `join token is for node "node-b", not "node-a"`), `for node "node-b"`},
		{"bad csr", status.Error(codes.InvalidArgument, "certificate signing request: signature: bad"), "certificate signing request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, nil)
			f.set(func(f *fakeController) {
				f.joinHook = func(int, *pb.JoinRequest) error { return tc.err }
			})
			dir := t.TempDir()
			c := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, f.token.String())
			err := startRun(t, c).wait(t)
			if !errors.Is(err, ErrJoinRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run: %v, want %v saying %q", err, ErrJoinRefused, tc.want)
			}
			if n := len(f.joinCalls()); n != 1 {
				t.Errorf("Join calls: %d, want 1 (a refusal is not retried)", n)
			}
			if n := f.connectCount(); n != 0 {
				t.Errorf("Connect calls: %d", n)
			}
			noCredentials(t, dir)
		})
	}
}

// The token the fake does not know is refused by the fake's own check,
// not a script.
func TestJoinWithUnknownToken(t *testing.T) {
	f := startFake(t, nil)
	other, err := pki.NewJoinToken(f.ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, other.String())
	err = startRun(t, c).wait(t)
	if !errors.Is(err, ErrJoinRefused) || !strings.Contains(err.Error(), "join token not valid") {
		t.Errorf("Run: %v", err)
	}
	if n := len(f.joinCalls()); n != 1 {
		t.Errorf("Join calls: %d", n)
	}
}

func TestJoinRetriesTransientErrors(t *testing.T) {
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.joinHook = func(n int, _ *pb.JoinRequest) error {
			switch n {
			case 1:
				return status.Error(codes.Unavailable, "controller starting")
			case 2:
				return status.Error(codes.Internal, "join failed; see the controller's log")
			}
			return nil
		}
	})
	dir := t.TempDir()
	c := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	f.nextStream(t)
	if n := len(f.joinCalls()); n != 3 {
		t.Errorf("Join calls: %d, want 3", n)
	}
	if n := len(f.issuedCerts()); n != 1 {
		t.Errorf("certificates issued: %d", n)
	}
	savedFiles(t, dir)
	r.stillRunning(t)
}

func TestJoinRefusesControllerOfAnotherCA(t *testing.T) {
	impostor, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The controller's certificate is from impostor; the token pins the
	// fake's own CA.
	f := startFake(t, impostor)
	dir := t.TempDir()
	c := f.newClient(t, openStateDir(t, dir), &syncEnforcer{}, f.token.String())
	err = startRun(t, c).wait(t)
	if !errors.Is(err, ErrJoinRefused) || !strings.Contains(err.Error(), pki.ErrCAPin.Error()) {
		t.Errorf("Run: %v, want %v about %q", err, ErrJoinRefused, pki.ErrCAPin)
	}
	if n := len(f.joinCalls()); n != 0 {
		t.Errorf("the agent sent its CSR %d time(s) to a controller of another CA", n)
	}
	noCredentials(t, dir)
}

func TestStreamHelloAndUpdates(t *testing.T) {
	f := startFake(t, nil)
	v1, v2, v3, v4, v5 := nodeRuleSet(1, 80), nodeRuleSet(2, 443), nodeRuleSet(3, 8443), nodeRuleSet(4, 9000), nodeRuleSet(5, 9443)
	// The agent restored v1 before it connected.
	enf := &syncEnforcer{cur: v1}
	c := f.newClient(t, openStateDir(t, t.TempDir()), enf, f.token.String(), func(cfg *Config) {
		cfg.DefaultMode = ruleset.ModeMonitor
		cfg.AgentVersion, cfg.Kernel = "1.2.3", "6.8.0-test"
		cfg.Capabilities = []string{"experimental"}
	})
	r := startRun(t, c)
	s := f.nextStream(t)

	h := s.hello
	if h.GetNode() != testNode || h.GetAppliedVersion() != 1 || h.GetAppliedHash() != v1.Hash() || h.GetDefaultMode() != "monitor" {
		t.Errorf("hello: node %q applied %d/%q mode %q; want %q 1/%q monitor",
			h.GetNode(), h.GetAppliedVersion(), h.GetAppliedHash(), h.GetDefaultMode(), testNode, v1.Hash())
	}
	if h.GetAgentVersion() != "1.2.3" || h.GetKernel() != "6.8.0-test" || h.GetHeartbeatIntervalMs() != 10_000 {
		t.Errorf("hello: %v", h)
	}
	if caps := h.GetCapabilities(); !slices.Contains(caps, "delta") || !slices.Contains(caps, "experimental") {
		t.Errorf("capabilities %v", caps)
	}
	eventually(t, "Connected", c.Connected)

	// A full rule set.
	s.push(t, fullMsg(v2))
	a := s.ack(t)
	if a.GetCode() != pb.AckCode_ACK_CODE_APPLIED || a.GetVersion() != 2 || a.GetHash() != v2.Hash() || a.GetAppliedVersion() != 2 || a.GetError() != "" {
		t.Errorf("ack of full v2: %v", a)
	}
	if !slices.Equal(a.GetPendingInterfaces(), []string{"eg1-later"}) {
		t.Errorf("pending interfaces %v", a.GetPendingInterfaces())
	}
	applied := enf.applies()
	if len(applied) != 1 || applied[0].Version != 2 || applied[0].Hash() != v2.Hash() {
		t.Fatalf("enforcer applies: %v", applied)
	}

	// A delta on the rule set in force.
	s.push(t, deltaMsg(v2, v3))
	a = s.ack(t)
	if a.GetCode() != pb.AckCode_ACK_CODE_APPLIED || a.GetVersion() != 3 || a.GetHash() != v3.Hash() || a.GetAppliedVersion() != 3 {
		t.Errorf("ack of delta v2->v3: %v", a)
	}
	if cur := enf.Current(); cur == nil || cur.Version != 3 || cur.Hash() != v3.Hash() {
		t.Errorf("in force after the delta: %+v", cur)
	}

	// A delta on a base the agent does not have.
	s.push(t, deltaMsg(v1, v4))
	a = s.ack(t)
	if a.GetCode() != pb.AckCode_ACK_CODE_DELTA_BASE || a.GetVersion() != 4 || a.GetAppliedVersion() != 3 || a.GetHash() != v3.Hash() || a.GetError() == "" {
		t.Errorf("ack of a delta on an unknown base: %v", a)
	}

	// The enforcer fails: the previous version is named.
	enf.setFail(errors.New("policy map full"))
	s.push(t, fullMsg(v5))
	a = s.ack(t)
	if a.GetCode() != pb.AckCode_ACK_CODE_APPLY_FAILED || a.GetVersion() != 5 || a.GetAppliedVersion() != 3 ||
		a.GetHash() != v3.Hash() || !strings.Contains(a.GetError(), "policy map full") {
		t.Errorf("ack of a failed apply: %v", a)
	}
	if n := len(enf.applies()); n != 2 {
		t.Errorf("enforcer applies: %d, want 2", n)
	}

	// It recovers on the same stream.
	enf.setFail(nil)
	s.push(t, fullMsg(v5))
	if a = s.ack(t); a.GetCode() != pb.AckCode_ACK_CODE_APPLIED || a.GetAppliedVersion() != 5 || a.GetHash() != v5.Hash() {
		t.Errorf("ack after recovery: %v", a)
	}
	if c.Streams() != 1 || f.connectCount() != 1 {
		t.Errorf("streams: client %d, controller %d; want 1", c.Streams(), f.connectCount())
	}
	r.stillRunning(t)
	if err := r.stop(t); err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	if c.Connected() {
		t.Error("Connected after Run returned")
	}
}

func TestStreamReconnects(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  error
	}{
		{"unavailable", status.Error(codes.Unavailable, "controller restarting")},
		{"closed", nil},
		{"internal", status.Error(codes.Internal, "boom")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, nil)
			enf := &syncEnforcer{}
			c := f.newClient(t, openStateDir(t, t.TempDir()), enf, f.token.String())
			r := startRun(t, c)
			v1, v2 := nodeRuleSet(1, 80), nodeRuleSet(2, 443)

			s1 := f.nextStream(t)
			s1.push(t, fullMsg(v1))
			if a := s1.ack(t); a.GetCode() != pb.AckCode_ACK_CODE_APPLIED {
				t.Fatalf("ack: %v", a)
			}
			s1.close(t, tc.end)

			s2 := f.nextStream(t)
			if s2.hello.GetAppliedVersion() != 1 || s2.hello.GetAppliedHash() != v1.Hash() || s2.hello.GetNode() != testNode {
				t.Errorf("hello after reconnecting: %v; want version 1 hash %s", s2.hello, v1.Hash())
			}
			eventually(t, "second stream counted", func() bool { return c.Streams() == 2 })
			// The new stream works, from the version applied on the old.
			s2.push(t, deltaMsg(v1, v2))
			if a := s2.ack(t); a.GetCode() != pb.AckCode_ACK_CODE_APPLIED || a.GetAppliedVersion() != 2 {
				t.Errorf("ack on the new stream: %v", a)
			}
			if n := len(f.joinCalls()); n != 1 {
				t.Errorf("Join calls: %d, want 1 (reconnecting is not joining)", n)
			}
			r.stillRunning(t)
		})
	}
}

// A controller that stops talking is taken for gone after three of its
// heartbeat intervals; heartbeats and counters go out meanwhile.
func TestSilentControllerIsLeft(t *testing.T) {
	f := startFake(t, nil)
	f.set(func(f *fakeController) { f.heartbeatMs = 300 })
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String(), func(cfg *Config) {
		cfg.Heartbeat = 50 * time.Millisecond
		cfg.Counters = func() (map[string]uint64, error) { return map[string]uint64{"denied_ingress": 3}, nil }
	})
	startRun(t, c)
	s1 := f.nextStream(t)
	select {
	case cn := <-s1.counters:
		if cn.GetValues()["denied_ingress"] != 3 {
			t.Errorf("counters %v", cn.GetValues())
		}
	case <-time.After(waitFor):
		t.Fatal("no counters")
	}
	// The fake says nothing after Welcome: the agent leaves and comes
	// back.
	s2 := f.nextStream(t)
	if s2.hello.GetHeartbeatIntervalMs() != 50 {
		t.Errorf("hello heartbeat interval %d ms", s2.hello.GetHeartbeatIntervalMs())
	}
	select {
	case <-s1.done:
	case <-time.After(waitFor):
		t.Error("the silent stream is still open")
	}
	if s1.heartbeats.Load() == 0 {
		t.Error("no heartbeat on the first stream")
	}
}

func TestRevocationMessageStopsRun(t *testing.T) {
	f := startFake(t, nil)
	enf := &syncEnforcer{}
	c := f.newClient(t, openStateDir(t, t.TempDir()), enf, f.token.String())
	r := startRun(t, c)
	s := f.nextStream(t)
	s.push(t, fullMsg(nodeRuleSet(1, 80)))
	s.ack(t)
	s.push(t, &pb.ControllerMessage{Msg: &pb.ControllerMessage_Revocation{Revocation: &pb.Revocation{
		Node: testNode, Reason: "node decommissioned", Serials: []string{s.serial},
	}}})
	err := r.wait(t)
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "revoked") || !strings.Contains(err.Error(), "node decommissioned") {
		t.Errorf("Run: %v, want %v with the reason", err, ErrRevoked)
	}
	if n := f.connectCount(); n != 1 {
		t.Errorf("Connect calls: %d, want 1 (no reconnecting after a revocation)", n)
	}
	// Enforcement is not the control plane's to stop.
	if cur := enf.Current(); cur == nil || cur.Version != 1 {
		t.Errorf("rule set in force after the revocation: %+v", cur)
	}
}

func TestRevokedOnConnectStopsRun(t *testing.T) {
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.connectHook = func(n int, _ *pb.Hello) error {
			if n == 1 {
				return nil
			}
			return status.Error(codes.PermissionDenied, `certificate revoked: certificate of node "node-a" (serial 1f) was revoked`)
		}
	})
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	f.nextStream(t).close(t, status.Error(codes.Unavailable, "controller restarting"))
	err := r.wait(t)
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("Run: %v, want %v", err, ErrRevoked)
	}
	if n := f.connectCount(); n != 2 {
		t.Errorf("Connect calls: %d, want 2 (no retry after the refusal)", n)
	}
}

// Another PermissionDenied (not a revocation) is not final: the agent
// keeps trying.
func TestPermissionDeniedWithoutRevocationRetries(t *testing.T) {
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.connectHook = func(n int, _ *pb.Hello) error {
			if n < 3 {
				return status.Error(codes.PermissionDenied, `this certificate is for node "node-a"; it cannot speak for node "x"`)
			}
			return nil
		}
	})
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	f.nextStream(t)
	if n := f.connectCount(); n != 3 {
		t.Errorf("Connect calls: %d, want 3", n)
	}
	r.stillRunning(t)
}

// renewTTL is the certificate lifetime of the renewal tests: renewal is
// due at two thirds of it, leaving at least a second (X.509 times are
// whole seconds) for the renewal itself on a slow machine.
const renewTTL = 6 * time.Second

func TestRenewKeepsStream(t *testing.T) {
	t.Parallel() // mostly waiting for the renewal to be due
	f := startFake(t, nil)
	f.set(func(f *fakeController) { f.certTTL = renewTTL })
	dir := t.TempDir()
	enf := &syncEnforcer{}
	c := f.newClient(t, openStateDir(t, dir), enf, f.token.String())
	r := startRun(t, c)
	s := f.nextStream(t)
	joined := f.issuedCerts()[0]

	eventually(t, "a renewal", func() bool { return len(f.renewCalls()) > 0 && f.renewCalls()[0].issuedSerial != "" })
	f.set(func(f *fakeController) { f.certTTL = time.Hour })
	first := f.renewCalls()[0]
	if first.node != testNode || first.callerSerial != pki.Serial(joined) {
		t.Errorf("renewal by %q with certificate %s, want %q with %s", first.node, first.callerSerial, testNode, pki.Serial(joined))
	}
	eventually(t, "the renewed certificate in use", func() bool { return c.CertExpiry().After(joined.NotAfter) })

	// The stream was not touched.
	s.push(t, fullMsg(nodeRuleSet(1, 80)))
	if a := s.ack(t); a.GetCode() != pb.AckCode_ACK_CODE_APPLIED {
		t.Errorf("ack on the stream after the renewal: %v", a)
	}
	if c.Streams() != 1 || f.connectCount() != 1 || !c.Connected() {
		t.Errorf("after renewal: client streams %d, controller connects %d, connected %v", c.Streams(), f.connectCount(), c.Connected())
	}
	select {
	case <-s.done:
		t.Error("the stream ended")
	default:
	}

	// The state dir holds a renewed certificate, with its key.
	renewed := map[string]bool{}
	for _, rc := range f.renewCalls() {
		if rc.issuedSerial != "" {
			renewed[rc.issuedSerial] = true
		}
	}
	leaf, _, _, meta := savedFiles(t, dir)
	if !renewed[pki.Serial(leaf)] || meta.TokenID != f.token.ID {
		t.Errorf("saved certificate %s (token %q), want one of the renewed %v", pki.Serial(leaf), meta.TokenID, renewed)
	}

	// The next stream uses a renewed certificate.
	s.close(t, status.Error(codes.Unavailable, "controller restarting"))
	s2 := f.nextStream(t)
	if !renewed[s2.serial] {
		t.Errorf("new stream with certificate %s, want one of the renewed %v", s2.serial, renewed)
	}
	if s2.hello.GetAppliedVersion() != 1 {
		t.Errorf("hello after the renewal: %v", s2.hello)
	}
	r.stillRunning(t)
}

func TestRenewRevokedStopsRun(t *testing.T) {
	t.Parallel()
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.certTTL = renewTTL
		f.renewHook = func(int) error {
			return status.Error(codes.PermissionDenied, `certificate revoked: certificate of node "node-a" (serial 2a) was revoked`)
		}
	})
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	s := f.nextStream(t)
	err := r.wait(t)
	if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("Run: %v, want %v", err, ErrRevoked)
	}
	if n := len(f.renewCalls()); n != 1 {
		t.Errorf("Renew calls: %d, want 1", n)
	}
	select {
	case <-s.done:
	case <-time.After(waitFor):
		t.Error("the stream is still open after Run returned")
	}
}

func TestRenewRetriesTransientErrors(t *testing.T) {
	t.Parallel()
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.certTTL = renewTTL
		f.renewHook = func(n int) error {
			if n == 1 {
				return status.Error(codes.Unavailable, "controller busy")
			}
			return nil
		}
	})
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	f.nextStream(t)
	joined := f.issuedCerts()[0]
	eventually(t, "a renewal after a failed one", func() bool {
		rc := f.renewCalls()
		return len(rc) >= 2 && rc[1].issuedSerial != ""
	})
	f.set(func(f *fakeController) { f.certTTL = time.Hour })
	eventually(t, "the renewed certificate in use", func() bool { return c.CertExpiry().After(joined.NotAfter) })
	if c.Streams() != 1 {
		t.Errorf("streams: %d", c.Streams())
	}
	r.stillRunning(t)
}
