// Package integration_test pairs the agent's real control-plane client
// (agent/controlplane) with a real in-process controller
// (controller/controllertest): join, renewal, revocation, rule-set
// delivery and acks, flow ingest and alerts, with a fake enforcer instead
// of the kernel. It needs no privileges.
package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// harness is an in-process controller (controllertest) with real agent
// control-plane clients attached to it.
type harness struct {
	*controllertest.Controller
}

type harnessOpt = controllertest.Option

func newHarness(t testing.TB, opts ...harnessOpt) *harness {
	t.Helper()
	return &harness{controllertest.New(t, opts...)}
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
	h.T.Helper()
	if enf == nil {
		enf = &fakeEnforcer{}
	}
	if dir == nil {
		var err error
		if dir, err = state.Open(h.T.TempDir()); err != nil {
			h.T.Fatal(err)
		}
	}
	cfg := controlplane.Config{
		Node: node, Controller: h.Addr, JoinToken: token, State: dir, Enforcer: enf,
		Heartbeat: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Log: zap.NewNop(), AgentVersion: "test",
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := controlplane.New(cfg)
	if err != nil {
		h.T.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &testAgent{node: node, enf: enf, client: c, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- c.Run(ctx) }()
	h.T.Cleanup(func() { a.stop() })
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

// waitApplied waits until the node's agent has applied the latest version
// and the fake enforcer holds it.
func (h *harness) waitApplied(a *testAgent) apiclient.AgentStatus {
	h.T.Helper()
	var st apiclient.AgentStatus
	testutil.Eventually(h.T, 10*time.Second, a.node+" applying the latest version", func() error {
		st = h.AgentStatus(a.node)
		if !st.Connected || st.LatestVersion == 0 || st.AppliedVersion != st.LatestVersion || a.enf.version() != st.LatestVersion {
			return fmt.Errorf("status %+v, enforcer at version %d", st, a.enf.version())
		}
		return nil
	})
	return st
}

var errInjected = errors.New("injected: rule set does not fit: eg_policy is full")
