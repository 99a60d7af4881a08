// Package sqlitetest seeds a SQLite store with flows at scale for
// benchmarks: the store's own benchmarks (BenchmarkDashboard) and the
// dashboard's end-to-end page benchmark (BenchmarkBrowserPages) share it,
// so that both measure the same data.
//
// Only tests import it. It must not import anything under agent/.
package sqlitetest

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/controller/store/sqlite"
)

// Seed is what SeedFlows inserts: Flows flows between Workloads workloads
// named wl-0 .. wl-<Workloads-1>, their times spread evenly over Span
// ending at Now, oldest first. One flow in 20 comes from an unmanaged
// address (203.0.113.x); ports are 22, 53 (UDP), 80, 443, 5432, 6379,
// 8080, 9090 and 1024-1073; one flow in 7 is denied (default-deny), one
// in 11 would-deny; the node is node-<dst % 100>. Workload i has address
// 10.1.<i/250>.<i%250>. Each (source, destination) pair carries one port,
// so the map of any range holds at most about 3 edges per pair.
type Seed struct {
	Flows     int
	Workloads int
	Span      time.Duration
	Now       time.Time
}

// SeedFlows bulk-inserts the seed's flows into the store whose data
// directory is dataDir (sqlite.Open's; the store may be open), by SQL (a
// recursive CTE) rather than through the ingest, on one connection with a
// large page cache, the flows' indexes dropped during the insert and built
// again after it (sorting is much faster than random index insertions),
// then the service map's rollup (flow_edges) from them.
// 1,000,000 flows take about a minute on a 2-core machine.
func SeedFlows(tb testing.TB, dataDir string, s Seed) {
	tb.Helper()
	ctx := context.Background()
	q := url.Values{}
	q.Set("_busy_timeout", "60000")
	q.Set("_journal_mode", "WAL")
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, sqlite.EventsFile)+"?"+q.Encode())
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.QueryContext(ctx, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flows' AND sql IS NOT NULL")
	if err != nil {
		tb.Fatal(err)
	}
	var names, indexes []string
	for rows.Next() {
		var name, sql string
		if err := rows.Scan(&name, &sql); err != nil {
			tb.Fatal(err)
		}
		names, indexes = append(names, name), append(indexes, sql)
	}
	rows.Close()
	if len(indexes) == 0 {
		tb.Fatalf("seed %s: the flows table has no index: not a migrated store", dataDir)
	}
	exec := func(q string, args ...any) {
		tb.Helper()
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			tb.Fatalf("%.60s: %v", q, err)
		}
	}
	exec("PRAGMA cache_size = -524288")
	for _, name := range names {
		exec("DROP INDEX " + name)
	}
	exec(`
INSERT INTO flows (time, node, direction, protocol, src_addr, src_port, src_workload, src_identity, dst_addr, dst_port,
	dst_workload, dst_identity, verdict, rule, packets, bytes, first_seen, last_seen, reason,
	packets_sent, packets_received, bytes_sent, bytes_received, state)
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1),
r(i, t, src, dst, port, verdict) AS (
	SELECT i, ?2 - (?1 - i) * ?3 / ?1, (i * 7919) % ?4, (i * 104729 + 17) % ?4,
		CASE i % 10 WHEN 0 THEN 22 WHEN 1 THEN 53 WHEN 2 THEN 80 WHEN 3 THEN 443 WHEN 4 THEN 5432 WHEN 5 THEN 6379
			WHEN 6 THEN 8080 WHEN 7 THEN 9090 ELSE 1024 + i % 50 END,
		CASE WHEN i % 7 = 0 THEN 2 WHEN i % 11 = 0 THEN 3 ELSE 1 END
	FROM c)
SELECT t, 'node-' || (dst % 100), 0, CASE WHEN port = 53 THEN 'UDP' ELSE 'TCP' END,
	CASE WHEN i % 20 = 0 THEN '203.0.113.' || (i % 250) ELSE '10.1.' || (src / 250) || '.' || (src % 250) END, 30000 + i % 30000,
	CASE WHEN i % 20 = 0 THEN '' ELSE 'wl-' || src END, src + 256,
	'10.1.' || (dst / 250) || '.' || (dst % 250), port, 'wl-' || dst, dst + 256,
	verdict, CASE verdict WHEN 1 THEN 'shop/rule-' || (port % 97) WHEN 2 THEN 'default-deny' ELSE 'audit/no-' || port END,
	3, 180, t - 1000000, t, '', 3, 0, 180, 0, 'new'
FROM r`, s.Flows, s.Now.UnixNano(), int64(s.Span), s.Workloads)
	for _, sql := range indexes {
		exec(sql)
	}
	// The service map's rollup (events migration 5), as the ingest keeps
	// it: every bucket of each width, summed by SQL (the seed's times are
	// positive and its sums small: no wrap-around to mind).
	for _, span := range rowcodec.EdgeSpans {
		exec(`
INSERT INTO flow_edges (span, bucket, key, src_workload, dst_workload, flows, packets, bytes, first_time, last_time)
SELECT ?1, time - time % ?1, `+rowcodec.EdgeKeySQL("src_workload", "(CASE WHEN src_workload = '' THEN src_addr ELSE '' END)",
			"dst_workload", "(CASE WHEN dst_workload = '' THEN dst_addr ELSE '' END)", "protocol", "dst_port", "verdict")+` AS k,
	src_workload, dst_workload,
	SUM(state = 'new'), SUM(CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> 1) THEN packets ELSE 0 END),
	SUM(CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> 1) THEN bytes ELSE 0 END), MIN(time), MAX(time)
FROM flows GROUP BY 2, k`, span)
	}
	exec("ANALYZE")
}
