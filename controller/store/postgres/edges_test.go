package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// TestPostgresFlowEdgesMigration: the rollup (migration 5) is filled
// from the flows stored before it, and FlowEdges then answers what
// grouping the flows one by one gives, also once more flows of the same
// minutes are stored.
func TestPostgresFlowEdgesMigration(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(ctx, pool, migrations[:4]); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	flow := func(i int, at time.Time) flowrecord.Record {
		r := storetest.Flow(i, at)
		r.State = []flowrecord.State{flowrecord.StateNew, flowrecord.StateClosed, flowrecord.StateActive}[i%3]
		r.Packets, r.Bytes = uint64(i), uint64(100*i)
		return r
	}
	for i := range 200 {
		r := flow(i, base.Add(time.Duration(i)*7777*time.Millisecond))
		if _, err := pool.Exec(ctx, q("INSERT INTO flows ("+rc.FlowColumns+") VALUES (?"+strings.Repeat(", ?", 25)+")"), rc.FlowArgs(&r)...); err != nil {
			t.Fatal(err)
		}
	}
	pool.Close()
	s, err := openDSN(t, dsn, testKey(t), Config{PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		all, err := s.Flows(ctx, store.FlowQuery{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]time.Duration{{0, time.Hour}, {90 * time.Second, 25*time.Minute + 3*time.Second}, {10 * time.Minute, 20 * time.Minute}} {
			since, until := base.Add(r[0]), base.Add(r[1])
			got, err := s.FlowEdges(ctx, since, until, 100)
			if err != nil {
				t.Fatal(err)
			}
			want := storetest.BruteFlowEdges(all, since, until, "")
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
				t.Errorf("%s: edges of %v..%v\n got %+v\nwant %+v", when, r[0], r[1], got, want)
			}
		}
	}
	check("migrated")
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT COUNT(*) FROM flow_edges").Scan(&n); err != nil || n == 0 {
		t.Fatalf("rollup rows after the migration: %d, %v", n, err)
	}
	var recs []flowrecord.Record
	for i := range 100 {
		recs = append(recs, flow(i, base.Add(time.Duration(i)*3333*time.Millisecond)))
	}
	storetest.InsertFlows(t, s, recs)
	check("stored after")
}
