package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// TestFlowIndexes: every filter of a flow query uses an index.
func TestFlowIndexes(t *testing.T) {
	s := openTest(t, t.TempDir())
	// Every filter uses an index.
	for _, cond := range []string{"verdict = 2", "dst_port = 22", "rule = 'x'", "src_workload = 'x' OR dst_workload = 'x'"} {
		var plan strings.Builder
		rows, err := s.edb.Query("EXPLAIN QUERY PLAN SELECT * FROM flows WHERE (" + cond + ") AND time > 0 ORDER BY time DESC")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, parent, unused int
			var detail string
			rows.Scan(&id, &parent, &unused, &detail)
			plan.WriteString(detail + "; ")
		}
		rows.Close()
		if !strings.Contains(plan.String(), "USING INDEX") || strings.Contains(plan.String(), "SCAN flows") {
			t.Errorf("%s: plan %s", cond, plan.String())
		}
	}
}

func TestEventStoreFull(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, WithEventMaxPages(64))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	base := time.Now()
	var full error
	stored := 0
	for i := range 200 { // bounded: 64 pages hold far fewer than 200*100 flows
		recs := make([]flowrecord.Record, 100)
		for j := range recs {
			recs[j] = storetest.Flow(i*100+j, base)
		}
		err := s.EventTx(ctx, func(tx store.EventTx) error { return tx.InsertFlows(recs) })
		if err != nil {
			full = err
			break
		}
		stored += len(recs)
	}
	if !errors.Is(full, store.ErrFull) || !strings.HasPrefix(full.Error(), "store full: ") {
		t.Fatalf("error when full: %v", full)
	}
	if _, count, err := s.EventStoreSize(ctx); err != nil || count != int64(stored) {
		t.Errorf("flows stored %d, want %d (nothing of the refused batch): %v", count, stored, err)
	}
	if err := s.AddAdminToken(ctx, store.AdminToken{ID: "id", SecretHash: "hash", Created: base}); err != nil {
		t.Errorf("control-plane store not writable: %v", err)
	}
	// Deleting the oldest makes room again.
	if _, err := s.PruneOldestFlows(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	if err := s.EventTx(ctx, func(tx store.EventTx) error { return tx.InsertFlows([]flowrecord.Record{storetest.Flow(1, base)}) }); err != nil {
		t.Errorf("after pruning: %v", err)
	}
}

// TestAlertsMigrationKeepsLiveAlerts: an event store written before the
// ports columns (migration 2) upgrades with every alert listing its one

func TestAlertsMigrationKeepsLiveAlerts(t *testing.T) {
	ctx := context.Background()
	dir, db := eventsDBAt(t, 1)
	var err error
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	_, err = db.ExecContext(ctx, `INSERT INTO alerts (rule, severity, dedup_key, state, count, source, destination,
		src_workload, dst_workload, src_addr, dst_addr, src_labels, dst_labels, port, protocol, verdict, deciding_rule, node,
		first_seen, last_seen, window_ns, notify, created) VALUES ('ssh', 'critical', 'ssh|a|b|22/TCP', 'open', 3, 'a', 'b',
		'', '', '192.0.2.1', '192.0.2.2', '{}', '{}', 22, 'TCP', 'denied', 'default-deny', 'n', ?, ?, ?, '[]', ?)`,
		now.UnixNano(), now.UnixNano(), int64(time.Minute), now.UnixNano())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openTest(t, dir)
	err = s.EventTx(ctx, func(tx store.EventTx) error {
		as, err := tx.ExpiredAlerts(now.Add(time.Minute+time.Second), 10)
		if err != nil {
			return err
		}
		if len(as) != 1 || !slices.Equal(as[0].Ports, []uint16{22}) || as[0].PortCount != 1 || as[0].PortSet != nil || as[0].Folded != 0 {
			t.Errorf("expired alerts after the upgrade: %+v", as)
		}
		if as, err := tx.ExpiredAlerts(now.Add(time.Minute), 10); err != nil || len(as) != 0 {
			t.Errorf("alerts expired at the end of the window (not past it): %+v, %v", as, err)
		}
		if as, err := tx.AlertsToRefresh(now, 10); err != nil || len(as) != 1 || !as[0].RefreshedAt.Equal(now) {
			t.Errorf("alerts to refresh after the upgrade: %+v, %v", as, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestWebhookStats: per webhook, the last successful delivery, the last

func TestFlowVolumeMigration(t *testing.T) {
	ctx := context.Background()
	dir, db := eventsDBAt(t, 2)
	var err error
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	_, err = db.ExecContext(ctx, `INSERT INTO flows (time, node, direction, protocol, src_addr, src_port, src_workload,
		src_identity, dst_addr, dst_port, dst_workload, dst_identity, verdict, rule, packets, bytes, first_seen, last_seen)
		VALUES (?, 'n', 0, 'TCP', '10.250.0.1', 40000, '', 0, '10.250.0.2', 22, '', 0, 2, 'default-deny', 3, 180, ?, ?)`, at, at, at)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openTest(t, dir)
	got, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil || len(got) != 1 {
		t.Fatalf("flows: %d, %v", len(got), err)
	}
	if r := got[0]; r.State != flowrecord.StateNew || r.PacketsSent != 3 || r.BytesSent != 180 || r.PacketsReceived != 0 || r.BytesReceived != 0 {
		t.Errorf("migrated record: %+v", r)
	}
}

// TestFlowEdgesMigration: the rollup (migration 5) is filled from the
// flows stored before it, and FlowEdges then answers what grouping the
// flows one by one gives, also once more flows of the same minutes are
// stored; packets and bytes wrap around as Go's sums do, whether summed
// in the fill, in a batch or in the upsert (SQLite's own + would turn
// them into REALs).
func TestFlowEdgesMigration(t *testing.T) {
	ctx := context.Background()
	dir, db := eventsDBAt(t, 4)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	huge := uint64(1<<63 + 5)
	for i := range 200 {
		r := storetest.EdgeMigrationFlow(i, base.Add(time.Duration(i)*7777*time.Millisecond), huge)
		if _, err := db.ExecContext(ctx, "INSERT INTO flows ("+rc.FlowColumns+") VALUES (?"+strings.Repeat(", ?", 25)+")", rc.FlowArgs(&r)...); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s := openTest(t, dir)
	var n int
	if err := s.edb.QueryRowContext(ctx, "SELECT COUNT(*) FROM flow_edges").Scan(&n); err != nil || n == 0 {
		t.Fatalf("rollup rows after the migration: %d, %v", n, err)
	}
	storetest.CheckMigratedFlowEdges(t, s, base, huge)
}

// eventsDBAt makes an events database in a new directory with the first n
// migrations applied, as a controller of that time left it, for a test of
// the later migrations to open.
func eventsDBAt(t *testing.T, n int) (dir string, db *sql.DB) {
	t.Helper()
	dir = t.TempDir()
	db, err := openDB(dir+"/"+EventsFile, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(context.Background(), db, eventMigrations[:n], nil); err != nil {
		t.Fatal(err)
	}
	return dir, db
}
