package postgres

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// BenchmarkPostgresDashboard: the dashboard's and egctl's flow queries on
// PostgreSQL with 1,000,000 stored flows of 1,000 workloads over the last
// 24 hours (storetest.FleetFlow, stored through InsertFlows, then
// ANALYZE), as the SQLite store's BenchmarkDashboard: each filter of the
// flows page, paging, the map and the rule counts of the last hour, so
// that a change of the flows' indexes shows what it costs the queries.
//
//	go test -run '^$' -bench PostgresDashboard -benchtime 20x -timeout 30m ./controller/store/postgres/
func BenchmarkPostgresDashboard(b *testing.B) {
	const flows, workloads, span = 1_000_000, 1000, 24 * time.Hour
	s, err := openDSN(b, pgtest.DSN(b), testKey(b), Config{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	start := time.Now()
	recs := make([]flowrecord.Record, 10_000)
	for i := 0; i < flows; i += len(recs) {
		for j := range recs {
			recs[j] = storetest.FleetFlow(i+j, workloads, now.Add(-span+time.Duration(i+j)*(span/flows)))
		}
		storetest.InsertFlows(b, s, recs)
	}
	// As the controller's housekeeping would have: the flows of more
	// than a minute ago rolled up.
	storetest.Housekeep(b, s, now.Add(-time.Minute))
	if _, err := s.pool.Exec(ctx, "ANALYZE flows"); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d flows in %s", flows, time.Since(start).Round(time.Millisecond))
	lastHour := now.Add(-time.Hour)
	full := func(q store.FlowQuery) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				if ids := storetest.FlowIDs(b, s, q); len(ids) != q.Limit {
					b.Fatalf("%d flows, want %d", len(ids), q.Limit)
				}
			}
		}
	}
	b.Run("FlowsNewest", full(store.FlowQuery{Limit: 100}))
	first := storetest.FlowIDs(b, s, store.FlowQuery{Limit: 100})
	b.Run("FlowsPageBefore", full(store.FlowQuery{Before: first[99], Limit: 100}))
	b.Run("FlowsPort22LastHour", full(store.FlowQuery{Since: lastHour, Port: 22, HasPort: true, Limit: 100}))
	b.Run("FlowsDeniedLastHour", full(store.FlowQuery{Since: lastHour, Verdict: ruleset.VerdictDenied, Limit: 100}))
	b.Run("FlowsAllowedLastHour", full(store.FlowQuery{Since: lastHour, Verdict: ruleset.VerdictAllowed, Limit: 100}))
	b.Run("FlowsRuleLastHour", full(store.FlowQuery{Since: lastHour, Rule: "default-deny", Limit: 100}))
	b.Run("FlowsNodeLastHour", full(store.FlowQuery{Since: lastHour, Node: "node-42", Limit: 100}))
	b.Run("FlowsProtocolUDPLastHour", full(store.FlowQuery{Since: lastHour, Protocol: "UDP", Limit: 100}))
	b.Run("FlowsWorkloadLastHour", full(store.FlowQuery{Since: lastHour, Workload: "wl-42", Limit: 30}))
	b.Run("FlowsAddrLastHour", full(store.FlowQuery{Since: lastHour, Addr: netip.MustParseAddr("10.1.0.42"), Limit: 30}))
	// An address seen in no flow: the whole range is looked through.
	b.Run("FlowsAddrNone", func(b *testing.B) {
		for b.Loop() {
			storetest.FlowIDs(b, s, store.FlowQuery{Addr: netip.MustParseAddr("192.0.2.1"), Limit: 100})
		}
	})
	b.Run("FlowsNodeNone", func(b *testing.B) {
		for b.Loop() {
			storetest.FlowIDs(b, s, store.FlowQuery{Since: lastHour, Node: "node-none", Limit: 100})
		}
	})
	b.Run("MapLastHour", func(b *testing.B) {
		for b.Loop() {
			if edges, err := s.FlowEdges(ctx, lastHour, now, 20001); err != nil || len(edges) == 0 {
				b.Fatalf("%d edges: %v", len(edges), err)
			}
		}
	})
	b.Run("RuleCountsLastHour", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.RuleCounts(ctx, lastHour, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
