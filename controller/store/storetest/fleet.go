package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// BenchmarkInsertFleetFlows is BenchmarkInsertFlows with a fleet's flows
// (FleetFlow of 1,000 workloads) at the dashboard benchmarks' rate, one
// every 86.4 ms (1,000,000 a day): nearly every record is an edge of its
// own in its minute, the most a rollup of edges per time bucket has to
// write per record. A store that rolls up apart from the inserts
// (store.FlowEdgeRoller) rolls up every record, and one that indexes
// apart (store.FlowIndexer) indexes them, before the clock stops
// (Housekeep), so that the figure counts it. Reported: records/s.
func BenchmarkInsertFleetFlows(b *testing.B, open Open, batch int) {
	s := open(b)
	start := time.Now().Add(-24 * time.Hour)
	recs := make([]flowrecord.Record, batch)
	n := 0
	for b.Loop() {
		for i := range recs {
			recs[i] = FleetFlow(n, 1000, start.Add(time.Duration(n)*86400*time.Microsecond))
			n++
		}
		if err := s.EventTx(context.Background(), func(tx store.EventTx) error { return tx.InsertFlows(recs) }); err != nil {
			b.Fatal(err)
		}
	}
	Housekeep(b, s, time.Now())
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}

// Housekeep does to the flows recorded before until what the
// controller's housekeeping does apart from the inserts: RollupAll, then
// the flow indexes' summaries (store.FlowIndexer; nothing for a store
// without). Benchmarks call it before their clock stops, so that their
// figures count that work.
func Housekeep(tb testing.TB, s store.EventStore, until time.Time) {
	tb.Helper()
	RollupAll(tb, s, until)
	if ix, ok := s.(store.FlowIndexer); ok {
		if _, err := ix.SummarizeFlowIndexes(context.Background()); err != nil {
			tb.Fatal(err)
		}
	}
}

// RollupAll runs s's rollup steps (store.FlowEdgeRoller; nothing for a
// store without) until every flow recorded before until is rolled up.
func RollupAll(tb testing.TB, s store.EventStore, until time.Time) {
	tb.Helper()
	r, ok := s.(store.FlowEdgeRoller)
	for i := 0; ok && i < 1_000_000; i++ {
		more, err := r.RollupFlowEdges(context.Background(), until, 50000)
		if err != nil {
			tb.Fatal(err)
		}
		if !more {
			return
		}
	}
}
