package postgres

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// sustainedLimit bounds one run of BenchmarkPostgresIngestSustained: it
// stops there and reports what it stored.
const sustainedLimit = 10 * time.Minute

// BenchmarkPostgresIngestSustained: flow ingest into PostgreSQL held over
// minutes with the flows table growing to millions of rows, through the
// store's insert path (InsertFlows in a flow transaction, FlowTx, per
// batch of 1,000, as flowingest's writers call it) with records of a fleet of
// 1,000 workloads (storetest.FleetFlow: every index gets as many distinct
// keys as a fleet gives it), each batch stamped with the time it is
// stored at (as an agent's records arrive, seconds old: none is late for
// the rollup; a record older than the rollup's progress, a spool replayed
// after an outage, takes the insert's own upsert instead, which with
// records from hours ago this benchmark measured before). One call stores
// EG_BENCH_FLOWS records (default 2,000,000) whatever b.N, in at most
// sustainedLimit (then it reports what it stored); it takes minutes, so
// the framework makes no second call:
//
//	go test -run '^$' -bench PostgresIngestSustained -benchtime 1x -timeout 30m ./controller/store/postgres/
//
// Reported: records/s over the whole run and over its last quarter (the
// table's largest), the PostgreSQL server's and the Go side's CPU per
// record (µs; pgtest.ServerCPU, getrusage), WAL bytes and stored bytes
// (table and indexes) per record. The service map's rollup and the flow
// indexes' summaries run beside the writers as the controller's
// housekeeping runs them, and finish before the clock stops. Two
// writers store side by side, as flowingest's do; EG_BENCH_WRITERS=N
// runs N.
func BenchmarkPostgresIngestSustained(b *testing.B) {
	const batch, workloads = 1000, 1000
	writers, total := envInt(b, "EG_BENCH_WRITERS", 2, 1, 8), envInt(b, "EG_BENCH_FLOWS", 2_000_000, batch, 100_000_000)
	batches := total / batch
	s, err := openDSN(b, pgtest.DSN(b), testKey(b), Config{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	walLSN := func() int64 {
		var n int64
		if err := s.pool.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::BIGINT").Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	}
	goCPU := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// Records are made before the clock runs, in batches of their own per
	// writer so that the Go side measured is the store's; stamp sets a
	// batch's times when it is stored.
	total = batches * batch
	recs := make([]flowrecord.Record, total)
	for i := range recs {
		recs[i] = storetest.FleetFlow(i, workloads, time.Now())
	}
	stamp := func(part []flowrecord.Record) {
		now := time.Now()
		for j := range part {
			at := now.Add(time.Duration(j) * time.Microsecond)
			part[j].Time, part[j].FirstSeen, part[j].LastSeen = at, at.Add(-time.Millisecond), at
		}
	}
	wal0, srv0, go0 := walLSN(), pgtest.ServerCPU(b), goCPU()
	b.ResetTimer()
	start := time.Now()
	deadline := start.Add(sustainedLimit)
	// next hands out batch numbers in order; each writer takes the next.
	next := make(chan int, writers)
	go func() {
		defer close(next)
		for i := range batches {
			next <- i
		}
	}()
	errs := make(chan error, writers)
	stored := make([]int, writers)
	quarter := make(chan time.Time, 1)
	for w := range writers {
		go func() {
			for i := range next {
				if time.Now().After(deadline) {
					break
				}
				part := recs[i*batch : (i+1)*batch]
				stamp(part)
				if err := s.FlowTx(ctx, nil, func(tx store.FlowTx) error { return tx.InsertFlows(part) }); err != nil {
					errs <- err
					return
				}
				stored[w] += batch
				if i == batches*3/4 {
					quarter <- time.Now()
				}
			}
			errs <- nil
		}()
	}
	// The service map's rollup and the flow indexes' summaries as the
	// controller runs them: a housekeeping pass every 2 s, rollup steps
	// of 50,000 flows for up to a second, then the summaries; then
	// whatever is left, before the clock stops.
	stop, rolled := make(chan struct{}), make(chan error, 1)
	go func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				rolled <- nil
				return
			case <-tick.C:
			}
			pass := time.Now()
			for more := true; more && time.Since(pass) < time.Second; {
				var err error
				if more, err = s.RollupFlowEdges(ctx, time.Now().Add(-time.Minute), 50000); err != nil {
					rolled <- err
					return
				}
			}
			if _, err := s.SummarizeFlowIndexes(ctx); err != nil {
				rolled <- err
				return
			}
		}
	}()
	for range writers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
	if err := <-rolled; err != nil {
		b.Fatal(err)
	}
	storetest.Housekeep(b, s, time.Now().Add(time.Second)) // past the last batch's last record
	elapsed := time.Since(start)
	b.StopTimer()
	n := 0
	for _, c := range stored {
		n += c
	}
	wal, srv, gocpu := walLSN()-wal0, pgtest.ServerCPU(b)-srv0, goCPU()-go0
	var size int64
	if err := s.pool.QueryRow(ctx, "SELECT COALESCE(SUM(pg_total_relation_size(inhrelid)), 0)::BIGINT FROM pg_inherits WHERE inhparent = 'flows'::regclass").Scan(&size); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
	select {
	case q := <-quarter:
		// The last quarter of the batches, counted from when the batch
		// three quarters in was stored.
		last := n - (batches*3/4+1)*batch
		if d := start.Add(elapsed).Sub(q); last > 0 && d > 0 {
			b.ReportMetric(float64(last)/d.Seconds(), "last-quarter-records/s")
		}
	default:
		b.Logf("stopped after %s with %d of %d records stored: the last quarter was not reached", sustainedLimit, n, total)
	}
	b.ReportMetric(float64(srv.Microseconds())/float64(n), "server-µs/record")
	b.ReportMetric(float64(gocpu.Microseconds())/float64(n), "go-µs/record")
	b.ReportMetric(float64(wal)/float64(n), "WAL-B/record")
	b.ReportMetric(float64(size)/float64(n), "stored-B/record")
	b.ReportMetric(0, "ns/op")
}

// envInt is the integer in the environment variable name, def if unset;
// a value that is not an integer from lo to hi fails the benchmark.
func envInt(b *testing.B, name string, def, lo, hi int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		b.Fatalf("%s=%q: want an integer from %d to %d", name, v, lo, hi)
	}
	return n
}
