package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
)

// TestPostgresFlowEdgesMigration: the rollup (migration 5) is filled
// from the flows stored before it, and FlowEdges then answers what
// grouping the flows one by one gives, also once more flows of the same
// minutes are stored.
func TestPostgresFlowEdgesMigration(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	pool := migratedTo(t, dsn, 4)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := range 200 {
		r := storetest.EdgeMigrationFlow(i, base.Add(time.Duration(i)*7777*time.Millisecond), 0)
		if _, err := pool.Exec(ctx, q("INSERT INTO flows ("+rc.FlowColumns+") VALUES (?"+strings.Repeat(", ?", 25)+")"), rc.FlowArgs(&r)...); err != nil {
			t.Fatal(err)
		}
	}
	pool.Close()
	s, err := openDSN(t, dsn, testKey(t), Config{PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT COUNT(*) FROM flow_edges").Scan(&n); err != nil || n == 0 {
		t.Fatalf("rollup rows after the migration: %d, %v", n, err)
	}
	storetest.CheckMigratedFlowEdges(t, s, base, 0)
}

// migratedTo opens a pool on dsn's database brought to schema version n
// (a database as an older controller left it).
func migratedTo(t *testing.T, dsn string, n int) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(context.Background(), pool, migrations[:n]); err != nil {
		t.Fatal(err)
	}
	return pool
}
