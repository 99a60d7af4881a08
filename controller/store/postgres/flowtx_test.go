package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// storeBatch stores recs as batch seq of node's spool 1 in tx unless its
// spool position says it is stored (as the flow ingester does), and says
// whether it stored it.
func storeBatch(tx store.EventTx, node string, seq uint64, recs []flowrecord.Record) (bool, error) {
	pos, err := tx.SpoolPosition(node, 1)
	if err != nil {
		return false, err
	}
	if pos.Stored(seq) {
		return false, nil
	}
	if err := tx.InsertFlows(recs); err != nil {
		return false, err
	}
	pos.Add(seq)
	pos.Updated = time.Unix(0, 1)
	return true, tx.SaveSpoolPosition(pos)
}

// nodeFlows are n flows of node from at on, a second apart, their source
// ports from port on.
func nodeFlows(node string, n, port int, at time.Time) []flowrecord.Record {
	recs := make([]flowrecord.Record, n)
	for i := range recs {
		recs[i] = storetest.Flow(port+i, at.Add(time.Duration(i)*time.Second))
		recs[i].Node = node
	}
	return recs
}

// waitLockWaiters waits until n transactions of s's database wait for
// an advisory lock, failing the test after a minute (a bound, not a
// timing: the waits it looks for are certain to come).
func waitLockWaiters(t *testing.T, s *Postgres, n int) {
	t.Helper()
	for range 6000 {
		var waiting int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %d transactions wait for an advisory lock after a minute", n)
}

// gate is a channel a test's transaction waits on, closed by release or,
// if the test fails first, when it ends: before the store closes, which
// waits for the transaction's connection.
func gate(t *testing.T) (wait <-chan struct{}, release func()) {
	c := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(c) }) }
	t.Cleanup(release)
	return c, release
}

// openFlowTx starts a FlowTx of node that runs f and then stays open: it
// returns once f has returned nil, with release (which ends the
// transaction; the test's end does too) and the transaction's result.
func openFlowTx(t *testing.T, s *Postgres, node string, f func(tx store.FlowTx) error) (release func(), done <-chan error) {
	t.Helper()
	ran := make(chan struct{})
	var once sync.Once
	wait, release := gate(t)
	errs := make(chan error, 1)
	go func() {
		errs <- s.FlowTx(context.Background(), []string{node}, func(tx store.FlowTx) error {
			if err := f(tx); err != nil {
				return err
			}
			once.Do(func() { close(ran) })
			<-wait
			return nil
		})
	}()
	select {
	case <-ran:
	case err := <-errs:
		t.Fatalf("%s's transaction ended before it was open: %v", node, err)
	}
	return release, errs
}

// storing is an openFlowTx f that stores recs as node's batch seq.
func storing(node string, seq uint64, recs []flowrecord.Record) func(tx store.FlowTx) error {
	return func(tx store.FlowTx) error {
		if ok, err := storeBatch(tx, node, seq, recs); err != nil || !ok {
			return fmt.Errorf("batch %d of %s stored %v: %v", seq, node, ok, err)
		}
		return nil
	}
}

// startFlowTx runs FlowTx(nodes, f) in a goroutine; its result comes on
// the channel.
func startFlowTx(s *Postgres, nodes []string, f func(tx store.FlowTx) error) <-chan error {
	errs := make(chan error, 1)
	go func() { errs <- s.FlowTx(context.Background(), nodes, f) }()
	return errs
}

// releaseWhenWaiting waits until a transaction waits for an advisory
// lock (the second, for the first's), releases the first, and fails the
// test on either's error.
func releaseWhenWaiting(t *testing.T, s *Postgres, release func(), first, second <-chan error) {
	t.Helper()
	waitLockWaiters(t, s, 1)
	release()
	for _, done := range []<-chan error{first, second} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// flowCount is the flows s stores, by its count and by a query.
func flowCount(t *testing.T, s *Postgres) (int64, int) {
	t.Helper()
	_, n, err := s.EventStoreSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.Flows(context.Background(), store.FlowQuery{})
	if err != nil {
		t.Fatal(err)
	}
	return n, len(recs)
}

// TestPostgresFlowTxSideBySide: two flow writers of different nodes
// insert at the same time: the second stores its flows while the first
// transaction, its flows inserted, is still open. Both commit.
func TestPostgresFlowTxSideBySide(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	// The partition exists, so that neither transaction makes one.
	storetest.InsertFlows(t, s, nodeFlows("node-c", 1, 0, at))
	release, errs := openFlowTx(t, s, "node-a", storing("node-a", 1, nodeFlows("node-a", 10, 100, at)))
	done := make(chan error, 1)
	go func() {
		done <- s.FlowTx(ctx, []string{"node-b"}, func(tx store.FlowTx) error {
			_, err := storeBatch(tx, "node-b", 1, nodeFlows("node-b", 10, 200, at))
			return err
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		release()
		t.Fatal("the second writer's transaction waited for the first's: flow writers do not run side by side")
	}
	release()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if n, got := flowCount(t, s); n != 21 || got != 21 {
		t.Errorf("%d flows counted, %d stored, want 21", n, got)
	}
}

// TestPostgresFlowTxSameNodeOnce: a batch sent again while its first
// copy is being stored (the agent's ack lost, its resend on another
// connection: another writer, or another controller) waits for the
// first's transaction and is then seen stored: its flows are stored
// once.
func TestPostgresFlowTxSameNodeOnce(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	storetest.InsertFlows(t, s, nodeFlows("node-c", 1, 0, at))
	batch := nodeFlows("node-a", 10, 100, at)
	release, first := openFlowTx(t, s, "node-a", storing("node-a", 7, batch))
	var again bool
	second := startFlowTx(s, []string{"node-b", "node-a"}, func(tx store.FlowTx) error {
		var err error
		again, err = storeBatch(tx, "node-a", 7, batch)
		return err
	})
	releaseWhenWaiting(t, s, release, first, second)
	if again {
		t.Error("the batch sent again was stored again")
	}
	if n, got := flowCount(t, s); n != 11 || got != 11 {
		t.Errorf("%d flows counted, %d stored, want 11", n, got)
	}
}

// TestPostgresFlowTxMakesPartitions: a writer whose flows need a
// partition that does not exist, while another writer's transaction is
// open, makes it in a transaction of its own once that one is done (no
// deadlock), and stores its flows there, not in flows_default.
func TestPostgresFlowTxMakesPartitions(t *testing.T) {
	s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{Partition: PartitionHour, PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	storetest.InsertFlows(t, s, nodeFlows("node-c", 1, 0, at))
	release, first := openFlowTx(t, s, "node-a", storing("node-a", 1, nodeFlows("node-a", 10, 100, at)))
	runs := 0
	second := startFlowTx(s, []string{"node-b"}, func(tx store.FlowTx) error {
		runs++
		// Two hours later, and five: two partitions to make.
		recs := append(nodeFlows("node-b", 5, 200, at.Add(2*time.Hour)), nodeFlows("node-b", 5, 300, at.Add(5*time.Hour))...)
		_, err := storeBatch(tx, "node-b", 1, recs)
		return err
	})
	// The second writer waits to make its partitions, for the first.
	releaseWhenWaiting(t, s, release, first, second)
	if runs != 2 {
		t.Errorf("the second writer's transaction ran %d times, want 2 (once refused for its partitions, once stored)", runs)
	}
	if n, got := flowCount(t, s); n != 21 || got != 21 {
		t.Errorf("%d flows counted, %d stored, want 21", n, got)
	}
	if n := countIn(t, s, "flows_default"); n != 0 {
		t.Errorf("%d flows in flows_default, want 0", n)
	}
	names := fmt.Sprint(partitionNames(t, s))
	for _, want := range []string{partitionName(at.Add(2 * time.Hour).UnixNano()), partitionName(at.Add(5 * time.Hour).UnixNano())} {
		if !strings.Contains(names, want) {
			t.Errorf("partitions %s, want %s among them", names, want)
		}
	}
}

// TestPostgresFlowTxAlertOnce: two writers whose flows raise the same
// alert take turns at it (Serialize): the second sees the first's alert
// and raises none.
func TestPostgresFlowTxAlertOnce(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	const key = "ssh|client|web|TCP"
	raise := func(tx store.FlowTx) (bool, error) {
		if err := tx.Serialize(); err != nil {
			return false, err
		}
		a, err := tx.LiveAlert(key)
		if err == nil {
			a.Count++
			return false, tx.UpdateAlert(&a)
		}
		if !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
		a = store.Alert{Rule: "ssh", Severity: "warning", Key: key, State: store.AlertOpen, Count: 1,
			Source: "client", Destination: "web", Protocol: "TCP", FirstSeen: at, LastSeen: at, Window: time.Hour}
		return true, tx.InsertAlert(&a)
	}
	release, first := openFlowTx(t, s, "node-a", func(tx store.FlowTx) error {
		if ok, err := raise(tx); err != nil || !ok {
			return fmt.Errorf("first writer raised %v: %v", ok, err)
		}
		return nil
	})
	var raised bool
	second := startFlowTx(s, []string{"node-b"}, func(tx store.FlowTx) error {
		var err error
		raised, err = raise(tx)
		return err
	})
	releaseWhenWaiting(t, s, release, first, second)
	if raised {
		t.Error("the second writer raised the alert again")
	}
	alerts, err := s.Alerts(ctx, store.AlertQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].Count != 2 {
		t.Errorf("alerts %+v, want one, counted twice", alerts)
	}
}

// TestPostgresFlowWritersWithHousekeeping: two writers storing batches
// (hourly partitions made as their flows need them, flows late for the
// rollup among them, each batch sent twice) while the housekeeping's
// rollup steps, retention (which makes partitions ahead) and index
// summaries run, all in bounded loops: every batch is stored once, the
// flow count is the table's, and the service map is the flows'.
func TestPostgresFlowWritersWithHousekeeping(t *testing.T) {
	s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{Partition: PartitionHour, PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	const batches, size = 30, 40
	var wg sync.WaitGroup
	writerErrs := make(chan error, 2)
	for w, node := range []string{"node-a", "node-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				// Batch i starts i*10 minutes after base: a new hour's
				// partition every six batches; every fifth batch is an
				// hour late (behind the rollup).
				at := base.Add(time.Duration(i) * 10 * time.Minute)
				if i%5 == 4 {
					at = at.Add(-time.Hour)
				}
				recs := nodeFlows(node, size, (w*batches+i)*size, at)
				for range 2 {
					if err := s.FlowTx(ctx, []string{node}, func(tx store.FlowTx) error {
						_, err := storeBatch(tx, node, uint64(i+1), recs)
						return err
					}); err != nil {
						writerErrs <- err
						return
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	housekept := 0
housekeeping:
	for range 100000 {
		select {
		case <-done:
			break housekeeping
		default:
		}
		until := base.Add(time.Duration(housekept%40) * 10 * time.Minute)
		if _, err := s.RollupFlowEdges(ctx, until, 50); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PruneFlows(ctx, base.Add(-48*time.Hour), 1000); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SummarizeFlowIndexes(ctx); err != nil {
			t.Fatal(err)
		}
		housekept++
	}
	<-done
	close(writerErrs)
	for err := range writerErrs {
		t.Fatal(err)
	}
	want := int64(2 * batches * size)
	if n, got := flowCount(t, s); n != want || int64(got) != want {
		t.Fatalf("%d flows counted, %d stored, want %d (each batch once)", n, got, want)
	}
	seen := map[string]bool{}
	recs, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		k := fmt.Sprint(r.Node, r.SrcPort, r.Time.UnixNano())
		if seen[k] {
			t.Fatalf("flow %s stored twice", k)
		}
		seen[k] = true
	}
	if n := countIn(t, s, "flows_default"); n != 0 {
		t.Errorf("%d flows in flows_default, want 0", n)
	}
	ranges := [][2]time.Time{{base.Add(-2 * time.Hour), base.Add(8 * time.Hour)}, {base.Add(17 * time.Minute), base.Add(3*time.Hour + 3*time.Second)}}
	storetest.CheckFlowEdges(t, s, fmt.Sprintf("after %d housekeeping passes", housekept), ranges...)
	storetest.RollupAll(t, s, base.Add(10*time.Hour))
	storetest.CheckFlowEdges(t, s, "rolled up", ranges...)
}
