package integration_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/egctl/egctltest"
	"github.com/eastguard/eastguard/controller/egctl/offline"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/wire"
)

// modelDatapath stands in for the datapath's Lookup: it decides from the
// rule set the fake enforcer holds, as the kernel's maps would.
func modelDatapath(enf *fakeEnforcer) controlplane.LookupFunc {
	return func(id ruleset.EndpointID, q controlplane.LookupQuery) (controlplane.LookupResult, error) {
		rs := enf.Current()
		ep, ok := rs.Endpoint(id)
		if !ok {
			return controlplane.LookupResult{}, fmt.Errorf("no endpoint %d", id)
		}
		tables, err := ruleset.Encode(rs)
		if err != nil {
			return controlplane.LookupResult{}, err
		}
		pid := rs.Resolve(q.Peer)
		v := tables.Decide(ep, q.Direction, pid, q.Protocol, q.Port)
		return controlplane.LookupResult{Generation: uint32(rs.Version), Interfaces: 1, Mode: ep.Mode, PeerIdentity: pid,
			Verdict: v.Verdict, Rule: v.Rule}, nil
	}
}

func withLookup(f controlplane.LookupFunc) agentOpt {
	return func(c *controlplane.Config) { c.Lookup = f }
}

func liveExplain(t *testing.T, cfg *apiclient.Config, query string) apiclient.Explanation {
	t.Helper()
	code, body := controllertest.Call(t, "GET", cfg.Server+"/api/v1/explain?live=1&"+query, cfg.Token, "")
	if code != 200 {
		t.Fatalf("explain %s: %d %s", query, code, body)
	}
	var x apiclient.Explanation
	if err := json.Unmarshal(body, &x); err != nil {
		t.Fatalf("explain %s: %v: %s", query, err, body)
	}
	if x.Live == nil {
		t.Fatalf("explain %s: no live part: %s", query, body)
	}
	return x
}

func liveEnd(t *testing.T, x apiclient.Explanation, end string) apiclient.LiveEnd {
	t.Helper()
	for _, e := range x.Live.Ends {
		if e.End == end {
			return e
		}
	}
	t.Fatalf("no %s end in %+v", end, x.Live)
	return apiclient.LiveEnd{}
}

// TestLiveExplainApplyFailed: an agent that failed to apply the newest
// version is reported as enforcing another version than the controller
// pushed, with the agent's error and its datapath's different decision;
// an offline node is said so without failing the answer.
func TestLiveExplainApplyFailed(t *testing.T) {
	h := newHarness(t)
	cfg := h.ServeAPI()
	h.Apply(twoNodes)
	enfA, enfB := &fakeEnforcer{}, &fakeEnforcer{}
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), enfA, nil, withLookup(modelDatapath(enfA)))
	b := h.startAgent("node-b", h.Token("node-b", time.Hour), enfB, nil, withLookup(modelDatapath(enfB)))
	h.waitApplied(a)
	h.waitApplied(b)

	x := liveExplain(t, cfg, "src=client&dst=web&protocol=TCP&port=8080")
	if x.Verdict != ruleset.VerdictAllowed || x.Live.Differs || len(x.Live.Ends) != 2 {
		t.Fatalf("in sync: %+v", x)
	}
	for _, e := range x.Live.Ends {
		if e.Status != apiclient.LiveInSync || e.Agent == nil || e.Agent.Verdict != ruleset.VerdictAllowed || e.Agent.Rule != x.DecidingRule ||
			e.Controller == nil || e.Controller.Version != 1 || e.Agent.AppliedVersion != 1 {
			t.Errorf("%s end in sync: %+v controller %+v agent %+v", e.End, e, e.Controller, e.Agent)
		}
	}

	// node-a cannot apply version 2, which lets 192.0.2.0/24 reach web
	// on SSH: the controller's view and node-a's differ.
	a.enf.setFail(errInjected)
	h.Apply(twoNodes, adminSSH)
	testutil.Eventually(t, 10*time.Second, "the failure reported", func() error {
		if st := h.AgentStatus("node-a"); st.LatestVersion != 2 || !strings.Contains(st.LastError, "version 2 not applied") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	x = liveExplain(t, cfg, "src=192.0.2.7&dst=web&protocol=TCP&port=22")
	if x.Verdict != ruleset.VerdictAllowed || x.DecidingRule != "admin/ssh" || !x.Live.Differs || len(x.Live.Ends) != 1 {
		t.Fatalf("after the failed apply: %+v %+v", x, x.Live)
	}
	e := liveEnd(t, x, "destination")
	msgs := strings.Join(e.Messages, " | ")
	if e.Status != apiclient.LiveDiffers || !e.Differs || e.Node != "node-a" ||
		e.Controller == nil || e.Controller.Version != 2 || e.Controller.Verdict != ruleset.VerdictAllowed || e.Controller.Rule != "admin/ssh" ||
		e.Agent == nil || e.Agent.AppliedVersion != 1 || e.Agent.Verdict != ruleset.VerdictDenied || e.Agent.Rule != ruleset.DefaultDenyName ||
		!strings.Contains(msgs, "node-a applies version 1, the controller pushed 2: version 2 not applied") ||
		!strings.Contains(msgs, "eg_policy is full") ||
		!strings.Contains(msgs, "node-a's datapath decides denied by default-deny; the controller's version 2: allowed by admin/ssh") {
		t.Errorf("destination end: %+v controller %+v agent %+v", e, e.Controller, e.Agent)
	}

	// egctl explain --live says the same, in words, and exits with the
	// controller's verdict.
	egctl := egctltest.Commands(offline.ExplainCmd)
	code, out, errs := egctltest.Run(t, egctl, "explain", "--live", "--from", "192.0.2.7", "--to", "web", "--port", "22/tcp",
		"--server", cfg.Server, "--token", cfg.Token)
	for _, w := range []string{"verdict:     allowed (admin/ssh)",
		"live:        destination web on node-a: differs; pushed version 2: allowed by admin/ssh; applied version 1, datapath: denied by default-deny",
		"node-a applies version 1, the controller pushed 2: version 2 not applied"} {
		if !strings.Contains(out, w) {
			t.Errorf("egctl explain --live lacks %q:\n%s", w, out)
		}
	}
	if code != 0 || errs != "" {
		t.Errorf("egctl explain --live: exit %d, stderr %q", code, errs)
	}
	code, out, _ = egctltest.Run(t, egctl, "explain", "--live", "--from", "client", "--to", "web", "--port", "22/tcp", "-o", "json",
		"--server", cfg.Server, "--token", cfg.Token)
	var jx apiclient.Explanation
	if err := json.Unmarshal([]byte(out), &jx); err != nil || code != 3 || jx.Live == nil || len(jx.Live.Ends) != 2 {
		t.Errorf("egctl explain --live -o json: exit %d (want 3, denied), %v:\n%s", code, err, out)
	}
	if code, _, errs := egctltest.Run(t, egctl, "explain", "--live", "--from", "client", "--to", "web", "--port", "22/tcp", "policies/",
		"--server", cfg.Server, "--token", cfg.Token); code != 1 || !strings.Contains(errs, "--live takes no files") {
		t.Errorf("egctl explain --live with files: exit %d, stderr %q", code, errs)
	}

	// node-b goes away: its end is offline, node-a's still answered.
	if err := b.stop(); err != nil {
		t.Fatalf("stop node-b's agent: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "node-b disconnected", func() error {
		if h.AgentStatus("node-b").Connected {
			return errors.New("still connected")
		}
		return nil
	})
	x = liveExplain(t, cfg, "src=client&dst=web&protocol=TCP&port=8080")
	if src := liveEnd(t, x, "source"); src.Status != apiclient.LiveOffline || src.Agent != nil || !strings.Contains(strings.Join(src.Messages, " "), "node-b is offline") {
		t.Errorf("offline source end: %+v", src)
	}
	if dst := liveEnd(t, x, "destination"); dst.Status != apiclient.LiveDiffers || dst.Agent == nil || dst.Agent.AppliedVersion != 1 {
		t.Errorf("destination end with node-b offline: %+v", dst)
	}
}

// TestLiveLookupBounds: an admin client cannot flood an agent: at most
// four lookups wait for one node's agent at once, the others are refused
// without reaching it, and each gives up after the timeout. (The per-node
// rate is admission.RateLimiter's, tested there.)
func TestLiveLookupBounds(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	release := make(chan struct{})
	var mu sync.Mutex
	reached := 0
	block := func(ruleset.EndpointID, controlplane.LookupQuery) (controlplane.LookupResult, error) {
		mu.Lock()
		reached++
		mu.Unlock()
		<-release
		return controlplane.LookupResult{}, errors.New("released")
	}
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withLookup(block))
	h.waitApplied(a)
	defer close(release)
	q := wire.Lookup{Workload: "web", Direction: ruleset.Ingress, Peer: netip.MustParseAddr("10.250.33.2"), Protocol: ruleset.ProtocolTCP, Port: 8080}
	const n = 6
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := h.Srv.Agents.Lookup(context.Background(), "node-a", q)
			errs <- err
		}()
	}
	var limited, timedOut int
	for range n {
		select {
		case err := <-errs:
			switch {
			case errors.Is(err, agentapi.ErrLookupLimited):
				limited++
			case errors.Is(err, agentapi.ErrLookupTimeout):
				timedOut++
			default:
				t.Errorf("lookup: %v, want limited or timed out", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a lookup neither answered nor gave up in 30 s")
		}
	}
	if limited != n-4 || timedOut != 4 {
		t.Errorf("%d limited and %d timed out, want %d and 4", limited, timedOut, n-4)
	}
	mu.Lock()
	if reached > 4 {
		t.Errorf("%d lookups reached the agent, at most 4 may", reached)
	}
	mu.Unlock()
	if _, err := h.Srv.Agents.Lookup(context.Background(), "node-x", q); !errors.Is(err, agentapi.ErrNodeOffline) {
		t.Errorf("lookup on a node without agent: %v, want ErrNodeOffline", err)
	}
	if n := h.Counter("eastguard_controller_lookups_total", "result", "timeout"); n != 4 {
		t.Errorf("%v timeouts counted, want 4", n)
	}
}
