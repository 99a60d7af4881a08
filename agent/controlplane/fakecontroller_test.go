package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Every wait in these tests is bounded by this: generous, for slow and
// busy machines. Nothing is asserted about how long things take.
const waitFor = 10 * time.Second

const testNode = "node-a"

// fakeController is a Control service over TLS on 127.0.0.1 that each
// test scripts: it signs CSRs with its own CA, accepts the join tokens it
// made, and hands every stream that said Hello to the test (nextStream),
// which decides what the controller says on it.
type fakeController struct {
	pb.UnimplementedControlServer

	ca    *pki.CA
	token pki.JoinToken // accepted by Join
	addr  string        // 127.0.0.1:port

	mu sync.Mutex
	// Scripted behaviour: each hook gets the 1-based number of the call;
	// a non-nil error is what the RPC returns.
	joinHook    func(n int, req *pb.JoinRequest) error
	renewHook   func(n int) error
	connectHook func(n int, hello *pb.Hello) error // after the Hello
	preHello    func(n int) error                  // before reading the Hello
	certTTL     time.Duration
	heartbeatMs uint32 // announced in Welcome
	joins       []*pb.JoinRequest
	renews      []renewCall
	issued      []*x509.Certificate // by Join and Renew, in order
	connects    int

	streams chan *fakeStream
}

// renewCall is what Renew saw: the certificate it was called with and
// the one it issued.
type renewCall struct {
	node          string
	callerSerial  string
	issuedSerial  string
	issuedExpires time.Time
}

// startFake serves a fake controller whose serving certificate is signed
// by serving (nil: its own CA, as a real controller).
func startFake(t *testing.T, serving *pki.CA) *fakeController {
	t.Helper()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if serving == nil {
		serving = ca
	}
	tok, err := pki.NewJoinToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeController{
		ca: ca, token: tok,
		certTTL:     time.Hour,
		heartbeatMs: 60_000,
		streams:     make(chan *fakeStream, 16),
	}
	cert, err := serving.IssueServer([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert},
		// As the controller: a client certificate is optional (Join has
		// none) but verified when given.
		ClientAuth: tls.RequestClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			_, err := ca.VerifyNode(cs.PeerCertificates, time.Now())
			return err
		},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	pb.RegisterControlServer(srv, f)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return f
}

// set changes the script under the lock.
func (f *fakeController) set(change func(f *fakeController)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

func (f *fakeController) joinCalls() []*pb.JoinRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.joins)
}

func (f *fakeController) renewCalls() []renewCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.renews)
}

func (f *fakeController) connectCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connects
}

func (f *fakeController) issuedCerts() []*x509.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.issued)
}

// callerCert returns the client certificate of the RPC in ctx (nil: none).
func callerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

func (f *fakeController) sign(csr []byte, node string) (*x509.Certificate, []byte, error) {
	f.mu.Lock()
	ttl := f.certTTL
	f.mu.Unlock()
	cert, certPEM, err := f.ca.SignNode(csr, node, ttl, time.Now())
	if err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	f.mu.Lock()
	f.issued = append(f.issued, cert)
	f.mu.Unlock()
	return cert, certPEM, nil
}

func (f *fakeController) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	f.mu.Lock()
	f.joins = append(f.joins, req)
	n, hook := len(f.joins), f.joinHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n, req); err != nil {
			return nil, err
		}
	}
	if req.GetTokenId() != f.token.ID || req.GetTokenSecret() != f.token.Secret {
		return nil, status.Error(codes.Unauthenticated, "join token not valid")
	}
	_, certPEM, err := f.sign(req.GetCsr(), req.GetNode())
	if err != nil {
		return nil, err
	}
	return &pb.JoinResponse{Certificate: certPEM, Ca: f.ca.CertPEM}, nil
}

func (f *fakeController) Renew(ctx context.Context, req *pb.RenewRequest) (*pb.RenewResponse, error) {
	caller := callerCert(ctx)
	if caller == nil {
		return nil, status.Error(codes.Unauthenticated, "this RPC needs a node certificate")
	}
	node, err := pki.NodeOf(caller)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	f.mu.Lock()
	f.renews = append(f.renews, renewCall{node: node, callerSerial: pki.Serial(caller)})
	n, hook := len(f.renews), f.renewHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(n); err != nil {
			return nil, err
		}
	}
	cert, certPEM, err := f.sign(req.GetCsr(), node)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.renews[n-1].issuedSerial, f.renews[n-1].issuedExpires = pki.Serial(cert), cert.NotAfter
	f.mu.Unlock()
	return &pb.RenewResponse{Certificate: certPEM, Ca: f.ca.CertPEM}, nil
}

// fakeStream is one agent stream, as the test sees it.
type fakeStream struct {
	node   string // from the client certificate
	serial string // of the client certificate
	hello  *pb.Hello

	send       chan *pb.ControllerMessage
	end        chan error
	recv       chan *pb.AgentMessage // acks and flows
	counters   chan *pb.Counters
	heartbeats atomic.Int64
	done       chan struct{} // the handler returned
}

func (f *fakeController) Connect(st pb.Control_ConnectServer) error {
	ctx := st.Context()
	caller := callerCert(ctx)
	if caller == nil {
		return status.Error(codes.Unauthenticated, "this RPC needs a node certificate")
	}
	node, err := pki.NodeOf(caller)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	f.mu.Lock()
	f.connects++
	n, pre, hook, hb := f.connects, f.preHello, f.connectHook, f.heartbeatMs
	f.mu.Unlock()
	if pre != nil {
		if err := pre(n); err != nil {
			return err
		}
	}
	first, err := st.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "the first message on a stream must be Hello")
	}
	if hook != nil {
		if err := hook(n, hello); err != nil {
			return err
		}
	}
	if err := st.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Welcome{Welcome: &pb.Welcome{
		HeartbeatIntervalMs: hb, ControllerVersion: "fake",
	}}}); err != nil {
		return err
	}
	s := &fakeStream{
		node: node, serial: pki.Serial(caller), hello: hello,
		send:     make(chan *pb.ControllerMessage),
		end:      make(chan error, 1),
		recv:     make(chan *pb.AgentMessage, 64),
		counters: make(chan *pb.Counters, 64),
		done:     make(chan struct{}),
	}
	defer close(s.done)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch {
			case m.GetHeartbeat() != nil:
				s.heartbeats.Add(1)
				continue
			case m.GetCounters() != nil:
				select {
				case s.counters <- m.GetCounters():
				default:
				}
				continue
			}
			select {
			case s.recv <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	select {
	case f.streams <- s:
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		select {
		case m := <-s.send:
			if err := st.Send(m); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// nextStream waits for the next stream that said Hello.
func (f *fakeController) nextStream(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case s := <-f.streams:
		return s
	case <-time.After(waitFor):
		t.Fatalf("no stream from the agent within %s", waitFor)
		return nil
	}
}

// noStream checks that no stream is waiting now.
func (f *fakeController) noStream(t *testing.T) {
	t.Helper()
	select {
	case s := <-f.streams:
		t.Errorf("unexpected stream (hello %v)", s.hello)
	default:
	}
}

// push sends m to the agent.
func (s *fakeStream) push(t *testing.T, m *pb.ControllerMessage) {
	t.Helper()
	select {
	case s.send <- m:
	case <-s.done:
		t.Fatal("stream ended before the message could be sent")
	case <-time.After(waitFor):
		t.Fatal("message not sent")
	}
}

// ack waits for the agent's next ack.
func (s *fakeStream) ack(t *testing.T) *pb.Ack {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-s.recv:
			if a := m.GetAck(); a != nil {
				return a
			}
		case <-deadline:
			t.Fatalf("no ack within %s", waitFor)
			return nil
		}
	}
}

// close ends the stream with err (nil: the controller closes it cleanly)
// and waits for the handler to return.
func (s *fakeStream) close(t *testing.T, err error) {
	t.Helper()
	s.end <- err
	select {
	case <-s.done:
	case <-time.After(waitFor):
		t.Fatal("stream handler did not return")
	}
}

func fullMsg(rs *ruleset.RuleSet) *pb.ControllerMessage {
	return &pb.ControllerMessage{Msg: &pb.ControllerMessage_Full{Full: wire.FromRuleSet(rs, rs.Hash())}}
}

func deltaMsg(from, to *ruleset.RuleSet) *pb.ControllerMessage {
	d := ruleset.Diff(from, to)
	d.BaseHash, d.Hash, d.Version = from.Hash(), to.Hash(), to.Version
	return &pb.ControllerMessage{Msg: &pb.ControllerMessage_Delta{Delta: wire.FromDelta(&d, from.Version)}}
}

// nodeRuleSet is a valid rule set for testNode; port tells versions apart.
func nodeRuleSet(version uint64, port uint16) *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node: testNode, Version: version,
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "eg1-web", Identity: 256}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.250.17.2/32"), Identity: 256}},
		Entries:   []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Protocol: ruleset.ProtocolTCP, Port: port, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules:     []ruleset.RuleName{{ID: 1, Name: "p/r"}},
	}
}

// syncEnforcer is an Enforcer safe for the client's goroutines and the
// test's: it keeps what it was given and fails when told to.
type syncEnforcer struct {
	mu      sync.Mutex
	cur     *ruleset.RuleSet
	fail    error
	applied []*ruleset.RuleSet
	// currentHook, if set, runs in Current (tests that need the client
	// to be slow at that point).
	currentHook func()
}

func (e *syncEnforcer) Apply(rs *ruleset.RuleSet) ([]string, error) {
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return nil, e.fail
	}
	e.cur = rs
	e.applied = append(e.applied, rs)
	return []string{"eg1-later"}, nil
}

func (e *syncEnforcer) Current() *ruleset.RuleSet {
	e.mu.Lock()
	cur, hook := e.cur, e.currentHook
	e.mu.Unlock()
	if hook != nil {
		hook()
	}
	return cur
}

func (e *syncEnforcer) setFail(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fail = err
}

func (e *syncEnforcer) applies() []*ruleset.RuleSet {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.applied)
}

func openStateDir(t *testing.T, path string) *state.Dir {
	t.Helper()
	st, err := state.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// newClient returns a client of f for testNode with short backoffs.
func (f *fakeController) newClient(t *testing.T, st *state.Dir, enf Enforcer, token string, change ...func(*Config)) *Client {
	t.Helper()
	cfg := Config{
		Node: testNode, Controller: f.addr, JoinToken: token, State: st, Enforcer: enf,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Log: zaptest.NewLogger(t),
	}
	for _, ch := range change {
		ch(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// running is a Client.Run in progress; the test's cleanup stops it and
// waits for it.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startRun(t *testing.T, c *Client) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitFor):
			t.Errorf("Run did not return within %s of its context's end", waitFor)
		}
	})
	return r
}

// wait waits for Run to return by itself.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(waitFor):
		t.Fatalf("Run did not return within %s", waitFor)
		return nil
	}
}

// stop cancels Run and returns what it returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// stillRunning checks that Run has not returned.
func (r *running) stillRunning(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		t.Fatalf("Run returned: %v", r.err)
	default:
	}
}

// eventually polls cond until it holds or the wait is over.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", waitFor, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
