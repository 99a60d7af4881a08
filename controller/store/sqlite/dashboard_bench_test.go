package sqlite_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/controller/store/sqlite/sqlitetest"
	"github.com/eastguard/eastguard/controller/store/storetest"
)

// Dashboard query cost at scale (issue 17: a filtered flow query well
// under 200 ms and the service map of the last hour under 1 s, with
// 1,000,000 stored flows of 1,000 workloads). Measure with
//
//	go test -run '^$' -bench Dashboard -benchtime 20x ./controller/store/sqlite/
//
// The store is seeded once by sqlitetest.SeedFlows (SQL, not the
// ingest): 1,000,000 flows over the last 24 hours (about 42,000 in the
// last hour) between 1,000 workloads and, for one flow in 20, an
// unmanaged address. The dashboard's BenchmarkBrowserPages seeds the same.

const (
	benchFlows     = 1_000_000
	benchWorkloads = 1000
	benchSpan      = 24 * time.Hour
)

func BenchmarkDashboard(b *testing.B) {
	dir := b.TempDir()
	s, err := sqlite.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	now := time.Now()
	start := time.Now()
	sqlitetest.SeedFlows(b, dir, sqlitetest.Seed{Flows: benchFlows, Workloads: benchWorkloads, Span: benchSpan, Now: now})
	b.Logf("seeded %d flows in %s", benchFlows, time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	lastHour := now.Add(-time.Hour)
	// The seed's rollup is the flows': the map of the last hour is the
	// flows' grouped one by one.
	recent, err := s.Flows(ctx, store.FlowQuery{Since: lastHour, Until: now})
	if err != nil {
		b.Fatal(err)
	}
	if got, err := s.FlowEdges(ctx, lastHour, now, 20001); err != nil || fmt.Sprint(got) != fmt.Sprint(storetest.BruteFlowEdges(recent, lastHour, now, "")) {
		b.Fatalf("the map of the last hour (%d edges, %v) is not its %d flows'", len(got), err, len(recent))
	}
	b.Run("FlowsPort22LastHour", func(b *testing.B) {
		for b.Loop() {
			if ids := storetest.FlowIDs(b, s, store.FlowQuery{Since: lastHour, Port: 22, HasPort: true, Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	first := storetest.FlowIDs(b, s, store.FlowQuery{Limit: 100})
	b.Run("FlowsPageBefore", func(b *testing.B) {
		for b.Loop() {
			if ids := storetest.FlowIDs(b, s, store.FlowQuery{Before: first[99], Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	port22 := storetest.FlowIDs(b, s, store.FlowQuery{Port: 22, HasPort: true, Limit: 5000})
	b.Run("FlowsPort22PageBefore", func(b *testing.B) {
		for b.Loop() {
			if ids := storetest.FlowIDs(b, s, store.FlowQuery{Port: 22, HasPort: true, Before: port22[4999], Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	b.Run("FlowsWorkloadLastHour", func(b *testing.B) {
		for b.Loop() {
			storetest.FlowIDs(b, s, store.FlowQuery{Since: lastHour, Workload: "wl-42", Limit: 100})
		}
	})
	b.Run("FlowsLabelLastHour", func(b *testing.B) {
		// A label of 50 workloads.
		names := make([]string, 50)
		for i := range names {
			names[i] = "wl-" + string(rune('0'+i/10)) + string(rune('0'+i%10))
		}
		for b.Loop() {
			storetest.FlowIDs(b, s, store.FlowQuery{Since: lastHour, ByWorkloads: true, Workloads: names, Limit: 100})
		}
	})
	b.Run("MapLastHour", func(b *testing.B) {
		for b.Loop() {
			edges, err := s.FlowEdges(ctx, lastHour, now, 20001)
			if err != nil || len(edges) == 0 {
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
