package storetest

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// testFlowEdgesExact: FlowEdges and FlowEdgesOf answer, for any range,
// what grouping the stored flows one by one gives (BruteFlowEdges), with
// however the store splits the range (a store may keep sums per time
// bucket and read only the ends from the flows): ranges that start and
// end mid-minute, on minute and ten-minute boundaries, within one
// minute, unbounded; after retention by age and by count; and with flows
// stored late, older than what retention deleted. A store that rolls up
// apart from the inserts is checked before, between and after its
// rollup steps, with retention before and after where they reached.
func testFlowEdgesExact(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	// An hour boundary, so that minutes and ten minutes fall on round
	// times; the flows spread over three hours around it.
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(17, 42))
	var n int
	batch := func(count int, from, span time.Duration) {
		t.Helper()
		recs := make([]flowrecord.Record, count)
		for i := range recs {
			at := base.Add(from + time.Duration(rng.Int64N(int64(span))))
			switch i % 13 {
			case 0: // on a minute boundary
				at = at.Truncate(time.Minute)
			case 1: // on a ten-minute boundary
				at = at.Truncate(10 * time.Minute)
			case 2: // just before one
				at = at.Truncate(time.Minute).Add(-time.Nanosecond)
			}
			recs[i] = edgeFlow(n, rng, at)
			n++
		}
		InsertFlows(t, s, recs)
	}
	for range 6 {
		batch(100, -90*time.Minute, 3*time.Hour)
	}
	// One busy minute: a batch all in it.
	batch(50, 7*time.Minute, time.Minute)
	ranges := func() [][2]time.Time {
		var rs [][2]time.Time
		for _, r := range [][2]time.Duration{
			{-time.Hour, 0},
			{-59*time.Minute - 30*time.Second, 30 * time.Second},
			{-61*time.Minute + 17*time.Millisecond, 13*time.Minute + 59*time.Second},
			{-10 * time.Minute, 10 * time.Minute},
			{-10*time.Minute - time.Nanosecond, 10*time.Minute + time.Nanosecond},
			{-9*time.Minute + time.Nanosecond, 9*time.Minute - time.Nanosecond},
			{7*time.Minute + 10*time.Second, 7*time.Minute + 50*time.Second},
			{7 * time.Minute, 8 * time.Minute},
			{-2 * time.Hour, 2 * time.Hour},
			{-3 * time.Hour, 0},
			{time.Minute, time.Minute},
			{5 * time.Minute, -5 * time.Minute},
		} {
			rs = append(rs, [2]time.Time{base.Add(r[0]), base.Add(r[1])})
		}
		for range 20 {
			lo := base.Add(-100*time.Minute + time.Duration(rng.Int64N(int64(200*time.Minute))))
			rs = append(rs, [2]time.Time{lo, lo.Add(time.Duration(rng.Int64N(int64(90 * time.Minute))))})
		}
		// Unbounded until.
		return append(rs, [2]time.Time{base.Add(-30*time.Minute + 123), {}})
	}
	check := func(when string) {
		t.Helper()
		all, err := s.Flows(ctx, store.FlowQuery{})
		if err != nil {
			t.Fatal(err)
		}
		rs := ranges()
		CheckFlowEdges(t, s, when, rs...)
		for _, r := range rs {
			want := BruteFlowEdges(all, r[0], r[1], "")
			// The limit keeps the first of the same order.
			if got, err := s.FlowEdges(ctx, r[0], r[1], 3); err != nil || diffEdges(got, want[:min(3, len(want))]) != "" {
				t.Errorf("%s: edges of %v..%v, limit 3: %v", when, r[0], r[1], err)
			}
			for _, w := range []string{"web", "db", "nobody"} {
				want := BruteFlowEdges(all, r[0], r[1], w)
				got, err := s.FlowEdgesOf(ctx, r[0], r[1], w, 1000)
				if err != nil {
					t.Fatalf("%s: %s's edges: %v", when, w, err)
				}
				if d := diffEdges(got, want); d != "" {
					t.Errorf("%s: %s's edges of %v..%v:\n%s", when, w, r[0], r[1], d)
				}
			}
		}
	}
	// A store that rolls up apart from the inserts (store.FlowEdgeRoller)
	// is checked with none, part and all of its flows rolled up, and
	// with retention deleting flows on both sides of how far it reached;
	// for the others roll does nothing.
	roller, _ := s.(store.FlowEdgeRoller)
	roll := func(until time.Time, limit, steps int) {
		t.Helper()
		for i := 0; roller != nil && i < steps; i++ {
			more, err := roller.RollupFlowEdges(ctx, until, limit)
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				return
			}
		}
	}
	// Nothing rolled up: as after a crash between the inserts and the
	// first rollup step.
	check("stored")
	roll(base.Add(-55*time.Minute), 50, 1)
	check("after one rollup step")
	roll(base.Add(-55*time.Minute+17*time.Second), 50, 1000)
	check("rolled up to mid-minute")
	// Retention by age, a limited chunk: it stops mid-minute, past
	// where the rollup reached.
	if _, err := s.PruneFlows(ctx, base.Add(-50*time.Minute), 37); err != nil {
		t.Fatal(err)
	}
	check("after a chunk of retention by age")
	if _, err := s.PruneFlows(ctx, base.Add(-50*time.Minute+17*time.Second), 100000); err != nil {
		t.Fatal(err)
	}
	check("after retention by age")
	roll(base.Add(-10*time.Minute+time.Second), 1000, 1000)
	check("rolled up from where retention stopped")
	// Retention by count and rollup steps at once (each is one
	// transaction: whichever runs first, the other finds its result).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			if roller != nil {
				if _, err := roller.RollupFlowEdges(ctx, base.Add(10*time.Minute), 20); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	if _, err := s.PruneOldestFlows(ctx, 41); err != nil {
		t.Fatal(err)
	}
	<-done
	check("after retention by count")
	// Flows stored late: older than the ones retention deleted, in the
	// minute it stopped in, and on both sides of where the rollup
	// reached.
	batch(40, -2*time.Hour, time.Hour)
	batch(20, -45*time.Minute, 2*time.Minute)
	batch(30, 5*time.Minute, 10*time.Minute)
	check("after late flows")
	roll(base.Add(2*time.Hour), 100, 1000)
	check("all rolled up")
	if _, err := s.PruneOldestFlows(ctx, 30); err != nil {
		t.Fatal(err)
	}
	check("after retention of late flows")
	roll(base.Add(3*time.Hour), 100, 1000)
	check("all rolled up after retention")
}

// CheckFlowEdges fails t unless FlowEdges of each range of s (since,
// until; a limit of 1,000) is BruteFlowEdges of every flow s stores; when
// says at which point of the test.
func CheckFlowEdges(t testing.TB, s store.EventStore, when string, ranges ...[2]time.Time) {
	t.Helper()
	ctx := context.Background()
	all, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		got, err := s.FlowEdges(ctx, r[0], r[1], 1000)
		if err != nil {
			t.Fatalf("%s: edges of %v..%v: %v", when, r[0], r[1], err)
		}
		if d := diffEdges(got, BruteFlowEdges(all, r[0], r[1], "")); d != "" {
			t.Errorf("%s: edges of %s..%s (%d flows stored):\n%s", when, r[0].Format(time.TimeOnly+".000000000"),
				r[1].Format(time.TimeOnly+".000000000"), len(all), d)
		}
	}
}

// EdgeMigrationFlow is flow i of the stores' rollup migration tests,
// stored through the old schema and then through the store: web to db
// (Flow) of every state; with huge other than 0, one in four has huge
// packets and huge-1 bytes (their sums wrap around).
func EdgeMigrationFlow(i int, at time.Time, huge uint64) flowrecord.Record {
	r := Flow(i, at)
	r.State = []flowrecord.State{flowrecord.StateNew, flowrecord.StateClosed, flowrecord.StateActive}[i%3]
	r.Packets, r.Bytes = uint64(i), uint64(100*i)
	if huge != 0 && i%4 == 1 {
		r.Packets, r.Bytes = huge, huge-1
	}
	return r
}

// CheckMigratedFlowEdges is the rollup migration tests' check of a
// store whose flows, EdgeMigrationFlow 0 to 199 from base 7.777 s apart,
// were stored before the rollup: FlowEdges answers for them, and again
// once 100 more of the same minutes are stored, and once they are rolled
// up (a store without a rollup step: RollupAll does nothing).
func CheckMigratedFlowEdges(t testing.TB, s store.EventStore, base time.Time, huge uint64) {
	t.Helper()
	var ranges [][2]time.Time
	for _, r := range [][2]time.Duration{{0, time.Hour}, {90 * time.Second, 25*time.Minute + 3*time.Second}, {10 * time.Minute, 20 * time.Minute}} {
		ranges = append(ranges, [2]time.Time{base.Add(r[0]), base.Add(r[1])})
	}
	CheckFlowEdges(t, s, "migrated", ranges...)
	var recs []flowrecord.Record
	for i := range 100 {
		recs = append(recs, EdgeMigrationFlow(i, base.Add(time.Duration(i)*3333*time.Millisecond), huge))
	}
	InsertFlows(t, s, recs)
	CheckFlowEdges(t, s, "stored after", ranges...)
	// A store that rolls up apart from the inserts: the migrated sums
	// are not summed again.
	RollupAll(t, s, base.Add(2*time.Hour))
	CheckFlowEdges(t, s, "rolled up after", ranges...)
}

// edgeFlow is a flow of a few workloads and unmanaged addresses, with
// every state and verdict.
func edgeFlow(i int, rng *rand.Rand, at time.Time) flowrecord.Record {
	ends := []string{"web", "db", "cache", "", ""}
	src, dst := ends[rng.IntN(len(ends))], ends[rng.IntN(len(ends))]
	verdict := []ruleset.Verdict{ruleset.VerdictAllowed, ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny}[rng.IntN(4)]
	state := []flowrecord.State{flowrecord.StateNew, flowrecord.StateNew, flowrecord.StateActive, flowrecord.StateClosed, ""}[rng.IntN(5)]
	proto, port := "TCP", uint16(22+rng.IntN(3))
	if rng.IntN(5) == 0 {
		proto, port = "UDP", 53
	}
	r := flowrecord.Record{
		Time: at, Node: "node-a", Direction: ruleset.Ingress, Protocol: proto,
		SrcAddr: netip.AddrFrom4([4]byte{10, 250, 0, byte(1 + rng.IntN(3))}), SrcPort: uint16(30000 + i%30000), SrcWorkload: src,
		DstAddr: netip.AddrFrom4([4]byte{10, 250, 1, byte(1 + rng.IntN(3))}), DstPort: port, DstWorkload: dst,
		Verdict: verdict, Rule: "shop/r", Packets: uint64(1 + rng.IntN(100)), Bytes: uint64(60 + rng.IntN(10000)),
		FirstSeen: at, LastSeen: at, State: state,
	}
	if rng.IntN(8) == 0 {
		r.SrcAddr = netip.MustParseAddr("fd0e::" + fmt.Sprint(1+rng.IntN(2)))
	}
	return r
}

// BruteFlowEdges is what FlowEdges (FlowEdgesOf, for a workload other
// than "") promises of flows, grouped one by one: the flows recorded in
// [since, until) (until zero: no bound) by source and destination
// (workload, or address where none), protocol, port and verdict; Flows
// counts the new ones, Packets and Bytes sum the closed connections' and
// the not-allowed new flows'; most flows first, then the key.
func BruteFlowEdges(flows []flowrecord.Record, since, until time.Time, workload string) []store.FlowEdge {
	type key struct {
		srcW, src, dstW, dst, proto string
		port                        uint16
		verdict                     ruleset.Verdict
	}
	addr := func(w string, a netip.Addr) string {
		if w != "" || !a.IsValid() {
			return ""
		}
		return a.String()
	}
	groups := map[key]*store.FlowEdge{}
	for _, r := range flows {
		if r.Time.Before(since) || (!until.IsZero() && !r.Time.Before(until)) {
			continue
		}
		if workload != "" && r.SrcWorkload != workload && r.DstWorkload != workload {
			continue
		}
		k := key{r.SrcWorkload, addr(r.SrcWorkload, r.SrcAddr), r.DstWorkload, addr(r.DstWorkload, r.DstAddr), r.Protocol, r.DstPort, r.Verdict}
		e := groups[k]
		if e == nil {
			e = &store.FlowEdge{SrcWorkload: k.srcW, DstWorkload: k.dstW, Protocol: k.proto, Port: k.port, Verdict: k.verdict,
				FirstSeen: r.Time, LastSeen: r.Time}
			e.SrcAddr, _ = netip.ParseAddr(k.src)
			e.DstAddr, _ = netip.ParseAddr(k.dst)
			groups[k] = e
		}
		state := r.State
		if state == "" {
			state = flowrecord.StateNew
		}
		if state == flowrecord.StateNew {
			e.Flows++
		}
		if state == flowrecord.StateClosed || (state == flowrecord.StateNew && r.Verdict != ruleset.VerdictAllowed) {
			e.Packets += r.Packets
			e.Bytes += r.Bytes
		}
		if r.Time.Before(e.FirstSeen) {
			e.FirstSeen = r.Time
		}
		if r.Time.After(e.LastSeen) {
			e.LastSeen = r.Time
		}
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(groups[b].Flows, groups[a].Flows), cmp.Compare(a.srcW, b.srcW), cmp.Compare(a.src, b.src),
			cmp.Compare(a.dstW, b.dstW), cmp.Compare(a.dst, b.dst), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port),
			cmp.Compare(a.verdict, b.verdict))
	})
	out := make([]store.FlowEdge, len(keys))
	for i, k := range keys {
		out[i] = *groups[k]
	}
	return out
}

// diffEdges says how got differs from want ("" if it does not), an edge
// a line.
func diffEdges(got, want []store.FlowEdge) string {
	line := func(e store.FlowEdge) string {
		return fmt.Sprintf("%s|%s>%s|%s %s/%d %s flows=%d packets=%d bytes=%d %d..%d", e.SrcWorkload, addrOrNone(e.SrcAddr),
			e.DstWorkload, addrOrNone(e.DstAddr), e.Protocol, e.Port, e.Verdict, e.Flows, e.Packets, e.Bytes,
			e.FirstSeen.UnixNano(), e.LastSeen.UnixNano())
	}
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = line(got[i])
		}
		if i < len(want) {
			w = line(want[i])
		}
		if g != w {
			fmt.Fprintf(&b, "  got  %s\n  want %s\n", g, w)
		}
	}
	return b.String()
}
