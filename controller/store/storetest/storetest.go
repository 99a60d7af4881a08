// Package storetest is the conformance suite of controller/store's
// interfaces: every behaviour the Store and EventStore doc comments
// promise, checked through the interfaces alone, so that each
// implementation (controller/store/sqlite, controller/store/postgres)
// runs the same tests and none is held to less. What is an engine's own
// (file modes, migrations of its old schemas, query plans, a full disk)
// stays in that engine's package.
//
// Only tests import it. It imports controller/store and internal/...,
// never an implementation, nor anything else of the controller, nor
// agent/....
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Open returns a new, empty store for one test; the implementation closes
// it when the test ends (t.Cleanup).
type Open func(t testing.TB) store.Store

// Run runs the whole suite, each test on a store of its own.
func Run(t *testing.T, open Open) {
	for _, c := range []struct {
		name string
		f    func(*testing.T, Open)
	}{
		{"CA", testCA},
		{"AdminTokens", testAdminTokens},
		{"ConsumeJoinToken", testConsumeJoinToken},
		{"CertsAndRevocation", testCertsAndRevocation},
		{"JoinTokenLookupListDelete", testJoinTokenLookupListDelete},
		{"PolicyCommitAndRuleSets", testPolicyCommitAndRuleSets},
		{"RuleSetParts", testRuleSetParts},
		{"Nodes", testNodes},
		{"SpoolPosition", testSpoolPosition},
		{"ForgetAndPruneSpools", testForgetAndPruneSpools},
		{"FlowsQueryAndRetention", testFlowsQueryAndRetention},
		{"FlowsPaging", testFlowsPaging},
		{"AlertsAndDeliveries", testAlertsAndDeliveries},
		{"DueDeliveriesFairness", testDueDeliveriesFairness},
		{"WebhookStats", testWebhookStats},
		{"FlowVolumeRoundTrip", testFlowVolumeRoundTrip},
		{"FlowEdgesFirstSeen", testFlowEdgesFirstSeen},
		{"FlowEdgesOf", testFlowEdgesOf},
		{"FlowEdgesTotals", testFlowEdgesTotals},
		{"FlowEdgesExact", testFlowEdgesExact},
		{"AuditWithChanges", testAuditWithChanges},
		{"AuditAppendQuery", testAuditAppendQuery},
		{"AuditPrune", testAuditPrune},
		{"AuditConcurrent", testAuditConcurrent},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, open) })
	}
}

// Flow is a TCP flow record from web to db, allowed when i is even
// and denied when odd, to port 22, 23 or 24 by i.
func Flow(i int, at time.Time) flowrecord.Record {
	verdict := ruleset.VerdictAllowed
	if i%2 == 1 {
		verdict = ruleset.VerdictDenied
	}
	return flowrecord.Record{
		Time: at, Node: "node-a", Direction: ruleset.Ingress, Protocol: "TCP",
		SrcAddr: netip.MustParseAddr("10.250.0.1"), SrcPort: uint16(30000 + i), SrcWorkload: "web", SrcIdentity: 300,
		DstAddr: netip.MustParseAddr("10.250.0.2"), DstPort: uint16(22 + i%3), DstWorkload: "db", DstIdentity: 301,
		Verdict: verdict, Rule: fmt.Sprintf("shop/r%d", i%2), Packets: 1, Bytes: 60, FirstSeen: at, LastSeen: at,
	}
}

// FleetFlow is flow i of a fleet of workloads workloads, distributed as
// sqlitetest.SeedFlows distributes its rows (the dashboard's benchmarks),
// so that ingest benchmarks fill the indexes with as many distinct keys
// as a fleet does, not one workload's: one flow in 20 from an unmanaged
// address (203.0.113.x), ports 22, 53 (UDP), 80, 443, 5432, 6379, 8080,
// 9090 and 1024-1073, one in 7 denied by default-deny, one in 11
// would-deny, the node node-<dst % 100>, workload i at 10.1.<i/250>.<i%250>.
func FleetFlow(i, workloads int, at time.Time) flowrecord.Record {
	src, dst := (i*7919)%workloads, (i*104729+17)%workloads
	port := [...]uint16{22, 53, 80, 443, 5432, 6379, 8080, 9090, 0, 0}[i%10]
	if port == 0 {
		port = uint16(1024 + i%50)
	}
	verdict, rule := ruleset.VerdictAllowed, fmt.Sprintf("shop/rule-%d", port%97)
	switch {
	case i%7 == 0:
		verdict, rule = ruleset.VerdictDenied, "default-deny"
	case i%11 == 0:
		verdict, rule = ruleset.VerdictWouldDeny, fmt.Sprintf("audit/no-%d", port)
	}
	proto := "TCP"
	if port == 53 {
		proto = "UDP"
	}
	addr := func(w int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(w / 250), byte(w % 250)}) }
	r := flowrecord.Record{
		Time: at, Node: fmt.Sprintf("node-%d", dst%100), Direction: ruleset.Ingress, Protocol: proto,
		SrcAddr: addr(src), SrcPort: uint16(30000 + i%30000), SrcWorkload: fmt.Sprintf("wl-%d", src), SrcIdentity: ruleset.Identity(src + 256),
		DstAddr: addr(dst), DstPort: port, DstWorkload: fmt.Sprintf("wl-%d", dst), DstIdentity: ruleset.Identity(dst + 256),
		Verdict: verdict, Rule: rule, Packets: 3, Bytes: 180, FirstSeen: at.Add(-time.Millisecond), LastSeen: at,
		PacketsSent: 3, BytesSent: 180, State: flowrecord.StateNew,
	}
	if i%20 == 0 {
		r.SrcAddr, r.SrcWorkload = netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)}), ""
	}
	return r
}

// InsertFlows stores recs in one event transaction, failing the test if
// it cannot.
func InsertFlows(t testing.TB, s store.EventStore, recs []flowrecord.Record) {
	t.Helper()
	if err := s.EventTx(context.Background(), func(tx store.EventTx) error { return tx.InsertFlows(recs) }); err != nil {
		t.Fatal(err)
	}
}

// InsertFlowsRolledBack inserts recs in a transaction that then fails,
// failing the test unless the failure is the transaction's own: what the
// store kept of it is for the caller to check (nothing, flows or rollup).
func InsertFlowsRolledBack(t testing.TB, s store.EventStore, recs []flowrecord.Record) {
	t.Helper()
	boom := errors.New("boom")
	if err := s.EventTx(context.Background(), func(tx store.EventTx) error {
		if err := tx.InsertFlows(recs); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("a transaction failed after its insert: %v, want its own error", err)
	}
}

// FlowIDs returns the ids of the flows q selects, in the store's order,
// failing the test if the query fails.
func FlowIDs(t testing.TB, s store.EventStore, q store.FlowQuery) []int64 {
	t.Helper()
	var ids []int64
	if err := s.ScanFlows(context.Background(), q, func(id int64, _ *flowrecord.Record) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// testCA: the CA is stored once; a second one is refused and changes
// nothing.
func testCA(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	if _, _, err := s.CA(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CA of an empty store: %v", err)
	}
	if err := s.InitCA(ctx, []byte("cert"), []byte("key")); err != nil {
		t.Fatal(err)
	}
	if err := s.InitCA(ctx, []byte("other"), []byte("other key")); !errors.Is(err, store.ErrExists) {
		t.Errorf("second CA: %v", err)
	}
	if cert, key, err := s.CA(ctx); err != nil || string(cert) != "cert" || string(key) != "key" {
		t.Errorf("CA: %q, %q, %v", cert, key, err)
	}
}

// testAdminTokens: admin tokens are kept with every field, listed oldest
// first, and a revocation keeps its first time.
func testAdminTokens(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	first := store.AdminToken{ID: "old", SecretHash: "h0", Name: "admin.conf", Created: now.Add(-time.Hour)}
	if err := s.AddAdminToken(ctx, first); err != nil {
		t.Fatal(err)
	}
	tok := store.AdminToken{ID: "t1", SecretHash: "h1", Name: "ci", Created: now, Expires: now.Add(time.Hour), CreatedBy: "old"}
	if err := s.AddAdminToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := s.AddAdminToken(ctx, tok); !errors.Is(err, store.ErrExists) {
		t.Errorf("same id twice: %v", err)
	}
	if got, err := s.AdminToken(ctx, "t1"); err != nil || got != tok {
		t.Errorf("read back: %+v, %v\nwant %+v", got, err, tok)
	}
	if _, err := s.AdminToken(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	// Revocation keeps the record and its first time.
	got, err := s.RevokeAdminToken(ctx, "t1", now.Add(time.Minute))
	if err != nil || !got.Revoked.Equal(now.Add(time.Minute)) {
		t.Errorf("revoke: %+v, %v", got, err)
	}
	if got, err = s.RevokeAdminToken(ctx, "t1", now.Add(time.Hour)); err != nil || !got.Revoked.Equal(now.Add(time.Minute)) {
		t.Errorf("revoke again: %+v, %v", got, err)
	}
	if _, err := s.RevokeAdminToken(ctx, "nope", now); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke an unknown id: %v", err)
	}
	list, err := s.AdminTokens(ctx)
	if err != nil || len(list) != 2 || list[0] != first || list[1].ID != "t1" || list[1].Revoked.IsZero() {
		t.Errorf("list: %+v, %v", list, err)
	}
}

// testFlowsPaging: Before pages through the newest-first order (time,
// then id) without gaps or repeats, also across equal times, and an id no
// longer stored selects nothing.
func testFlowsPaging(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var recs []flowrecord.Record
	for i := range 25 {
		recs = append(recs, Flow(i, base.Add(time.Duration(i/3)*time.Second)))
	}
	InsertFlows(t, s, recs)
	var ids []int64
	var before int64
	for range 10 { // bounded: 25 flows are 5 pages of 5
		page := FlowIDs(t, s, store.FlowQuery{Before: before, Limit: 5})
		if len(page) == 0 {
			break
		}
		ids = append(ids, page...)
		before = page[len(page)-1]
	}
	seen := map[int64]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("flow %d on two pages", id)
		}
		seen[id] = true
	}
	if len(ids) != 25 {
		t.Errorf("%d flows over the pages, want 25", len(ids))
	}
	if _, err := s.PruneOldestFlows(ctx, 25); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Flows(ctx, store.FlowQuery{Before: ids[0]}); err != nil || len(got) != 0 {
		t.Errorf("page after a pruned flow: %d flows, %v", len(got), err)
	}
}

// BenchmarkInsertFlows measures flow ingest through the store's insert
// path: batches of batch records, one event transaction each (as
// controller/flowingest writes them), records spread over the last hour;
// what a store does apart from the inserts (Housekeep) is done before
// the clock stops. Reported: records/s.
func BenchmarkInsertFlows(b *testing.B, open Open, batch int) {
	s := open(b)
	now := time.Now().Add(-time.Hour)
	recs := make([]flowrecord.Record, batch)
	n := 0
	for b.Loop() {
		for i := range recs {
			recs[i] = Flow(n, now.Add(time.Duration(n)*time.Millisecond))
			n++
		}
		if err := s.EventTx(context.Background(), func(tx store.EventTx) error { return tx.InsertFlows(recs) }); err != nil {
			b.Fatal(err)
		}
	}
	Housekeep(b, s, time.Now().Add(time.Hour))
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}
