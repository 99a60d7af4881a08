package postgres

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// TestPostgresFlowIndexes: the flow queries that pick few rows out of
// many have an index (migration 4 keeps them), the paging lookup by id
// uses the BRIN index, and the newest-first page walks flows_time. With
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
		{"node = 'node-1'", "Index Scan Backward using flows_p[0-9]+_time_idx "},
		{"true", "Index Scan Backward using flows_p[0-9]+_time_idx "},
	} {
		plan := explain(t, conn, "SELECT * FROM flows WHERE "+c.where+" AND time > 0 ORDER BY time DESC, id DESC LIMIT 100")
		if !regexp.MustCompile(c.index).MatchString(plan) {
			t.Errorf("%s: plan does not use %s:\n%s", c.where, c.index, plan)
		}
	}
	if plan := explain(t, conn, "SELECT time FROM flows WHERE id = 1000"); !regexp.MustCompile("Bitmap Index Scan on flows_p[0-9]+_id_idx ").MatchString(plan) {
		t.Errorf("the paging lookup does not use the BRIN index on id:\n%s", plan)
	}
}

// explain is the plan of query on conn, a line per node.
func explain(t *testing.T, conn *pgxpool.Conn, query string) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "EXPLAIN "+query)
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
