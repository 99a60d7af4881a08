package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/server"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// clock is the controller's clock in tests: real time plus an offset the
// test can move forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// harness is a controller serving gRPC on loopback, with its store in a
// temporary directory that survives restarts.
type harness struct {
	t     testing.TB
	dir   string
	st    *store.SQLite
	ca    *pki.CA
	srv   *server.Server
	addr  string
	reg   *prometheus.Registry
	logs  *observer.ObservedLogs
	clock *clock
	cfg   server.Config
	// storeOpts are passed to OpenSQLite at every start.
	storeOpts []store.Option
	serveWG   sync.WaitGroup

	mu   sync.Mutex
	acks []server.Ack
}

type harnessOpt func(*server.Config)

func newHarness(t testing.TB, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), clock: &clock{}}
	h.cfg = server.Config{
		Heartbeat:     200 * time.Millisecond,
		FlushInterval: 50 * time.Millisecond,
		Now:           h.clock.Now,
		OnAck: func(a server.Ack) {
			h.mu.Lock()
			h.acks = append(h.acks, a)
			h.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&h.cfg)
	}
	h.start()
	t.Cleanup(h.stop)
	return h
}

// start opens the store and serves; the listener's port is kept across
// restarts so that agents find the controller again.
func (h *harness) start() {
	h.t.Helper()
	var err error
	if h.st, err = store.OpenSQLite(h.dir, h.storeOpts...); err != nil {
		h.t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	h.logs = logs
	log := zap.New(core)
	if h.ca, err = server.LoadCA(context.Background(), h.st, nil, nil, log); err != nil {
		h.t.Fatal(err)
	}
	h.reg = prometheus.NewRegistry()
	cfg := h.cfg
	cfg.Store, cfg.CA, cfg.Log, cfg.Registry = h.st, h.ca, log, h.reg
	if h.srv, err = server.New(context.Background(), cfg); err != nil {
		h.t.Fatal(err)
	}
	addr := h.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for range 50 { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	h.serveWG.Go(func() {
		if err := h.srv.ServeGRPC(lis); err != nil {
			h.t.Errorf("serve: %v", err)
		}
	})
}

func (h *harness) stop() {
	if h.srv == nil {
		return
	}
	if err := h.srv.Close(); err != nil {
		h.t.Errorf("close: %v", err)
	}
	h.serveWG.Wait()
	if err := h.st.Close(); err != nil {
		h.t.Errorf("close store: %v", err)
	}
	h.srv = nil
}

func (h *harness) restart() {
	h.t.Helper()
	h.stop()
	h.start()
}

func (h *harness) token(node string, ttl time.Duration) string {
	h.t.Helper()
	tok, err := h.srv.CreateJoinToken(context.Background(), node, ttl)
	if err != nil {
		h.t.Fatal(err)
	}
	return tok.Token
}

func (h *harness) apply(files ...string) *apiclient.ChangeResult {
	h.t.Helper()
	var in []apiclient.File
	for i, f := range files {
		in = append(in, apiclient.File{Name: fmt.Sprintf("f%d.yaml", i+1), Content: f})
	}
	res, err := h.srv.Apply(context.Background(), in, false)
	if err != nil {
		h.t.Fatalf("apply: %v", err)
	}
	return res
}

func (h *harness) agentStatus(node string) apiclient.AgentStatus {
	for _, a := range h.srv.Agents() {
		if a.Node == node {
			return a
		}
	}
	return apiclient.AgentStatus{}
}

// counter reads a counter of the controller's registry.
func (h *harness) counter(name, label, value string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// logged returns the log messages (with their error field) at warn and
// above that contain every one of the words.
func (h *harness) logged(words ...string) []string {
	var out []string
	for _, e := range h.logs.All() {
		line := e.Message
		for _, f := range e.Context {
			if f.Key == "error" {
				line += ": " + fmt.Sprint(f.Interface)
			}
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// fakeEnforcer stands in for agent/enforcer: it keeps the rule set "in
// force" and can be told to fail.
type fakeEnforcer struct {
	mu      sync.Mutex
	cur     *ruleset.RuleSet
	applied []uint64
	fail    error
}

func (f *fakeEnforcer) Apply(rs *ruleset.RuleSet) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	if f.fail != nil {
		return nil, f.fail
	}
	f.cur = rs
	f.applied = append(f.applied, rs.Version)
	return nil, nil
}

func (f *fakeEnforcer) Current() *ruleset.RuleSet {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

func (f *fakeEnforcer) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeEnforcer) version() uint64 {
	if rs := f.Current(); rs != nil {
		return rs.Version
	}
	return 0
}

// testAgent is a control-plane client with a fake enforcer, running until
// the test ends or it is stopped.
type testAgent struct {
	node   string
	enf    *fakeEnforcer
	client *controlplane.Client
	dir    *state.Dir
	cancel context.CancelFunc
	done   chan error
	err    error
}

type agentOpt func(*controlplane.Config)

func (h *harness) startAgent(node, token string, enf *fakeEnforcer, dir *state.Dir, opts ...agentOpt) *testAgent {
	h.t.Helper()
	if enf == nil {
		enf = &fakeEnforcer{}
	}
	if dir == nil {
		var err error
		if dir, err = state.Open(h.t.TempDir()); err != nil {
			h.t.Fatal(err)
		}
	}
	cfg := controlplane.Config{
		Node: node, Controller: h.addr, JoinToken: token, State: dir, Enforcer: enf,
		Heartbeat: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Log: zap.NewNop(), AgentVersion: "test",
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := controlplane.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &testAgent{node: node, enf: enf, client: c, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- c.Run(ctx) }()
	h.t.Cleanup(func() { a.stop() })
	return a
}

// stop ends the agent and returns what Run returned.
func (a *testAgent) stop() error {
	if a.cancel != nil {
		a.cancel()
		a.err = <-a.done
		a.cancel = nil
	}
	return a.err
}

// wait returns Run's result once it has ended by itself.
func (a *testAgent) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-a.done:
		a.cancel()
		a.cancel, a.err = nil, err
		return err
	case <-time.After(timeout):
		t.Fatalf("agent %s still running after %v", a.node, timeout)
		return nil
	}
}

// eventually polls cond every 10 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitApplied waits until the node's agent has applied the latest version
// and the fake enforcer holds it.
func (h *harness) waitApplied(a *testAgent) apiclient.AgentStatus {
	h.t.Helper()
	var st apiclient.AgentStatus
	eventually(h.t, 10*time.Second, a.node+" applying the latest version", func() error {
		st = h.agentStatus(a.node)
		if !st.Connected || st.LatestVersion == 0 || st.AppliedVersion != st.LatestVersion || a.enf.version() != st.LatestVersion {
			return fmt.Errorf("status %+v, enforcer at version %d", st, a.enf.version())
		}
		return nil
	})
	return st
}

var errInjected = errors.New("injected: rule set does not fit: eg_policy is full")
