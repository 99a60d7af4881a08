package enforcer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// hostRuleSet is node-a in host mode (identity host, its address nodeAddr)
// with one container, web; the node may only be reached on SSH, and
// denies every TCP egress: the controller is cut off by the policy.
func hostRuleSet(version uint64) *ruleset.RuleSet {
	rs := ruleSet(version, 80, "p/http")
	rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: 2, Workload: "node-a", Identity: ruleset.IdentityHost})
	rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(nodeAddr, 32), Identity: ruleset.IdentityHost})
	rs.Entries = append(rs.Entries,
		ruleset.Entry{Endpoint: 2, Direction: ruleset.Ingress, Protocol: ruleset.ProtocolTCP, Port: 22, Verdict: ruleset.VerdictAllowed, Rule: 2},
		ruleset.Entry{Endpoint: 2, Direction: ruleset.Egress, Protocol: ruleset.ProtocolTCP, Verdict: ruleset.VerdictDenied, Rule: 3})
	rs.Rules = append(rs.Rules, ruleset.RuleName{ID: 2, Name: "p/ssh"}, ruleset.RuleName{ID: 3, Name: "p/no-tcp-out"})
	return rs
}

// fakeNet answers the controller's name and records the dials.
type fakeNet struct {
	mu        sync.Mutex
	addrs     []netip.Addr
	lookupErr error
	dialed    []string
	refuse    map[string]bool
}

func (n *fakeNet) lookup(_ context.Context, network, host string) ([]netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if network != "ip" || host != "ctl.example" {
		return nil, errors.New("unexpected lookup " + network + " " + host)
	}
	return slices.Clone(n.addrs), n.lookupErr
}

func (n *fakeNet) dial(_ context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dialed = append(n.dialed, network+" "+addr)
	if n.refuse[addr] {
		return nil, errors.New("connection refused")
	}
	c, s := net.Pipe()
	s.Close()
	return c, nil
}

func (n *fakeNet) set(addrs []netip.Addr, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addrs, n.lookupErr = addrs, err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	ctlAddr  = netip.MustParseAddr("203.0.113.5")
	ctlAddr6 = netip.MustParseAddr("2001:db8::5")
	resolver = netip.MustParseAddr("198.51.100.53")
	upstream = netip.MustParseAddr("198.51.100.54")
)

// failsafeIPCache returns the reserved-identity entries of an applied
// rule set, by address.
func failsafeIPCache(rs *ruleset.RuleSet) map[netip.Addr]ruleset.Identity {
	out := map[netip.Addr]ruleset.Identity{}
	for _, c := range rs.IPCache {
		if c.Identity >= ruleset.IdentityFailsafeFirst && c.Identity <= ruleset.IdentityFailsafeLast {
			out[c.Prefix.Addr()] = c.Identity
		}
	}
	return out
}

// decide decides a flow of node-a's host endpoint with an applied rule
// set, as the datapath would.
func decide(t *testing.T, rs *ruleset.RuleSet, dir ruleset.Direction, a netip.Addr, proto ruleset.Protocol, port uint16) ruleset.PolicyValue {
	t.Helper()
	tab, err := ruleset.Encode(rs)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := rs.HostEndpoint()
	return tab.Decide(host, dir, rs.Resolve(a), proto, port)
}

// TestFailsafeForControllerAndResolvers: with a controller given by name,
// every rule set with a host-mode endpoint is enforced with the failsafe
// for the controller's addresses (TCP 7443, both ways) and the resolvers
// (DNS), under the rule failsafe/control-plane, while the rule set as
// received, saved and reported keeps its hash.
func TestFailsafeForControllerAndResolvers(t *testing.T) {
	st := openState(t, t.TempDir())
	e, dp := newEnforcer(t, st)
	fn := &fakeNet{addrs: []netip.Addr{ctlAddr6, netip.AddrFrom16(ctlAddr.As16()), ctlAddr}}
	err := e.EnableFailsafe(enforcer.FailsafeConfig{
		Controller: "ctl.example:7443",
		// A local stub (systemd-resolved): its upstream servers are opened.
		ResolvConf:     writeFile(t, "resolv.conf", "# stub\nnameserver 127.0.0.53\noptions edns0\n"),
		StubResolvConf: writeFile(t, "upstream.conf", "nameserver 198.51.100.53\nnameserver fe80::53%eth0\nsearch example\nnameserver 198.51.100.54\n"),
		Lookup:         fn.lookup, Dial: fn.dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	v1 := hostRuleSet(1)
	want := v1.Hash()
	if _, err := e.Apply(v1, nil); err != nil {
		t.Fatal(err)
	}
	// Before the first dial only the resolvers are known.
	first := dp.appliedRuleSets()[0]
	if got := failsafeIPCache(first); len(got) != 3 || got[resolver] == 0 || got[upstream] == 0 || got[netip.MustParseAddr("fe80::53")] == 0 {
		t.Errorf("failsafe ipcache before dialling: %v, want the three upstream resolvers", got)
	}

	conn, err := e.DialController(context.Background(), "ctl.example:7443")
	if err != nil {
		t.Fatalf("DialController: %v", err)
	}
	conn.Close()
	if !slices.Equal(fn.dialed, []string{"tcp 203.0.113.5:7443"}) {
		t.Errorf("dialled %v, want the IPv4 address first", fn.dialed)
	}
	applied := dp.appliedRuleSets()
	if len(applied) != 2 {
		t.Fatalf("datapath applies: %d, want 2 (the rule set, then again with the controller's addresses)", len(applied))
	}
	eff := applied[1]
	fs := failsafeIPCache(eff)
	for _, a := range []netip.Addr{ctlAddr, ctlAddr6, resolver, upstream} {
		if fs[a] == 0 {
			t.Errorf("no failsafe ipcache entry for %s: %v", a, fs)
		}
	}
	if len(fs) != 5 {
		t.Errorf("failsafe ipcache %v, want the 2 controller and 3 resolver addresses", fs)
	}
	if eff.RuleName(ruleset.RuleFailsafe) != ruleset.FailsafeName || !slices.Contains(eff.Rules, ruleset.RuleName{ID: ruleset.RuleFailsafe, Name: ruleset.FailsafeName}) {
		t.Errorf("failsafe rule not in the applied rule table: %v", eff.Rules)
	}
	failsafe := ruleset.PolicyValue{Verdict: ruleset.VerdictAllowed, Rule: ruleset.RuleFailsafe}
	for _, f := range []struct {
		dir   ruleset.Direction
		a     netip.Addr
		proto ruleset.Protocol
		port  uint16
	}{
		{ruleset.Egress, ctlAddr, ruleset.ProtocolTCP, 7443},
		{ruleset.Ingress, ctlAddr, ruleset.ProtocolTCP, 7443},
		{ruleset.Egress, ctlAddr6, ruleset.ProtocolTCP, 7443},
		{ruleset.Egress, resolver, ruleset.ProtocolUDP, 53},
		{ruleset.Egress, upstream, ruleset.ProtocolTCP, 53},
	} {
		if got := decide(t, eff, f.dir, f.a, f.proto, f.port); got != failsafe {
			t.Errorf("%s %s %s %d: %+v, want allowed by the failsafe", f.dir, f.a, f.proto, f.port, got)
		}
		if got := decide(t, v1, f.dir, f.a, f.proto, f.port); got.Verdict != ruleset.VerdictDenied {
			t.Errorf("policy alone: %s %s %s %d: %+v, want denied", f.dir, f.a, f.proto, f.port, got)
		}
	}
	if got := decide(t, eff, ruleset.Egress, ctlAddr, ruleset.ProtocolTCP, 22); got.Verdict != ruleset.VerdictDenied || got.Rule != 3 {
		t.Errorf("egress to the controller on 22: %+v, want denied by the policy", got)
	}

	// The rule set as received keeps its hash: Current, the state file,
	// the version reported.
	if cur := e.Current(); cur != v1 || cur.Hash() != want || len(cur.Rules) != 3 {
		t.Errorf("Current changed: %+v", cur)
	}
	if got := savedRuleSet(t, st); got.Hash() != want {
		t.Errorf("saved hash %s, want %s", got.Hash(), want)
	}
	rules, _ := e.Names()
	if rules(ruleset.RuleFailsafe) != ruleset.FailsafeName {
		t.Errorf("flow records name the failsafe %q", rules(ruleset.RuleFailsafe))
	}
	s := e.Status()
	if s.Failsafe == nil || !s.Failsafe.Enforced || s.Failsafe.Rule != ruleset.FailsafeName ||
		!slices.Equal(s.Failsafe.Controller, []string{"203.0.113.5:7443", "[2001:db8::5]:7443"}) ||
		!slices.Equal(s.Failsafe.Resolvers, []string{"198.51.100.53:53", "198.51.100.54:53", "[fe80::53]:53"}) {
		t.Errorf("Status.Failsafe: %+v", s.Failsafe)
	}
	if s.Version != 1 || s.LastError != "" {
		t.Errorf("Status: %+v", s)
	}

	// Same answer: nothing to apply again.
	if conn, err := e.DialController(context.Background(), "ctl.example:7443"); err != nil {
		t.Fatal(err)
	} else {
		conn.Close()
	}
	if n := len(dp.appliedRuleSets()); n != 2 {
		t.Errorf("datapath applies after an unchanged lookup: %d, want 2", n)
	}
}

// TestFailsafeFollowsReResolution: each dial resolves the name again; the
// failsafe follows the answer before the connection is attempted, and a
// failed lookup keeps the addresses known before.
func TestFailsafeFollowsReResolution(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	moved := netip.MustParseAddr("203.0.113.77")
	fn := &fakeNet{addrs: []netip.Addr{ctlAddr}, refuse: map[string]bool{"203.0.113.5:7443": true}}
	if err := e.EnableFailsafe(enforcer.FailsafeConfig{Controller: "ctl.example:7443",
		ResolvConf: writeFile(t, "resolv.conf", "nameserver 198.51.100.53\n"), Lookup: fn.lookup, Dial: fn.dial}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(hostRuleSet(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.DialController(context.Background(), "ctl.example:7443"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("dial to a refusing controller: %v", err)
	}
	fn.set([]netip.Addr{moved}, nil)
	conn, err := e.DialController(context.Background(), "ctl.example:7443")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	last := dp.appliedRuleSets()[len(dp.appliedRuleSets())-1]
	if fs := failsafeIPCache(last); fs[moved] == 0 || fs[ctlAddr] != 0 || fs[resolver] == 0 {
		t.Errorf("after the controller moved: failsafe ipcache %v, want %s and the resolver only", fs, moved)
	}

	// DNS fails: the known address is dialled, the failsafe stays.
	n := len(dp.appliedRuleSets())
	fn.set(nil, errors.New("no such host"))
	conn, err = e.DialController(context.Background(), "ctl.example:7443")
	if err != nil {
		t.Fatalf("dial with DNS down: %v", err)
	}
	conn.Close()
	if fn.dialed[len(fn.dialed)-1] != "tcp 203.0.113.77:7443" || len(dp.appliedRuleSets()) != n {
		t.Errorf("with DNS down: dialled %v, %d applies (want %d)", fn.dialed, len(dp.appliedRuleSets()), n)
	}

	// The datapath refuses the update: the failsafe in force stays, and
	// so does the outcome of the last apply; the next dial tries again.
	third := netip.MustParseAddr("203.0.113.99")
	fn.set([]netip.Addr{third}, nil)
	dp.fail(errors.New("map full"), nil)
	if conn, err := e.DialController(context.Background(), "ctl.example:7443"); err == nil {
		conn.Close()
	}
	if s := e.Status(); s.LastError != "" || !slices.Equal(s.Failsafe.Controller, []string{"203.0.113.77:7443"}) {
		t.Errorf("after a refused update: lastError %q, failsafe %v", s.LastError, s.Failsafe.Controller)
	}
	dp.fail(nil, nil)
	if conn, err := e.DialController(context.Background(), "ctl.example:7443"); err == nil {
		conn.Close()
	}
	last = dp.appliedRuleSets()[len(dp.appliedRuleSets())-1]
	if fs := failsafeIPCache(last); fs[third] == 0 || fs[moved] != 0 {
		t.Errorf("after the datapath recovered: failsafe ipcache %v, want %s", fs, third)
	}

	// Another address than the failsafe's controller is refused.
	if _, err := e.DialController(context.Background(), "other.example:7443"); err == nil {
		t.Error("dialled a controller the failsafe is not for")
	}
}

// TestFailsafeLiteralAddress: a controller given by address needs no DNS:
// only its address is opened, from the first apply on.
func TestFailsafeLiteralAddress(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	fn := &fakeNet{}
	if err := e.EnableFailsafe(enforcer.FailsafeConfig{Controller: "[::ffff:203.0.113.5]:7443",
		ResolvConf: writeFile(t, "resolv.conf", "nameserver 198.51.100.53\n"), Lookup: fn.lookup, Dial: fn.dial}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(hostRuleSet(1), nil); err != nil {
		t.Fatal(err)
	}
	if fs := failsafeIPCache(dp.appliedRuleSets()[0]); len(fs) != 1 || fs[ctlAddr] == 0 {
		t.Errorf("failsafe ipcache %v, want only %s", fs, ctlAddr)
	}
	conn, err := e.DialController(context.Background(), "[::ffff:203.0.113.5]:7443")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if len(dp.appliedRuleSets()) != 1 || !slices.Equal(fn.dialed, []string{"tcp 203.0.113.5:7443"}) {
		t.Errorf("dial: %d applies, dialled %v", len(dp.appliedRuleSets()), fn.dialed)
	}
	for _, bad := range []string{"ctl.example", "ctl.example:0", "ctl.example:http"} {
		if err := e.EnableFailsafe(enforcer.FailsafeConfig{Controller: bad}); err == nil {
			t.Errorf("EnableFailsafe(%q): no error", bad)
		}
	}
}

// TestNoFailsafe: standalone agents, and rule sets without a host-mode
// endpoint, get nothing; rule sets using the reserved ids are refused.
func TestNoFailsafe(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	if _, err := e.Apply(hostRuleSet(1), nil); err != nil {
		t.Fatal(err)
	}
	if fs := failsafeIPCache(dp.appliedRuleSets()[0]); len(fs) != 0 || e.Status().Failsafe != nil {
		t.Errorf("standalone: failsafe %v, status %+v", fs, e.Status().Failsafe)
	}
	if err := e.EnableFailsafe(enforcer.FailsafeConfig{Controller: "203.0.113.5:7443"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(ruleSet(2, 80, "p/http"), nil); err != nil {
		t.Fatal(err)
	}
	if fs := failsafeIPCache(dp.appliedRuleSets()[1]); len(fs) != 0 || e.Status().Failsafe.Enforced {
		t.Errorf("no host-mode endpoint: failsafe %v, status %+v", fs, e.Status().Failsafe)
	}
	bad := hostRuleSet(3)
	bad.IPCache[0].Identity = ruleset.IdentityFailsafeFirst
	bad.Endpoints[0].Identity = ruleset.IdentityFailsafeFirst
	if _, err := e.Apply(bad, nil); !errors.Is(err, ruleset.ErrReserved) {
		t.Errorf("rule set with a reserved identity: %v", err)
	}
	if e.Current().Version != 2 {
		t.Errorf("Current after a refused rule set: version %d", e.Current().Version)
	}
}

// TestFailoverFailsafeSeveralControllers: with several controllers (high
// availability) the failsafe opens every one: the addresses given from
// the first apply, a name's addresses once resolved, together; the
// dialer dials any of them and nothing else; the controllers must share
// a port.
func TestFailoverFailsafeSeveralControllers(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	other := netip.MustParseAddr("203.0.113.7")
	fn := &fakeNet{addrs: []netip.Addr{ctlAddr, ctlAddr6}}
	if err := e.EnableFailsafe(enforcer.FailsafeConfig{Controller: "ctl.example:7443, 203.0.113.7:7443",
		ResolvConf: writeFile(t, "resolv.conf", "nameserver 198.51.100.53\n"), Lookup: fn.lookup, Dial: fn.dial}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(hostRuleSet(1), nil); err != nil {
		t.Fatal(err)
	}
	if fs := failsafeIPCache(dp.appliedRuleSets()[0]); len(fs) != 2 || fs[other] == 0 || fs[resolver] == 0 {
		t.Errorf("failsafe before resolving: %v, want %s and the resolver", fs, other)
	}
	addrs, err := e.ResolveController(context.Background(), "ctl.example")
	if err != nil || len(addrs) != 2 {
		t.Fatalf("resolve: %v, %v", addrs, err)
	}
	applied := dp.appliedRuleSets()
	if fs := failsafeIPCache(applied[len(applied)-1]); len(fs) != 4 || fs[other] == 0 || fs[ctlAddr] == 0 || fs[ctlAddr6] == 0 {
		t.Errorf("failsafe after resolving: %v, want both controllers' addresses and the resolver", fs)
	}
	for _, ok := range []string{"203.0.113.5:7443", "[2001:db8::5]:7443", "203.0.113.7:7443"} {
		conn, err := e.DialController(context.Background(), ok)
		if err != nil {
			t.Errorf("dial %s: %v", ok, err)
			continue
		}
		conn.Close()
	}
	for _, bad := range []string{"198.51.100.9:7443", "203.0.113.5:22", "other.example:7443"} {
		if _, err := e.DialController(context.Background(), bad); err == nil {
			t.Errorf("dialled %s, which the failsafe is not for", bad)
		}
	}
	if _, err := e.ResolveController(context.Background(), "198.51.100.9"); err == nil {
		t.Error("resolved an address the failsafe is not for")
	}
	for _, bad := range []string{"a.example:7443,b.example:7444", "a.example:7443,", ""} {
		if _, _, err := enforcer.SplitControllers(bad); err == nil {
			t.Errorf("SplitControllers(%q): no error", bad)
		}
	}
}
