package alert_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// t0 is the flows' clock in every test; no test reads the wall clock.
var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// The workloads and webhooks every test policy has. bastion is a
// host-mode workload; 10.10.0.250 is a node address that is no workload
// (the host identity); 192.0.2.0/24 and 203.0.113.0/24 are unmanaged.
const baseYAML = `apiVersion: eastguard.dev/v1
kind: Workload
metadata:
  name: web-1
  labels: {role: web, env: prod}
spec:
  node: node-a
  interface: veth-web1
  addresses: [10.10.0.11, "fd00:10::11"]
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata:
  name: web-2
  labels: {role: web, env: staging}
spec:
  node: node-b
  interface: veth-web2
  addresses: [10.10.0.12]
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata:
  name: db-1
  labels: {role: db, env: prod}
spec:
  node: node-b
  interface: veth-db1
  addresses: [10.10.0.21]
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata:
  name: bastion
  labels: {role: bastion}
spec:
  node: node-c
  addresses: [10.10.0.2]
---
apiVersion: eastguard.dev/v1
kind: Webhook
metadata:
  name: security-team
spec:
  url: https://hooks.example.com/eastguard
  format: json
---
apiVersion: eastguard.dev/v1
kind: Webhook
metadata:
  name: am
spec:
  url: http://alertmanager.example.com:9093/api/v2/alerts
  format: alertmanager
`

// Test addresses.
const (
	web1    = "10.10.0.11"
	web1v6  = "fd00:10::11"
	web2    = "10.10.0.12"
	db1     = "10.10.0.21"
	bastion = "10.10.0.2"
	hostIP  = "10.10.0.250" // the node's own address: identity host
	admin   = "192.0.2.10"  // unmanaged, in 192.0.2.0/24 but not in .128/25
	guest   = "192.0.2.200" // unmanaged, in 192.0.2.128/25
	outside = "203.0.113.5" // unmanaged
)

// What an agent puts in a record for each address: workload and identity.
var known = map[string]struct {
	workload string
	identity ruleset.Identity
}{
	web1: {"web-1", 300}, web1v6: {"web-1", 300}, web2: {"web-2", 301},
	db1: {"db-1", 302}, bastion: {"bastion", 303}, hostIP: {"", ruleset.IdentityHost},
}

// alertRule is an AlertRule document; spec is its spec, block style, not
// indented.
func alertRule(name, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "---\napiVersion: eastguard.dev/v1\nkind: AlertRule\nmetadata:\n  name: %s\nspec:\n", name)
	for _, line := range strings.Split(strings.TrimSpace(spec), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// loadSet parses and validates the base resources plus docs, as the
// controller does with an operator's files.
func loadSet(t testing.TB, docs string) *policy.Set {
	t.Helper()
	set, diags := policy.ParseAndValidate("test.yaml", []byte(baseYAML+docs))
	if diags.HasErrors() || set == nil {
		t.Fatalf("policy does not load:\n%v", diags)
	}
	return set
}

type flowOpt func(*flowrecord.Record)

// flow is a connection attempt from src to dst's port dport: TCP, denied
// by default-deny, reported by the destination's node at t0, source port
// 40000, with the workload names and identities an agent gives.
func flow(src, dst string, dport uint16, opts ...flowOpt) flowrecord.Record {
	r := flowrecord.Record{
		Time: t0, Node: "node-b", Direction: ruleset.Ingress, Protocol: "TCP",
		SrcAddr: netip.MustParseAddr(src), SrcPort: 40000, SrcIdentity: ruleset.IdentityWorld,
		DstAddr: netip.MustParseAddr(dst), DstPort: dport, DstIdentity: ruleset.IdentityWorld,
		Verdict: ruleset.VerdictDenied, Rule: "default-deny", Packets: 1, Bytes: 60,
		FirstSeen: t0, LastSeen: t0,
	}
	if k, ok := known[src]; ok {
		r.SrcWorkload, r.SrcIdentity = k.workload, k.identity
	}
	if k, ok := known[dst]; ok {
		r.DstWorkload, r.DstIdentity = k.workload, k.identity
	}
	for _, o := range opts {
		o(&r)
	}
	return r
}

func proto(p string) flowOpt { return func(r *flowrecord.Record) { r.Protocol = p } }
func verdict(v ruleset.Verdict) flowOpt {
	return func(r *flowrecord.Record) {
		r.Verdict = v
		if v == ruleset.VerdictAllowed {
			r.Rule = "shop/allow"
		}
	}
}
func sport(p uint16) flowOpt { return func(r *flowrecord.Record) { r.SrcPort = p } }

// seen sets the record's times: first seen at first, last seen at last.
func seen(first, last time.Time) flowOpt {
	return func(r *flowrecord.Record) { r.Time, r.FirstSeen, r.LastSeen = first, first, last }
}

// egressReport makes the record the source node's report of the
// connection: another node, the other direction, a clock 300ms off.
func egressReport(r *flowrecord.Record) {
	r.Node, r.Direction = "node-a", ruleset.Egress
	r.Time, r.FirstSeen, r.LastSeen = r.Time.Add(300*time.Millisecond), r.FirstSeen.Add(300*time.Millisecond), r.LastSeen.Add(300*time.Millisecond)
}

// noWorkloadNames drops the workload names, as for a record whose agent
// did not know them: the engine finds them from the addresses.
func noWorkloadNames(r *flowrecord.Record) { r.SrcWorkload, r.DstWorkload = "", "" }

// harness is an engine over a real SQLite event store.
type harness struct {
	t *testing.T
	s *sqlite.SQLite
	e *alert.Engine
}

func newHarness(t *testing.T, docs string, b alert.Builtin, refresh time.Duration) *harness {
	t.Helper()
	s, err := sqlite.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &harness{t: t, s: s, e: alert.NewEngine(alert.NewPolicy(loadSet(t, docs), b), refresh, alert.Limits{})}
}

// observe runs Observe in a transaction and commits it, as ingestion does.
func (h *harness) observe(now time.Time, recs ...flowrecord.Record) alert.Pending {
	h.t.Helper()
	var p alert.Pending
	err := h.s.EventTx(context.Background(), func(tx store.EventTx) error {
		if err := tx.InsertFlows(recs); err != nil {
			return err
		}
		return h.e.Observe(tx, recs, now, &p)
	})
	if err != nil {
		h.t.Fatalf("observe: %v", err)
	}
	h.e.Commit(&p)
	return p
}

func (h *harness) sweep(now time.Time) alert.Pending {
	h.t.Helper()
	var p alert.Pending
	if err := h.s.EventTx(context.Background(), func(tx store.EventTx) error { return h.e.Sweep(tx, now, &p) }); err != nil {
		h.t.Fatalf("sweep: %v", err)
	}
	h.e.Commit(&p)
	return p
}

// alerts returns every stored alert, oldest first.
func (h *harness) alerts() []store.Alert {
	h.t.Helper()
	as, err := h.s.Alerts(context.Background(), store.AlertQuery{})
	if err != nil {
		h.t.Fatal(err)
	}
	slices.SortFunc(as, func(a, b store.Alert) int { return int(a.ID - b.ID) })
	return as
}

// only returns the one stored alert.
func (h *harness) only() store.Alert {
	h.t.Helper()
	as := h.alerts()
	if len(as) != 1 {
		h.t.Fatalf("%d alerts, want 1: %+v", len(as), as)
	}
	return as[0]
}

// deliveries returns every queued delivery, oldest first, as
// "alert-id webhook event" lines. IDs are AUTOINCREMENT and tests never
// prune, so walking them from 1 finds them all.
func (h *harness) deliveries() []string {
	h.t.Helper()
	var out []string
	for id := int64(1); ; id++ {
		d, err := h.s.Delivery(context.Background(), id)
		if errors.Is(err, store.ErrNotFound) {
			return out
		}
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %s %s", d.AlertID, d.Webhook, d.Event))
	}
}

func (h *harness) delivery(id int64) store.Delivery {
	h.t.Helper()
	d, err := h.s.Delivery(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

func (h *harness) wantDeliveries(step string, want ...string) {
	h.t.Helper()
	if got := h.deliveries(); !slices.Equal(got, want) {
		h.t.Errorf("%s: deliveries\n  %q\nwant\n  %q", step, got, want)
	}
}

// sshRule alerts on denied SSH to any managed workload, window 5m.
var sshRule = alertRule("unexpected-ssh", `
severity: critical
match:
  protocol: TCP
  ports: [22]
  to: [{selector: {}}]
window: 5m
notify: [security-team]
`)

func TestAlertFields(t *testing.T) {
	h := newHarness(t, sshRule, alert.Builtin{}, 0)
	now := t0.Add(2 * time.Second)
	p := h.observe(now, flow(outside, db1, 22, sport(51000)))
	if p.Raised["unexpected-ssh"] != 1 || p.Deliveries != 1 {
		t.Errorf("pending: %+v", p)
	}
	a := h.only()
	want := store.Alert{
		ID: a.ID, Rule: "unexpected-ssh", Severity: "critical", Key: a.Key, State: store.AlertOpen, Count: 1,
		Source: outside, Destination: "db-1", SrcWorkload: "", DstWorkload: "db-1",
		SrcAddr: netip.MustParseAddr(outside), DstAddr: netip.MustParseAddr(db1),
		DstLabels: map[string]string{"role": "db", "env": "prod"}, Port: 22, Ports: []uint16{22}, PortCount: 1, Protocol: "TCP",
		Verdict: "denied", DecidingRule: "default-deny", Node: "node-b",
		FirstSeen: t0, LastSeen: t0, Window: 5 * time.Minute, Notify: []string{"security-team"}, Created: now, RefreshedAt: now,
	}
	if fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", want) {
		t.Errorf("alert\n  %+v\nwant\n  %+v", a, want)
	}
	for _, part := range []string{"unexpected-ssh", outside, "db-1", "TCP"} {
		if !strings.Contains(a.Key, part) {
			t.Errorf("key %q does not name %s", a.Key, part)
		}
	}
	// Not the port: every port of a scan is one alert.
	if strings.Contains(a.Key, "22") {
		t.Errorf("key %q names the port", a.Key)
	}
	h.wantDeliveries("first flow", fmt.Sprintf("%d security-team firing", a.ID))
	if d := h.delivery(1); d.State != store.DeliveryPending || !d.NextAttempt.Equal(now) || !d.Created.Equal(now) {
		t.Errorf("firing delivery: %+v", d)
	}
}

func TestWindowDeduplication(t *testing.T) {
	h := newHarness(t, sshRule, alert.Builtin{}, 0)
	steps := []struct {
		name string
		recs []flowrecord.Record
		// What the first alert must be after it, and how many alerts and
		// deliveries there must be.
		count      uint64
		alerts     int
		lastSeen   time.Time
		deliveries int
	}{
		{"first attempt", []flowrecord.Record{flow(outside, db1, 22, sport(40001))}, 1, 1, t0, 1},
		{"second attempt inside the window: counted, no new delivery",
			[]flowrecord.Record{flow(outside, db1, 22, sport(40002), seen(t0.Add(time.Minute), t0.Add(time.Minute)))},
			2, 1, t0.Add(time.Minute), 1},
		{"update of the first connection: not counted, last seen moves",
			[]flowrecord.Record{flow(outside, db1, 22, sport(40001), seen(t0, t0.Add(2*time.Minute)))},
			2, 1, t0.Add(2 * time.Minute), 1},
		{"the source node's report of the second connection: not counted",
			[]flowrecord.Record{flow(outside, db1, 22, sport(40002), seen(t0.Add(time.Minute), t0.Add(time.Minute)), egressReport)},
			2, 1, t0.Add(2 * time.Minute), 1},
		{"both reports of a third connection in one batch: counted once",
			[]flowrecord.Record{
				flow(outside, db1, 22, sport(40003), seen(t0.Add(3*time.Minute), t0.Add(3*time.Minute))),
				flow(outside, db1, 22, sport(40003), seen(t0.Add(3*time.Minute), t0.Add(3*time.Minute)), egressReport),
			}, 3, 1, t0.Add(3*time.Minute + 300*time.Millisecond), 1},
		{"another destination is another alert",
			[]flowrecord.Record{flow(outside, web2, 22, sport(40004), seen(t0.Add(3*time.Minute), t0.Add(3*time.Minute)))},
			3, 2, t0.Add(3*time.Minute + 300*time.Millisecond), 2},
		{"a repeat exactly one window after last seen is still the same alert",
			[]flowrecord.Record{flow(outside, db1, 22, sport(40005), seen(t0.Add(8*time.Minute+300*time.Millisecond), t0.Add(8*time.Minute+300*time.Millisecond)))},
			4, 2, t0.Add(8*time.Minute + 300*time.Millisecond), 2},
	}
	now := t0.Add(time.Second)
	for _, s := range steps {
		h.observe(now, s.recs...)
		as := h.alerts()
		if len(as) != s.alerts {
			t.Fatalf("%s: %d alerts, want %d", s.name, len(as), s.alerts)
		}
		a := as[0]
		if a.Count != s.count || a.State != store.AlertOpen || !a.LastSeen.Equal(s.lastSeen) || !a.FirstSeen.Equal(t0) {
			t.Errorf("%s: count %d, state %s, first %v, last %v; want count %d, last %v",
				s.name, a.Count, a.State, a.FirstSeen, a.LastSeen, s.count, s.lastSeen)
		}
		if n := len(h.deliveries()); n != s.deliveries {
			t.Errorf("%s: %d deliveries, want %d", s.name, n, s.deliveries)
		}
	}
	as := h.alerts()
	if len(as) != 2 || as[1].Destination != "web-2" || as[1].Count != 1 {
		t.Fatalf("alerts: %+v", as)
	}
	first := as[0]

	// A repeat more than a window after the last one ends the run: the
	// old alert is resolved as of the end of its window and a new one
	// fires.
	later := first.LastSeen.Add(5*time.Minute + time.Second)
	now = later.Add(time.Second)
	p := h.observe(now, flow(outside, db1, 22, sport(40001), seen(later, later)))
	if p.Raised["unexpected-ssh"] != 1 || p.Deliveries != 2 {
		t.Errorf("repeat after the window: pending %+v", p)
	}
	as = h.alerts()
	if len(as) != 3 {
		t.Fatalf("after the window: %d alerts, want 3", len(as))
	}
	old, fresh := as[0], as[2]
	if old.State != store.AlertResolved || old.ResolvedBy != "window" || !old.ResolvedAt.Equal(first.LastSeen.Add(5*time.Minute)) || old.Count != 4 {
		t.Errorf("old alert: state %s by %q at %v, count %d", old.State, old.ResolvedBy, old.ResolvedAt, old.Count)
	}
	if fresh.State != store.AlertOpen || fresh.Count != 1 || fresh.Key != old.Key || !fresh.FirstSeen.Equal(later) {
		t.Errorf("new alert: %+v", fresh)
	}
	h.wantDeliveries("repeat after the window",
		fmt.Sprintf("%d security-team firing", old.ID),
		fmt.Sprintf("%d security-team firing", as[1].ID),
		fmt.Sprintf("%d security-team resolved", old.ID),
		fmt.Sprintf("%d security-team firing", fresh.ID))
	// The resolution is dated by the flows, its delivery by the
	// controller's clock: retries and giving up count from when it was
	// queued, however old the flows that ended the run.
	if d := h.delivery(3); d.Event != store.EventResolved || !d.Created.Equal(now) || !d.NextAttempt.Equal(now) {
		t.Errorf("resolved delivery queued at %v, due %v; want both %v", d.Created, d.NextAttempt, now)
	}

	// The new alert remembers its own connections, not the old one's:
	// source port 40005 counted in the old run is new here, 40001 is not.
	h.observe(now, flow(outside, db1, 22, sport(40005), seen(later, later)), flow(outside, db1, 22, sport(40001), seen(later, later)))
	if a := h.alerts()[2]; a.Count != 2 {
		t.Errorf("new alert count %d, want 2", a.Count)
	}
}

func TestSweep(t *testing.T) {
	rule := alertRule("unexpected-ssh", `
severity: critical
match: {protocol: TCP, ports: [22]}
window: 5m
notify: [security-team, am]
`)
	h := newHarness(t, rule, alert.Builtin{}, time.Minute)
	now := t0.Add(time.Second)
	h.observe(now, flow(outside, db1, 22))
	// A second alert, seen later: still live when the first one ends.
	h.observe(now.Add(3*time.Minute), flow(outside, web2, 22, seen(t0.Add(3*time.Minute), t0.Add(3*time.Minute))))
	h.wantDeliveries("observed", "1 security-team firing", "1 am firing", "2 security-team firing", "2 am firing")

	steps := []struct {
		at   time.Duration // after now
		want []string      // deliveries the sweep queues
	}{
		{30 * time.Second, nil},
		// Refresh goes to the Alertmanager webhook only, once per interval.
		{time.Minute, []string{"1 am refresh"}},
		{time.Minute, nil},
		{90 * time.Second, nil},
		{2 * time.Minute, []string{"1 am refresh"}},
		// Alert 2 fired at now+3m; alert 1 was refreshed at now+2m.
		{3*time.Minute + 59*time.Second, []string{"1 am refresh"}},
		{4 * time.Minute, []string{"2 am refresh"}},
		// Alert 1 was last seen at t0 = now-1s: its window has passed
		// (strictly) at now+5m-1s+1ns.
		{5*time.Minute - time.Second + time.Nanosecond, []string{"1 security-team resolved", "1 am resolved"}},
		{5*time.Minute + time.Second, []string{"2 am refresh"}},
		{6 * time.Minute, nil},
	}
	before := h.deliveries()
	for _, s := range steps {
		at := now.Add(s.at)
		p := h.sweep(at)
		got := h.deliveries()[len(before):]
		if !slices.Equal(got, s.want) || p.Deliveries != len(s.want) {
			t.Errorf("sweep at now+%v: queued %q (pending %d), want %q", s.at, got, p.Deliveries, s.want)
		}
		before = h.deliveries()
	}
	as := h.alerts()
	if as[0].State != store.AlertResolved || as[0].ResolvedBy != "window" || as[0].Count != 1 {
		t.Errorf("swept alert: %+v", as[0])
	}
	if as[1].State != store.AlertOpen {
		t.Errorf("alert seen inside its window was resolved: %+v", as[1])
	}
	if last := h.delivery(int64(len(before))); last.Event != store.EventRefresh || !last.Created.Equal(now.Add(5*time.Minute+time.Second)) {
		t.Errorf("refresh delivery: %+v", last)
	}
	// The second alert goes once its own window has passed.
	h.sweep(t0.Add(8*time.Minute + time.Second))
	if a := h.alerts()[1]; a.State != store.AlertResolved || a.ResolvedBy != "window" || !a.ResolvedAt.Equal(t0.Add(8*time.Minute+time.Second)) {
		t.Errorf("second alert: %+v", a)
	}
	// A swept alert is not live: a new flow opens a new alert.
	p := h.observe(t0.Add(10*time.Minute), flow(outside, db1, 22, seen(t0.Add(10*time.Minute), t0.Add(10*time.Minute))))
	if p.Raised["unexpected-ssh"] != 1 || len(h.alerts()) != 3 {
		t.Errorf("flow after the sweep: pending %+v, %d alerts", p, len(h.alerts()))
	}
}

func TestMonitorMode(t *testing.T) {
	rules := sshRule + alertRule("enforced-only", `
severity: warning
match:
  verdicts: [denied]
`)
	h := newHarness(t, rules, alert.Builtin{}, 0)
	would := flow(outside, db1, 22, verdict(ruleset.VerdictWouldDeny), func(r *flowrecord.Record) { r.Rule = "shop/no-ssh" })
	p := h.observe(t0, would)
	if !maps.Equal(p.Raised, map[string]int{"unexpected-ssh": 1}) {
		t.Errorf("would-deny raised %v, want unexpected-ssh only", p.Raised)
	}
	a := h.only()
	if a.Verdict != "would-deny" || a.DecidingRule != "shop/no-ssh" || a.Rule != "unexpected-ssh" {
		t.Errorf("monitor-mode alert: %+v", a)
	}
	// The same pair, now enforced: one alert for each rule, and the live
	// one takes the last flow's verdict.
	p = h.observe(t0, flow(outside, db1, 22, sport(40001), seen(t0.Add(time.Second), t0.Add(time.Second))))
	if !maps.Equal(p.Raised, map[string]int{"enforced-only": 1}) {
		t.Errorf("denied raised %v, want enforced-only", p.Raised)
	}
	as := h.alerts()
	if len(as) != 2 || as[0].Verdict != "denied" || as[0].Count != 2 || as[1].Rule != "enforced-only" || as[1].Verdict != "denied" {
		t.Errorf("alerts: %+v", as)
	}
}

func TestAcknowledgedAlertKeepsCounting(t *testing.T) {
	h := newHarness(t, sshRule, alert.Builtin{}, 0)
	h.observe(t0, flow(outside, db1, 22, sport(40001)))
	ackAt := t0.Add(30 * time.Second)
	err := h.s.EventTx(context.Background(), func(tx store.EventTx) error {
		a, err := tx.Alert(h.only().ID)
		if err != nil {
			return err
		}
		a.State, a.AcknowledgedAt = store.AlertAcknowledged, ackAt
		return tx.UpdateAlert(&a)
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		at := t0.Add(time.Duration(i+1) * time.Minute)
		p := h.observe(at, flow(outside, db1, 22, sport(uint16(40002+i)), seen(at, at)))
		if len(p.Raised) != 0 || p.Deliveries != 0 {
			t.Errorf("repeat %d re-fired: %+v", i, p)
		}
	}
	a := h.only()
	if a.State != store.AlertAcknowledged || a.Count != 4 || !a.AcknowledgedAt.Equal(ackAt) || !a.LastSeen.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("acknowledged alert: state %s, count %d, acked %v, last %v", a.State, a.Count, a.AcknowledgedAt, a.LastSeen)
	}
	h.wantDeliveries("acknowledged", fmt.Sprintf("%d security-team firing", a.ID))
	// It is still live: the sweep ends it after its window.
	h.sweep(t0.Add(8*time.Minute + time.Second))
	if a := h.only(); a.State != store.AlertResolved || a.ResolvedBy != "window" {
		t.Errorf("swept acknowledged alert: %+v", a)
	}
}

var errBoom = errors.New("boom")

func TestFailedTransactionIsNotRemembered(t *testing.T) {
	h := newHarness(t, sshRule, alert.Builtin{}, 0)
	ctx := context.Background()
	// failing observes recs in a transaction that then fails, and
	// returns the live alerts as the transaction saw them.
	failing := func(recs ...flowrecord.Record) []store.Alert {
		t.Helper()
		var p alert.Pending
		var inside []store.Alert
		err := h.s.EventTx(ctx, func(tx store.EventTx) error {
			if err := h.e.Observe(tx, recs, t0, &p); err != nil {
				return err
			}
			var err error
			if inside, err = tx.LiveAlerts(); err != nil {
				return err
			}
			return errBoom // e.g. the spool position did not save
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("failing tx: %v", err)
		}
		// Not Committed: the transaction did not happen.
		return inside
	}

	// A new alert in a failed transaction leaves nothing behind.
	if in := failing(flow(outside, db1, 22, sport(40001))); len(in) != 1 || in[0].Count != 1 {
		t.Fatalf("inside the failing tx: %+v", in)
	}
	if as := h.alerts(); len(as) != 0 {
		t.Fatalf("alerts after a failed tx: %+v", as)
	}
	h.wantDeliveries("failed tx")
	h.observe(t0, flow(outside, db1, 22, sport(40001)))
	a := h.only()
	if a.Count != 1 {
		t.Errorf("retried batch: count %d, want 1", a.Count)
	}
	h.wantDeliveries("retried", fmt.Sprintf("%d security-team firing", a.ID))

	// One more count in a failed transaction is not kept, and the retry
	// counts the connection once: the engine did not take it for seen.
	if in := failing(flow(outside, db1, 22, sport(40002))); len(in) != 1 || in[0].Count != 2 {
		t.Fatalf("inside the failing tx: %+v", in)
	}
	if a := h.only(); a.Count != 1 {
		t.Errorf("count after a failed tx: %d, want 1", a.Count)
	}
	h.observe(t0, flow(outside, db1, 22, sport(40002)))
	h.observe(t0, flow(outside, db1, 22, sport(40002)))
	if a := h.only(); a.Count != 2 {
		t.Errorf("count after the retry and a duplicate: %d, want 2", a.Count)
	}
	h.wantDeliveries("retried count", fmt.Sprintf("%d security-team firing", a.ID))

	// A failed window rollover leaves the old alert live.
	later := t0.Add(10 * time.Minute)
	if in := failing(flow(outside, db1, 22, sport(40003), seen(later, later))); len(in) != 1 || in[0].ID == a.ID {
		t.Fatalf("inside the failing rollover: %+v", in)
	}
	if a := h.only(); a.State != store.AlertOpen {
		t.Errorf("alert after a failed rollover: %+v", a)
	}
	h.observe(later, flow(outside, db1, 22, sport(40003), seen(later, later)))
	if as := h.alerts(); len(as) != 2 || as[0].State != store.AlertResolved || as[1].Count != 1 {
		t.Errorf("after the retried rollover: %+v", as)
	}
}

func TestResolveByAPI(t *testing.T) {
	rule := alertRule("unexpected-ssh", `
severity: critical
match: {ports: [22]}
notify: [security-team, am]
`)
	h := newHarness(t, rule, alert.Builtin{}, 0)
	ctx := context.Background()
	h.observe(t0, flow(outside, db1, 22, sport(40001)))
	id := h.only().ID
	resolve := func(id int64, at time.Time) (store.Alert, alert.Pending, error) {
		var p alert.Pending
		var a store.Alert
		err := h.s.EventTx(ctx, func(tx store.EventTx) error {
			var err error
			a, err = h.e.Resolve(tx, id, at, &p)
			return err
		})
		if err == nil {
			h.e.Commit(&p)
		}
		return a, p, err
	}
	at := t0.Add(time.Minute)
	a, p, err := resolve(id, at)
	if err != nil || a.State != store.AlertResolved || a.ResolvedBy != "api" || !a.ResolvedAt.Equal(at) || p.Deliveries != 2 {
		t.Errorf("Resolve: %+v, %+v, %v", a, p, err)
	}
	if got := h.only(); got.State != store.AlertResolved || got.ResolvedBy != "api" || !got.ResolvedAt.Equal(at) {
		t.Errorf("stored: %+v", got)
	}
	want := []string{"1 security-team firing", "1 am firing", "1 security-team resolved", "1 am resolved"}
	h.wantDeliveries("resolved", want...)

	// Again: nothing changes.
	a, p, err = resolve(id, at.Add(time.Minute))
	if err != nil || a.State != store.AlertResolved || !a.ResolvedAt.Equal(at) || p.Deliveries != 0 {
		t.Errorf("second Resolve: %+v, %+v, %v", a, p, err)
	}
	if got := h.only(); !got.ResolvedAt.Equal(at) || got.ResolvedBy != "api" {
		t.Errorf("stored after the second Resolve: %+v", got)
	}
	h.wantDeliveries("resolved twice", want...)
	// Nor does a sweep touch it.
	h.sweep(t0.Add(time.Hour))
	h.wantDeliveries("swept", want...)

	if _, _, err := resolve(99, at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Resolve of an unknown alert: %v", err)
	}

	// The pair fires again, as a new alert that counts its connections
	// afresh (the same source port too).
	p = h.observe(at, flow(outside, db1, 22, sport(40001), seen(at, at)))
	if as := h.alerts(); p.Raised["unexpected-ssh"] != 1 || len(as) != 2 || as[1].State != store.AlertOpen || as[1].Count != 1 {
		t.Errorf("after an API resolve: %+v, %+v", p, as)
	}
}

// scan returns one denied TCP attempt from src to dst on each port of
// ports, in batches of at most n records (as an agent sends them), each
// from its own source port.
func scan(src, dst string, ports []uint16, n int) [][]flowrecord.Record {
	var out [][]flowrecord.Record
	for i := 0; i < len(ports); i += n {
		var b []flowrecord.Record
		for _, p := range ports[i:min(i+n, len(ports))] {
			b = append(b, flow(src, dst, p, sport(uint16(30000+len(b)+i))))
		}
		out = append(out, b)
	}
	return out
}

func portRange(first, n int) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = uint16(first + i)
	}
	return out
}

// TestPortScanIsOneAlert: a 2,000-port scan of one destination from one
// source with --alert-on-denied is one alert, with one delivery per
// webhook, that says how many ports were tried and which (a sample).
// Before, the dedup key held the port: 2,000 alerts and 2,000 deliveries.
func TestPortScanIsOneAlert(t *testing.T) {
	h := newHarness(t, "", alert.Builtin{Denied: true, Notify: []string{"security-team"}}, 0)
	now := t0.Add(time.Second)
	for _, b := range scan(outside, db1, portRange(1, 2000), 250) {
		h.observe(now, b...)
	}
	as := h.alerts()
	if len(as) > 3 {
		t.Fatalf("a 2,000-port scan raised %d alerts, want at most a few", len(as))
	}
	if n := len(h.deliveries()); n > 3 {
		t.Fatalf("a 2,000-port scan queued %d deliveries, want at most a few", n)
	}
	a := h.only()
	if a.Count != 2000 || a.Port != 1 || a.PortCount != 2000 {
		t.Errorf("alert count %d, port %d, port count %d; want 2000 attempts on 2000 ports, first port 1", a.Count, a.Port, a.PortCount)
	}
	if len(a.Ports) != alert.MaxPortSample || a.Ports[0] != 1 || a.Ports[alert.MaxPortSample-1] != alert.MaxPortSample {
		t.Errorf("port sample %v, want the first %d ports seen", a.Ports, alert.MaxPortSample)
	}
	// Ports seen again are not counted again.
	for _, b := range scan(outside, db1, portRange(1990, 20), 20) {
		h.observe(now, b...)
	}
	if a := h.only(); a.PortCount != 2009 {
		t.Errorf("port count after a re-scan of 1990-2009: %d, want 2009", a.PortCount)
	}
}

func newLimitedHarness(t *testing.T, docs string, b alert.Builtin, l alert.Limits) *harness {
	t.Helper()
	h := newHarness(t, docs, b, 0)
	h.e = alert.NewEngine(alert.NewPolicy(loadSet(t, docs), b), 0, l)
	return h
}

// TestLiveAlertCapFoldsIntoSummary: past a rule's cap of live alerts, new
// runs (here a sweep of many sources) are folded into one summary alert
// that says how many runs it stands for; runs already live keep
// counting on their own alert.
func TestLiveAlertCapFoldsIntoSummary(t *testing.T) {
	h := newLimitedHarness(t, "", alert.Builtin{Denied: true, Notify: []string{"security-team"}}, alert.Limits{MaxLivePerRule: 3})
	var recs []flowrecord.Record
	for i := range 10 {
		recs = append(recs, flow(fmt.Sprintf("203.0.113.%d", 10+i), db1, 22))
	}
	p := h.observe(t0, recs...)
	if p.Raised[alert.BuiltinDeniedRule] != 4 || p.Folded[alert.BuiltinDeniedRule] != 7 || p.Deliveries != 4 {
		t.Errorf("pending %+v, want 3 alerts and a summary of 7 runs, 4 deliveries", p)
	}
	// Again, plus a new port from a source that has its own alert and
	// one more folded source: the summary counts each run once.
	p = h.observe(t0.Add(time.Second), append(recs[:10:10],
		flow("203.0.113.10", db1, 23, sport(41000)), flow("203.0.113.99", db1, 22))...)
	if len(p.Raised) != 0 || p.Folded[alert.BuiltinDeniedRule] != 1 || p.Deliveries != 0 {
		t.Errorf("second batch: pending %+v, want one more folded run and nothing raised", p)
	}
	as := h.alerts()
	if len(as) != 4 {
		t.Fatalf("%d alerts, want 3 and a summary: %+v", len(as), as)
	}
	s := as[3]
	if s.Source != alert.SummaryEnd || s.Destination != alert.SummaryEnd || s.Folded != 8 || s.Count != 8 || s.State != store.AlertOpen {
		t.Errorf("summary alert: %+v", s)
	}
	if a := as[0]; a.Source != "203.0.113.10" || a.Folded != 0 || a.Count != 2 || a.PortCount != 2 {
		t.Errorf("first alert: %+v", a)
	}
	// Once the live alerts end, the rule has room again.
	h.sweep(t0.Add(time.Hour))
	p = h.observe(t0.Add(time.Hour), flow("203.0.113.50", db1, 22, seen(t0.Add(time.Hour), t0.Add(time.Hour))))
	if p.Raised[alert.BuiltinDeniedRule] != 1 || len(p.Folded) != 0 {
		t.Errorf("after the sweep: pending %+v, want an alert of its own", p)
	}
}

// countingTx counts the alerts a sweep reads, and fails the test if it
// reads every live alert.
type countingTx struct {
	store.EventTx
	t    *testing.T
	read int
}

func (c *countingTx) LiveAlerts() ([]store.Alert, error) {
	c.t.Error("the sweep read every live alert")
	return c.EventTx.LiveAlerts()
}

func (c *countingTx) ExpiredAlerts(now time.Time, limit int) ([]store.Alert, error) {
	as, err := c.EventTx.ExpiredAlerts(now, limit)
	c.read += len(as)
	return as, err
}

func (c *countingTx) AlertsToRefresh(before time.Time, limit int) ([]store.Alert, error) {
	as, err := c.EventTx.AlertsToRefresh(before, limit)
	c.read += len(as)
	return as, err
}

// TestSweepReadsOnlyDueAlerts: with hundreds of live alerts, a sweep
// every 2 s reads none of them until one has work (expiry, or a re-post
// to Alertmanager once a refresh interval).
func TestSweepReadsOnlyDueAlerts(t *testing.T) {
	rule := alertRule("any-denied", `
severity: warning
window: 5m
notify: [security-team, am]
`)
	h := newLimitedHarness(t, rule, alert.Builtin{}, alert.Limits{MaxLivePerRule: 1000})
	var recs []flowrecord.Record
	for i := range 300 {
		recs = append(recs, flow(fmt.Sprintf("198.51.100.%d", i%250), db1, 22, proto([]string{"TCP", "UDP"}[i/250])))
	}
	h.observe(t0, recs...)
	if n := len(h.alerts()); n != 300 {
		t.Fatalf("%d alerts, want 300", n)
	}
	sweep := func(at time.Time) (read int, p alert.Pending) {
		t.Helper()
		err := h.s.EventTx(context.Background(), func(tx store.EventTx) error {
			c := &countingTx{EventTx: tx, t: t}
			err := h.e.Sweep(c, at, &p)
			read = c.read
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		h.e.Commit(&p)
		return read, p
	}
	for i := 1; i < 30; i++ {
		if read, _ := sweep(t0.Add(time.Duration(2*i) * time.Second)); read != 0 {
			t.Fatalf("sweep %d read %d alerts, want none", i, read)
		}
	}
	// A minute on, each is re-posted once to the Alertmanager webhook.
	if read, p := sweep(t0.Add(time.Minute)); read != 300 || p.Deliveries != 300 {
		t.Errorf("refresh sweep read %d alerts and queued %d deliveries, want 300 and 300", read, p.Deliveries)
	}
	if read, _ := sweep(t0.Add(time.Minute + 2*time.Second)); read != 0 {
		t.Errorf("sweep after the refresh read %d alerts", read)
	}
	// After the window, each is read once more, to be resolved.
	if read, p := sweep(t0.Add(5*time.Minute + time.Second)); read != 300 || p.Deliveries != 600 {
		t.Errorf("expiry sweep read %d alerts and queued %d deliveries, want 300 and 600", read, p.Deliveries)
	}
}

// TestSizeBudgets: resolved alerts and finished deliveries beyond their
// budget are deleted, oldest finished first; pending deliveries, and the
// resolved alerts they belong to, are kept.
func TestSizeBudgets(t *testing.T) {
	h := newLimitedHarness(t, "", alert.Builtin{Denied: true, Notify: []string{"security-team"}},
		alert.Limits{MaxLivePerRule: 100, MaxResolved: 5, MaxFinishedDeliveries: 4})
	ctx := context.Background()
	for i := range 20 {
		at := t0.Add(time.Duration(i) * time.Minute)
		h.observe(at, flow(fmt.Sprintf("203.0.113.%d", i), db1, 22, seen(at, at)))
	}
	// Alerts 1-20 resolve: deliveries 1-20 fired them, 21-40 resolve them.
	end := t0.Add(2 * time.Hour)
	if p := h.sweep(end); p.Deliveries != 20 || p.TrimmedAlerts+p.TrimmedDeliveries != 0 {
		t.Fatalf("first sweep: %+v, want 20 resolved deliveries queued and nothing to trim", p)
	}
	// Every delivery delivered but alert 1's and alert 20's resolved ones.
	for id := int64(1); id <= 40; id++ {
		if id == 21 || id == 40 {
			continue
		}
		d := h.delivery(id)
		d.State, d.Finished, d.Attempts = store.DeliveryDelivered, end.Add(time.Duration(id)*time.Second), 1
		if err := h.s.UpdateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	p := h.sweep(end.Add(time.Minute))
	if p.TrimmedAlerts != 14 || p.TrimmedDeliveries != 34 {
		t.Errorf("trimmed %d alerts and %d deliveries, want 14 (alert 1 waits for a delivery) and 34",
			p.TrimmedAlerts, p.TrimmedDeliveries)
	}
	var ids []int64
	for _, a := range h.alerts() {
		ids = append(ids, a.ID)
	}
	if !slices.Equal(ids, []int64{1, 16, 17, 18, 19, 20}) {
		t.Errorf("alerts kept %v, want 1 (a delivery pending) and the 5 newest", ids)
	}
	if _, n, err := h.s.NextDeliveryAt(ctx); err != nil || n != 2 {
		t.Errorf("pending deliveries %d (%v), want 2", n, err)
	}
}

// BenchmarkFullPortScan observes a scan of every port (65,535 attempts in
// batches of 1,000, as ingestion groups them) with --alert-on-denied:
// one alert, one delivery.
func BenchmarkFullPortScan(b *testing.B) {
	for range b.N {
		b.StopTimer()
		s, err := sqlite.Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		e := alert.NewEngine(alert.NewPolicy(loadSet(b, ""), alert.Builtin{Denied: true, Notify: []string{"security-team"}}), 0, alert.Limits{})
		batches := scan(outside, db1, portRange(1, 65535), 1000)
		b.StartTimer()
		for _, recs := range batches {
			var p alert.Pending
			if err := s.EventTx(context.Background(), func(tx store.EventTx) error { return e.Observe(tx, recs, t0, &p) }); err != nil {
				b.Fatal(err)
			}
			e.Commit(&p)
		}
		b.StopTimer()
		as, err := s.Alerts(context.Background(), store.AlertQuery{})
		if err != nil || len(as) != 1 || as[0].PortCount != 65535 {
			b.Fatalf("alerts %d (%v)", len(as), err)
		}
		s.Close()
	}
}

// TestUpdateRecordsDoNotCount: the volume records of a connection (active
// while it lasts, closed when it ends) are not new attempts: they neither
// count on its alert nor raise a new one, also after the alert's window,
// when a long connection's update would otherwise open a second alert.
func TestUpdateRecordsDoNotCount(t *testing.T) {
	h := newHarness(t, sshRule, alert.Builtin{}, 0)
	now := t0.Add(time.Second)
	h.observe(now, flow(outside, db1, 22, sport(41000)))
	state := func(s flowrecord.State, at time.Time) flowOpt {
		return func(r *flowrecord.Record) {
			r.State, r.Time, r.LastSeen = s, at, at
			r.Packets, r.PacketsSent, r.PacketsReceived = 3000, 2000, 1000
			r.Bytes, r.BytesSent, r.BytesReceived = 3_000_000, 2_900_000, 100_000
		}
	}
	h.observe(now, flow(outside, db1, 22, sport(41000), state(flowrecord.StateActive, t0.Add(30*time.Second))))
	a := h.only()
	if a.Count != 1 || !a.LastSeen.Equal(t0) {
		t.Errorf("after an active update: count %d, last seen %v; want 1, %v", a.Count, a.LastSeen, t0)
	}
	// Ten minutes on (two windows): the connection is still up, then
	// ends; another connection whose new record was lost closes too.
	late := t0.Add(10 * time.Minute)
	p := h.observe(late.Add(time.Second),
		flow(outside, db1, 22, sport(41000), state(flowrecord.StateActive, late)),
		flow(outside, db1, 22, sport(41000), state(flowrecord.StateClosed, late)),
		flow(outside, db1, 22, sport(41001), state(flowrecord.StateClosed, late)))
	if len(p.Raised) != 0 || p.Deliveries != 0 {
		t.Errorf("update records raised alerts: %+v", p)
	}
	if a := h.only(); a.Count != 1 {
		t.Errorf("count %d after updates, want 1", a.Count)
	}
	h.wantDeliveries("updates", fmt.Sprintf("%d security-team firing", a.ID))
}
