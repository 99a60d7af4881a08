package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestPrivilegedRevalidation: after a rule-set change, established flows are checked
// once against the new rules; a flow the new rules deny is cut, with an
// event naming why. With KeepEstablished, they are left alone.
func TestPrivilegedRevalidation(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-established=%v", keep), func(t *testing.T) {
			h := newHarness(t, Config{KeepEstablished: keep, HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
			h.apply(shopRuleSet())
			if got := h.toWorkload("web0", tcp4(cli4, web4, 45000, 443, tcpSYN)); got != retPass {
				t.Fatalf("SYN: %d", got)
			}
			if got := h.fromWorkload("web0", udp4(web4, world4, 45001, 53)); got != retPass {
				t.Fatalf("DNS: %d", got)
			}
			h.drain()

			// Same rules but without clients-to-web.
			rs := shopRuleSet()
			rs.Entries = rs.Entries[1:]
			h.apply(rs)
			before := h.counters()
			ret := h.toWorkload("web0", tcp4(cli4, web4, 45000, 443, tcpACK))
			if keep {
				if ret != retPass {
					t.Errorf("kept flow dropped: %d", ret)
				}
				checkEvents(t, h.drain(), nil)
				return
			}
			if ret != retDrop {
				t.Errorf("revoked flow still passes: %d", ret)
			}
			checkEvents(t, h.drain(), &wantEvent{ruleset.VerdictDenied, ruleset.RuleDefaultDeny, ReasonRevalidated, ruleset.Ingress, idClients, idWeb})
			// The DNS flow is still allowed: it passes, silently.
			if got := h.toWorkload("web0", udp4(world4, web4, 53, 45001)); got != retPass {
				t.Errorf("still-allowed flow dropped after a change: %d", got)
			}
			checkEvents(t, h.drain(), nil)
			if d := h.counters().Get(CounterRevalidated) - before.Get(CounterRevalidated); d != 2 {
				t.Errorf("revalidated +%d, want +2", d)
			}
			// Checked once: the next packet is plain established.
			if got := h.toWorkload("web0", udp4(world4, web4, 53, 45001)); got != retPass {
				t.Errorf("second packet: %d", got)
			}
			if d := h.counters().Get(CounterRevalidated) - before.Get(CounterRevalidated); d != 2 {
				t.Errorf("flow re-checked twice in one generation")
			}
		})
	}
}

// TestPrivilegedApplyIsAtomic alternates two rule sets while packets keep arriving.
// Each is consistent on its own (rule 1 allows, or rule 2 denies, port 80
// from the clients); a packet that saw one's endpoint map with the other's
// policy map would fall through to the default deny (rule 0). It never may.
func TestPrivilegedApplyIsAtomic(t *testing.T) {
	h := newHarness(t, Config{DenyEventsPerSecond: 1 << 30, DenyEventsBurst: 1 << 20}, "web0")
	base := func() *ruleset.RuleSet {
		return &ruleset.RuleSet{
			Node:      "n",
			Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "web0", Identity: idWeb}},
			IPCache: []ruleset.IPCacheEntry{
				{Prefix: pfx(web4 + "/32"), Identity: idWeb}, {Prefix: pfx("10.250.2.0/24"), Identity: idClients},
			},
			Rules: []ruleset.RuleName{{ID: 1, Name: "a/allow"}, {ID: 2, Name: "b/deny"}},
		}
	}
	a, b := base(), base()
	// a: only the exact peer shape; b: only the any-peer shape.
	a.Entries = []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Peer: idClients, Protocol: ruleset.ProtocolTCP, Port: 80, Verdict: ruleset.VerdictAllowed, Rule: 1}}
	b.Entries = []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Peer: ruleset.IdentityAny, Protocol: ruleset.ProtocolTCP, Port: 80, Verdict: ruleset.VerdictDenied, Rule: 2}}
	h.apply(a)
	h.drain()

	var stop atomic.Bool
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		port := uint16(1024)
		for !stop.Load() {
			port++
			if port == 0 {
				port = 1024
			}
			h.toWorkload("web0", tcp4(cli4, web4, port, 80, tcpSYN))
			sent.Add(1)
		}
	}()
	applies := 0
	deadline := time.Now().Add(3 * time.Second)
	for applies < 200 && time.Now().Before(deadline) {
		rs := a
		if applies%2 == 0 {
			rs = b
		}
		if _, err := h.d.Apply(rs); err != nil {
			t.Errorf("Apply %d: %v", applies, err)
			break
		}
		applies++
	}
	stop.Store(true)
	wg.Wait()
	rules := map[ruleset.RuleID]int{}
	for _, ev := range h.drain() {
		rules[ev.Rule]++
	}
	t.Logf("%d applies, %d packets, events by rule: %v", applies, sent.Load(), rules)
	if rules[0] != 0 {
		t.Errorf("%d packets saw a mixed rule set (default deny)", rules[0])
	}
	if rules[1] == 0 || rules[2] == 0 {
		t.Errorf("both rule sets should have decided packets: %v", rules)
	}
}

// TestPrivilegedApplyRefusals: a bad rule set, or one that does not fit, is refused
// whole with an error that says why, and the previous one stays in force.
func TestPrivilegedApplyRefusals(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, Limits: ruleset.Limits{Endpoints: 16, IPCache: 64, Policy: 12, PolicyRanges: 8}}, "web0", "mon0", "up0")
	first := h.apply(shopRuleSet())
	enforced := func() {
		t.Helper()
		if got := h.toWorkload("web0", tcp4(cli4, web4, 46000+uint16(h.d.Generation()), 443, tcpSYN)); got != retPass {
			t.Errorf("previous rule set no longer enforced: 443 dropped")
		}
		if got := h.toWorkload("web0", tcp4(cli4, web4, 46100, 80, tcpSYN)); got != retDrop {
			t.Errorf("previous rule set no longer enforced: 80 passes")
		}
		h.drain()
	}

	invalid := shopRuleSet()
	invalid.Entries[0].Endpoint = 99
	_, err := h.d.Apply(invalid)
	if err == nil || !strings.Contains(err.Error(), "entries[0]: unknown endpoint 99") {
		t.Errorf("invalid rule set: err = %v", err)
	}
	if h.d.Generation() != first.Generation {
		t.Errorf("generation moved on a refused rule set")
	}
	enforced()

	big := shopRuleSet()
	for p := range uint16(20) {
		big.Entries = append(big.Entries, ruleset.Entry{Endpoint: 1, Direction: ruleset.Egress, Peer: idDB, Protocol: ruleset.ProtocolUDP,
			Port: 1000 + 2*p, Verdict: ruleset.VerdictAllowed, Rule: rWebToDB}) // not adjacent: no merging into a range
	}
	// Status names each map's limit, what the refusal below compares with.
	limits := map[string]int{"eg_endpoints": 16, "eg_ipcache_hosts": 64, "eg_ipcache": 64, "eg_policy": 12, "eg_policy_ranges": 8}
	for _, m := range h.d.Status().Maps {
		if m.Limit != limits[m.Name] || m.Entries > m.Capacity || m.Capacity > m.Limit {
			t.Errorf("status of %s: %+v, want limit %d >= capacity >= entries", m.Name, m, limits[m.Name])
		}
	}
	_, err = h.d.Apply(big)
	var full *ruleset.MapFullError
	if !errors.As(err, &full) || full.Map != "eg_policy" || full.Limit != 12 {
		t.Fatalf("oversized rule set: err = %v, want a MapFullError for eg_policy with limit 12", err)
	}
	if !strings.Contains(err.Error(), "map eg_policy is full") || !strings.Contains(err.Error(), "the limit is 12") {
		t.Errorf("error does not name the map and the limit: %v", err)
	}
	if h.d.Generation() != first.Generation {
		t.Errorf("generation moved on a refused rule set")
	}
	enforced()
}

// TestPrivilegedPendingInterfaces: a workload whose interface does not exist yet does
// not fail the rule set; it is enforced when the interface appears, and
// pending again when it goes.
func TestPrivilegedPendingInterfaces(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "up0")
	res := h.apply(shopRuleSet()) // mon0 does not exist
	if len(res.Pending) != 1 || res.Pending[0] != "mon0" {
		t.Fatalf("pending = %v, want [mon0]", res.Pending)
	}
	state := func() EndpointState {
		for _, e := range h.d.Status().Endpoints {
			if e.Workload == "mon" {
				return e.State
			}
		}
		return ""
	}
	if s := state(); s != EndpointPending {
		t.Fatalf("mon is %q, want pending", s)
	}
	h.ns.IP(t, "link", "add", "name", "mon0", "type", "veth", "peer", "name", "mon0p")
	waitFor(t, 5*time.Second, "mon0 enforced after it appeared", func() bool { return state() == EndpointEnforcing })
	h.ifindex["mon0"] = h.linkIndex("mon0")
	if got := h.toWorkload("mon0", tcp4(cli4, mon4, 47000, 81, tcpSYN)); got != retPass {
		t.Errorf("monitor workload dropped a packet: %d", got)
	}
	checkEvents(t, h.drain(), &wantEvent{ruleset.VerdictWouldDeny, 0, ReasonPolicy, ruleset.Ingress, idClients, idMon})
	pin := filepath.Join(h.d.cfg.BPFFSDir, linksDir, hook{h.ifindex["mon0"], false}.String())
	if _, err := os.Stat(pin); err != nil {
		t.Errorf("link of the new interface not pinned: %v", err)
	}

	h.ns.IP(t, "link", "del", "mon0")
	waitFor(t, 5*time.Second, "mon0 pending after it vanished", func() bool { return state() == EndpointPending })
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin of a vanished interface left behind: %v", err)
	}
}

// TestPrivilegedRestartAdoptsPins: closing the datapath leaves enforcement in place;
// a new Open adopts the pinned links (switching them to its programs) and
// the rule set in force, without detaching anything in between.
func TestPrivilegedRestartAdoptsPins(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	res := h.apply(shopRuleSet())
	ifindex := h.ifindex["web0"]
	progBefore := attachedPrograms(t, h, ifindex)
	if len(progBefore) != 2 {
		t.Fatalf("programs on web0: %v, want 2", progBefore)
	}
	cfg := h.d.cfg
	if err := h.d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := h.d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := attachedPrograms(t, h, ifindex); len(got) != 2 {
		t.Fatalf("after Close the programs are gone: %v", got)
	}

	cfg.Logger = zaptest.NewLogger(t)
	var err error
	if h.d, err = h.open(cfg); err != nil {
		t.Fatalf("re-Open: %v", err)
	}
	if g := h.d.Generation(); g != res.Generation {
		t.Errorf("generation after restart %d, want %d", g, res.Generation)
	}
	if n := len(h.d.links); n != 6 {
		t.Errorf("adopted %d links, want 6", n)
	}
	progAfter := attachedPrograms(t, h, ifindex)
	if len(progAfter) != 2 || progAfter[0] == progBefore[0] {
		t.Errorf("links not switched to the new programs: before %v, after %v", progBefore, progAfter)
	}
	// The adopted rule set decides with the new programs.
	if got := h.toWorkload("web0", tcp4(cli4, web4, 48000, 443, tcpSYN)); got != retPass {
		t.Errorf("allowed flow dropped after restart")
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 48001, 80, tcpSYN)); got != retDrop {
		t.Errorf("denied flow passes after restart")
	}
	h.drain()
	h.apply(shopRuleSet())
}

// TestPrivilegedUninstall removes every program and pin.
func TestPrivilegedUninstall(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	dir := h.d.cfg.BPFFSDir
	if err := h.d.Uninstall(); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	for name, idx := range h.ifindex {
		if got := attachedPrograms(t, h, idx); len(got) != 0 {
			t.Errorf("%s still has programs after Uninstall: %v", name, got)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists", dir)
	}
	if err := Uninstall(dir, nil); err != nil {
		t.Errorf("second Uninstall: %v", err)
	}
}

// attachedPrograms lists the tcx programs on an interface (ingress, egress).
func attachedPrograms(t *testing.T, h *harness, ifindex uint32) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := h.ns.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: int(ifindex), Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query programs: %v", err)
	}
	return ids
}

// TestPrivilegedUpdateIPCache: an address changes identity in place; flows re-check.
func TestPrivilegedUpdateIPCache(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	gen := h.d.Generation()
	// 10.250.5.5 is world: denied.
	if got := h.toWorkload("web0", tcp4("10.250.5.5", web4, 49000, 443, tcpSYN)); got != retDrop {
		t.Fatalf("world allowed")
	}
	if err := h.d.UpdateIPCache([]ruleset.IPCacheEntry{{Prefix: pfx("10.250.5.0/24"), Identity: idClients}}, nil); err != nil {
		t.Fatalf("UpdateIPCache: %v", err)
	}
	if got := h.toWorkload("web0", tcp4("10.250.5.5", web4, 49001, 443, tcpSYN)); got != retPass {
		t.Errorf("address did not take the clients identity")
	}
	if h.d.Generation() != gen+1 {
		t.Errorf("generation %d, want %d: established flows would not re-check", h.d.Generation(), gen+1)
	}
	// Removing the prefix: the established flow is re-checked and cut.
	if err := h.d.UpdateIPCache(nil, []netip.Prefix{pfx("10.250.5.0/24")}); err != nil {
		t.Fatalf("UpdateIPCache: %v", err)
	}
	h.drain()
	if got := h.toWorkload("web0", tcp4("10.250.5.5", web4, 49001, 443, tcpACK)); got != retDrop {
		t.Errorf("flow of a removed identity still passes")
	}
	checkEvents(t, h.drain(), &wantEvent{ruleset.VerdictDenied, 0, ReasonRevalidated, ruleset.Ingress, ruleset.IdentityWorld, idWeb})
	// Removing the workload's own address is refused: it could not be enforced.
	err := h.d.UpdateIPCache(nil, []netip.Prefix{pfx(web4 + "/32"), pfx(web6 + "/128")})
	if err == nil || !strings.Contains(err.Error(), "no ipcache prefix has its identity 300") {
		t.Errorf("removing a workload's addresses: err = %v", err)
	}
}

// TestPrivilegedDenyEventRateLimit: a flood of denied packets yields at most the
// burst in events; the rest are counted, and the next event says how many
// were suppressed before it. The flood runs on one CPU: buckets are per CPU.
func TestPrivilegedDenyEventRateLimit(t *testing.T) {
	h := newHarness(t, Config{DenyEventsPerSecond: 1, DenyEventsBurst: 5}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	h.drain()
	before := h.counters()
	const flood = 200
	var next []FlowEvent
	onOneCPU(t, func() {
		for i := range flood {
			h.toWorkload("web0", tcp4(cli4, web4, uint16(1000+i), 80, tcpSYN))
		}
		// One token refills after a second: the next deny event is written
		// and carries the count of those suppressed before it.
		time.Sleep(1100 * time.Millisecond)
		h.drain()
		h.toWorkload("web0", tcp4(cli4, web4, 999, 80, tcpSYN))
		next = h.drain()
	})
	after := h.counters()
	suppressed := after.Get(CounterEventsSuppressed) - before.Get(CounterEventsSuppressed)
	if suppressed < flood-5-2 || suppressed > flood-5 {
		t.Errorf("%d of %d deny events suppressed with burst 5, want about %d", suppressed, flood, flood-5)
	}
	if len(next) != 1 {
		t.Fatalf("%d events after the refill, want 1", len(next))
	}
	if uint64(next[0].Suppressed) != suppressed {
		t.Errorf("event after the flood says %d suppressed, the counter says %d", next[0].Suppressed, suppressed)
	}
	if d := after.Get(VerdictCounter(ruleset.VerdictDenied, ruleset.Ingress)) - before.Get(VerdictCounter(ruleset.VerdictDenied, ruleset.Ingress)); d != flood+1 {
		t.Errorf("denied counter +%d, want %d: rate limiting must not hide drops", d, flood+1)
	}
	// Allowed new flows are never rate-limited.
	for i := range 20 {
		h.toWorkload("web0", tcp4(cli4, web4, uint16(3000+i), 443, tcpSYN))
	}
	if evs := h.drain(); len(evs) != 20 {
		t.Errorf("%d allowed events, want 20", len(evs))
	}
}

// onOneCPU runs f on a thread bound to one CPU.
func onOneCPU(t *testing.T, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var orig, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		t.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &orig)
	f()
}

// TestPrivilegedEventsLostAreCounted: with a tiny ring and no reader, events that do
// not fit are counted, never silently gone.
func TestPrivilegedEventsLostAreCounted(t *testing.T) {
	h := newHarness(t, Config{RingBufBytes: 4096}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	h.drain()
	before := h.counters()
	const flows = 200
	for i := range flows {
		h.toWorkload("web0", tcp4(cli4, web4, uint16(5000+i), 443, tcpSYN))
	}
	read := len(h.drain())
	lost := h.counters().Get(CounterEventsLost) - before.Get(CounterEventsLost)
	if lost == 0 {
		t.Errorf("no loss counted with a %d-byte ring and %d events", 4096, flows)
	}
	if read+int(lost) != flows {
		t.Errorf("%d read + %d lost != %d written", read, lost, flows)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPrivilegedRevalidationCutsEstablished: a connection whose packets
// have been passing on the established fast path (answered, counted as
// established, its entry refreshed) is cut by its first packet after a
// rule-set change that refuses it, in either direction, and stays cut;
// the same tuple is admitted again, as a new flow, once the rule is back
// (issue 23: re-validation must hold with whatever fast path established
// traffic takes).
func TestPrivilegedRevalidationCutsEstablished(t *testing.T) {
	for _, fromWorkload := range []bool{false, true} {
		t.Run(fmt.Sprintf("first-packet-from-workload=%v", fromWorkload), func(t *testing.T) {
			h := newShopHarness(t)
			if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpSYN)); got != retPass {
				t.Fatalf("SYN: %d", got)
			}
			if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpSYN|tcpACK)); got != retPass {
				t.Fatalf("SYN-ACK: %d", got)
			}
			before := h.counters()
			for i := range 50 {
				if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK)); got != retPass {
					t.Fatalf("ACK %d: %d", i, got)
				}
				if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpACK)); got != retPass {
					t.Fatalf("reply %d: %d", i, got)
				}
			}
			if d := h.counters().Get(CounterEstablished) - before.Get(CounterEstablished); d != 100 {
				t.Fatalf("established +%d, want +100: the packets did not take the established path", d)
			}
			h.drain()
			before = h.counters()

			// The same rules without clients-to-web.
			rs := shopRuleSet()
			rs.Entries = rs.Entries[1:]
			h.apply(rs)
			var got int32
			if fromWorkload {
				got = h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpACK))
			} else {
				got = h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK))
			}
			if got != retDrop {
				t.Fatalf("revoked established connection still passes: %d", got)
			}
			// The event describes the packet that was cut (its direction,
			// its source and destination identities).
			want := &wantEvent{ruleset.VerdictDenied, ruleset.RuleDefaultDeny, ReasonRevalidated, ruleset.Ingress, idClients, idWeb}
			if fromWorkload {
				want = &wantEvent{ruleset.VerdictDenied, ruleset.RuleDefaultDeny, ReasonRevalidated, ruleset.Egress, idWeb, idClients}
			}
			checkEvents(t, h.drain(), want)
			if d := h.counters().Get(CounterRevalidated) - before.Get(CounterRevalidated); d != 1 {
				t.Errorf("revalidated +%d, want +1", d)
			}
			for i := range 3 {
				if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK)); got != retDrop {
					t.Errorf("client packet %d of the cut connection passes: %d", i, got)
				}
				if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpACK)); got != retDrop {
					t.Errorf("server packet %d of the cut connection passes: %d", i, got)
				}
			}
			if d := h.counters().Get(CounterEstablished) - before.Get(CounterEstablished); d != 0 {
				t.Errorf("established +%d after the cut, want 0", d)
			}
			h.drain()

			h.apply(shopRuleSet())
			if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpSYN)); got != retPass {
				t.Fatalf("new SYN on the tuple once the rule is back: %d", got)
			}
			e := h.ctEntry(4, web4, cli4, 1, 443, 41600, protoTCP)
			if e.Packets != [2]uint64{1, 0} {
				t.Errorf("new connection on the tuple: entry counts %v, want [1 0] (nothing of the cut one)", e.Packets)
			}
		})
	}
}
