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
// write per record. Reported: records/s.
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
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}
