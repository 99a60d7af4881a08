package postgres

import (
	"context"
	"regexp"
	"strconv"
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
// many have an index (the verdict's partial btree of migration 4, the
// BRIN bloom filters of migration 7), the paging lookup by id uses its
// index, and the newest-first page walks flows_time. With sequential
// scans disabled, a plan without an index means none serves the query.
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
		// columns: flows_pYYYYMMDDHH_<columns>_idx (cut at 63
		// characters). The BRIN index serves a query as a bitmap of page
		// ranges.
		// Values no stored flow has: the case an index is for (a
		// common value is found as fast walking flows_time).
		{"verdict = 0", " flows_p[0-9]+_verdict_time_idx "},
		{"dst_port = 7", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"rule = 'none'", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"(src_workload = 'wl-none' OR dst_workload = 'wl-none')", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"(src_workload = 'wl-none' OR dst_workload = 'wl-none')", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"(src_addr = '192.0.2.1' OR dst_addr = '192.0.2.1')", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"(src_addr = '192.0.2.1' OR dst_addr = '192.0.2.1')", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
		{"node = 'node-none'", "Bitmap Index Scan on flows_p[0-9]+_dst_port_rule_[a-z_]*idx "},
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

// TestPostgresFlowIndexSummaries: flows stored are in no BRIN summary
// until SummarizeFlowIndexes (the ingester's housekeeping) makes them: a
// filtered query then reads every new page; after, a value no flow has
// reads none (a bloom filter answers "maybe" for 1% of absent values:
// of five such values, at least one must read nothing). A second call
// finds nothing new; flows stored after it are summarized by the next.
func TestPostgresFlowIndexSummaries(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Hour)
	// 10,000 flows: many ranges of flowBRINPagesPerRange pages (the
	// first range of a partition is summarized, empty, when its indexes
	// are made; flows stored in it update its summaries).
	store := func(from int, at time.Time) {
		recs := make([]flowrecord.Record, 10_000)
		for i := range recs {
			recs[i] = storetest.FleetFlow(from+i, 100, at.Add(time.Duration(from+i)*time.Millisecond))
		}
		storetest.InsertFlows(t, s, recs)
	}
	store(0, at)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, stmt := range []string{"ANALYZE flows", "SET enable_seqscan = off", "SET enable_indexscan = off"} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	// heapBlocks is the heap pages the query for node read (EXPLAIN
	// ANALYZE's "Heap Blocks", 0 when it read none).
	heapBlocks := func(node string) int {
		plan := explain(t, conn, "(ANALYZE) SELECT * FROM flows WHERE node = '"+node+"'")
		if !strings.Contains(plan, "Bitmap Index Scan on flows_p") {
			t.Fatalf("the query for a node does not use its BRIN index:\n%s", plan)
		}
		n := 0
		for _, m := range regexp.MustCompile(`Heap Blocks: .*lossy=([0-9]+)`).FindAllStringSubmatch(plan, -1) {
			v, _ := strconv.Atoi(m[1])
			n += v
		}
		return n
	}
	if n := heapBlocks("node-none-0"); n == 0 {
		t.Fatalf("before the summaries, a query read no page: the new ranges are not read whole (or were summarized at insert):\n%s", explain(t, conn, "(ANALYZE) SELECT * FROM flows WHERE node = 'node-none-0'"))
	}
	n, err := s.SummarizeFlowIndexes(ctx)
	if err != nil || n == 0 {
		t.Fatalf("SummarizeFlowIndexes: %d ranges, %v; want some", n, err)
	}
	least := -1
	for i := range 5 {
		if b := heapBlocks("node-none-" + strconv.Itoa(i)); least < 0 || b < least {
			least = b
		}
	}
	if least != 0 {
		t.Errorf("after the summaries, every absent node's query read pages (least %d)", least)
	}
	if n, err := s.SummarizeFlowIndexes(ctx); err != nil || n != 0 {
		t.Errorf("second SummarizeFlowIndexes: %d ranges, %v; want none", n, err)
	}
	store(10_000, at)
	if n, err := s.SummarizeFlowIndexes(ctx); err != nil || n == 0 {
		t.Errorf("SummarizeFlowIndexes after more flows: %d ranges, %v; want some", n, err)
	}
	// Records from outside the partitions' window (an agent's clock far
	// off), in flows_default: summarized too.
	store(20_000, time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
	if n, err := s.SummarizeFlowIndexes(ctx); err != nil || n == 0 {
		t.Errorf("SummarizeFlowIndexes after flows outside the window: %d ranges, %v; want some", n, err)
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
		idx != "flows_filters flows_id flows_time flows_verdict" {
		t.Errorf("flows' indexes after migrations 4 and 7: %q, %v", idx, err)
	}
	// Migration 7's one BRIN index holds the seven filters (built over
	// the flows already stored).
	var am string
	var cols int
	if err := s.pool.QueryRow(ctx, `SELECT a.amname, x.indnatts FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
		JOIN pg_am a ON a.oid = i.relam WHERE x.indexrelid = 'flows_filters'::regclass`).Scan(&am, &cols); err != nil || am != "brin" || cols != 7 {
		t.Errorf("flows_filters: %s of %d columns, %v; want brin of 7", am, cols, err)
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

// TestPostgresSummarySetBounded: a hostile agent's records, each at
// another hour outside the partitions' window, leave one entry for the
// summaries (flows_default's), not one per hour: the set, and each
// housekeeping pass's work, stays bounded by the window.
func TestPostgresSummarySetBounded(t *testing.T) {
	s := openTest(t)
	recs := make([]flowrecord.Record, 500)
	for i := range recs {
		recs[i] = storetest.FleetFlow(i, 100, time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i)*37*time.Hour))
	}
	storetest.InsertFlows(t, s, recs)
	s.partMu.Lock()
	n, outside := len(s.unsummarized), len(s.unsummarized) == 1
	if outside {
		_, outside = s.unsummarized[outsideWindow]
	}
	s.partMu.Unlock()
	if !outside {
		t.Fatalf("%d partition starts noted for the summaries, want only outsideWindow", n)
	}
	if _, err := s.SummarizeFlowIndexes(context.Background()); err != nil {
		t.Fatal(err)
	}
}
