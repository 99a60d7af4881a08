package postgres

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestPostgresFlowIndexes: the flow queries that pick few rows out of
// many have an index (migration 4 keeps them), the paging lookup by id
// uses its index, and the newest-first page walks flows_time. With
// sequential scans disabled, a plan without an index means none serves
// the query.
func TestPostgresFlowIndexes(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Hour)
	recs := make([]flowrecord.Record, 2000)
	for i := range recs {
		recs[i] = storetest.FleetFlow(i, 100, at.Add(time.Duration(i)*time.Millisecond))
	}
	storetest.InsertFlows(t, s, recs)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, stmt := range []string{"ANALYZE flows", "SET enable_seqscan = off"} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ where, index string }{
		// A partition's indexes are named by PostgreSQL after their
		// columns: flows_pYYYYMMDDHH_<columns>_idx.
		// Values no stored flow has: the case an index is for (a
		// common value is found as fast walking flows_time).
		{"verdict = 0", " flows_p[0-9]+_verdict_time_idx "},
		{"dst_port = 7", " flows_p[0-9]+_dst_port_time_idx "},
		{"rule = 'none'", " flows_p[0-9]+_rule_time_idx "},
		{"(src_workload = 'wl-none' OR dst_workload = 'wl-none')", " flows_p[0-9]+_src_workload_time_idx "},
		{"(src_workload = 'wl-none' OR dst_workload = 'wl-none')", " flows_p[0-9]+_dst_workload_time_idx "},
		{"(src_addr = '192.0.2.1' OR dst_addr = '192.0.2.1')", " flows_p[0-9]+_src_addr_time_idx "},
		{"(src_addr = '192.0.2.1' OR dst_addr = '192.0.2.1')", " flows_p[0-9]+_dst_addr_time_idx "},
		{"node = 'node-none'", " flows_p[0-9]+_node_time_idx "},
		{"protocol = 'ICMP'", "Index Scan Backward using flows_p[0-9]+_time_idx "},
		{"true", "Index Scan Backward using flows_p[0-9]+_time_idx "},
	} {
		plan := explain(t, conn, "SELECT * FROM flows WHERE "+c.where+" AND time > 0 ORDER BY time DESC, id DESC LIMIT 100")
		if !regexp.MustCompile(c.index).MatchString(plan) {
			t.Errorf("%s: plan does not use %s:\n%s", c.where, c.index, plan)
		}
	}
	// The query ScanFlows sends for denied flows, with its parameters as
	// it sends them (QueryExecModeExec), uses the partial index of the
	// verdicts other than allowed; allowed flows are not in it. (One
	// denied flow in 7 here: the big partition is walked by time, the
	// cheaper plan; the empty default partition's plan shows the partial
	// index usable, which a generic plan, not knowing the verdict, is
	// not.)
	f := rc.NewFlowFilter(store.FlowQuery{Verdict: ruleset.VerdictDenied, Limit: 100}, "%s = ANY(?)", nil)
	if plan := explain(t, conn, q(f.Query(store.FlowQuery{Limit: 100})), append([]any{pgx.QueryExecModeExec}, f.Args...)...); !regexp.MustCompile(" flows_default_verdict_time_idx ").MatchString(plan) {
		t.Errorf("ScanFlows' query of denied flows does not use the verdict index:\n%s", plan)
	}
	var inIndex int64
	if err := conn.QueryRow(ctx, "SELECT COUNT(*) FROM flows WHERE verdict <> $1", int64(ruleset.VerdictAllowed)).Scan(&inIndex); err != nil || inIndex == 0 || inIndex == int64(len(recs)) {
		t.Errorf("%d of %d flows not allowed: the partial index's predicate (verdict <> 1) must be VerdictAllowed's: %v", inIndex, len(recs), err)
	}
	if plan := explain(t, conn, "SELECT time FROM flows WHERE id = 1000"); !regexp.MustCompile("Index Scan using flows_p[0-9]+_id_idx ").MatchString(plan) {
		t.Errorf("the paging lookup does not use the index on id:\n%s", plan)
	}
}

// explain is the plan of query on conn, a line per node.
func explain(t *testing.T, conn *pgxpool.Conn, query string, args ...any) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "EXPLAIN "+query, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", query, err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		b.WriteString(line + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestPostgresMigration4: a database with flows at schema version 3
// migrates to the leaner indexes with its flows counted in flow_count;
// the count then follows inserts, a rolled-back insert and retention.
func TestPostgresMigration4(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	pool := migratedTo(t, dsn, 3)
	// Three flows stored by the old schema (in flows_default: no
	// partition made yet).
	old := time.Now().Add(-48 * time.Hour).UnixNano()
	if _, err := pool.Exec(ctx, `INSERT INTO flows (`+rc.FlowColumns+`)
		SELECT $1::BIGINT + i, 'node-a', 0, 'TCP', '10.1.0.1', 1, 'a', 1, '10.1.0.2', 22, 'b', 2, 1, 'r', 1, 60, 0, 0, NULL, NULL, '', 0, 0, 0, 0, 'new'
		FROM generate_series(1, 3) i`, old); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	s, err := openDSN(t, dsn, testKey(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	count := func(want int64) {
		t.Helper()
		_, n, err := s.EventStoreSize(ctx)
		var real int64
		if err == nil {
			err = s.pool.QueryRow(ctx, "SELECT COUNT(*) FROM flows").Scan(&real)
		}
		if err != nil || n != want || real != want {
			t.Errorf("flow count %d, COUNT(*) %d, want %d: %v", n, real, want, err)
		}
	}
	count(3)
	var idx string
	if err := s.pool.QueryRow(ctx, `SELECT string_agg(indexname, ' ' ORDER BY indexname) FROM pg_indexes
		WHERE tablename = 'flows'`).Scan(&idx); err != nil ||
		idx != "flows_dst_addr flows_dst_port flows_dst_workload flows_id flows_node flows_rule flows_src_addr flows_src_workload flows_time flows_verdict" {
		t.Errorf("flows' indexes after migration 4: %q, %v", idx, err)
	}
	var pred string
	if err := s.pool.QueryRow(ctx, "SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = 'flows_verdict'::regclass").Scan(&pred); err != nil || pred != "(verdict <> 1)" {
		t.Errorf("flows_verdict's predicate %q, %v", pred, err)
	}
	now := time.Now()
	recs := []flowrecord.Record{storetest.Flow(0, now), storetest.Flow(1, now), storetest.Flow(2, now)}
	storetest.InsertFlows(t, s, recs)
	count(6)
	storetest.InsertFlowsRolledBack(t, s, recs)
	count(6)
	if n, err := s.PruneFlows(ctx, now.Add(-time.Hour), 1); err != nil || n != 1 {
		t.Errorf("prune by age: %d, %v", n, err)
	}
	count(5)
	if n, err := s.PruneOldestFlows(ctx, 3); err != nil || n != 3 {
		t.Errorf("prune oldest: %d, %v", n, err)
	}
	count(2)
	// A count gone wrong (flows deleted by hand, the count not fixed) is
	// not taken for an empty table: size retention stops at 0.
	if _, err := s.pool.Exec(ctx, "DELETE FROM flows WHERE id = (SELECT MIN(id) FROM flows)"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "UPDATE flow_count SET n = 0"); err != nil {
		t.Fatal(err)
	}
	count(1)
}
