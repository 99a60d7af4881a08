package sqlite

import (
	"context"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// Dashboard query cost at scale (issue 17: a filtered flow query well
// under 200 ms and the service map of the last hour under 1 s, with
// 1,000,000 stored flows of 1,000 workloads). Measure with
//
//	go test -run '^$' -bench Dashboard -benchtime 20x ./controller/store/sqlite/
//
// The store is seeded once, by SQL (a recursive CTE), not through the
// ingest: 1,000,000 flows over the last 24 hours (about 42,000 in the
// last hour), between 1,000 workloads and, for one flow in 20, an
// unmanaged address; ports 22, 53, 80, 443, 5432, 6379, 8080, 9090 and
// others; one flow in 7 denied, one in 11 would-deny.

const (
	benchFlows     = 1_000_000
	benchWorkloads = 1000
	benchSpan      = 24 * time.Hour
)

// seedFlows bulk-inserts n flows ending at now, oldest first, on one
// connection with a large page cache, the flows' indexes dropped during
// the insert and built again after it (sorting is much faster than
// n random index insertions).
func seedFlows(b *testing.B, s *SQLite, n int, now time.Time) {
	b.Helper()
	ctx := context.Background()
	conn, err := s.edb.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.QueryContext(ctx, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flows' AND sql IS NOT NULL")
	if err != nil {
		b.Fatal(err)
	}
	var names, indexes []string
	for rows.Next() {
		var name, sql string
		if err := rows.Scan(&name, &sql); err != nil {
			b.Fatal(err)
		}
		names, indexes = append(names, name), append(indexes, sql)
	}
	rows.Close()
	exec := func(q string, args ...any) {
		b.Helper()
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			b.Fatalf("%.60s: %v", q, err)
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
FROM r`, n, now.UnixNano(), int64(benchSpan), benchWorkloads)
	for _, sql := range indexes {
		exec(sql)
	}
	exec("ANALYZE")
}

func BenchmarkDashboard(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	now := time.Now()
	start := time.Now()
	seedFlows(b, s, benchFlows, now)
	b.Logf("seeded %d flows in %s", benchFlows, time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	lastHour := now.Add(-time.Hour)
	page := func(q store.FlowQuery) []int64 {
		var ids []int64
		if err := s.ScanFlows(ctx, q, func(id int64, _ *flowrecord.Record) error {
			ids = append(ids, id)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		return ids
	}
	b.Run("FlowsPort22LastHour", func(b *testing.B) {
		for b.Loop() {
			if ids := page(store.FlowQuery{Since: lastHour, Port: 22, HasPort: true, Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	first := page(store.FlowQuery{Limit: 100})
	b.Run("FlowsPageBefore", func(b *testing.B) {
		for b.Loop() {
			if ids := page(store.FlowQuery{Before: first[99], Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	port22 := page(store.FlowQuery{Port: 22, HasPort: true, Limit: 5000})
	b.Run("FlowsPort22PageBefore", func(b *testing.B) {
		for b.Loop() {
			if ids := page(store.FlowQuery{Port: 22, HasPort: true, Before: port22[4999], Limit: 100}); len(ids) != 100 {
				b.Fatalf("%d flows", len(ids))
			}
		}
	})
	b.Run("FlowsWorkloadLastHour", func(b *testing.B) {
		for b.Loop() {
			page(store.FlowQuery{Since: lastHour, Workload: "wl-42", Limit: 100})
		}
	})
	b.Run("FlowsLabelLastHour", func(b *testing.B) {
		// A label of 50 workloads.
		names := make([]string, 50)
		for i := range names {
			names[i] = "wl-" + string(rune('0'+i/10)) + string(rune('0'+i%10))
		}
		for b.Loop() {
			page(store.FlowQuery{Since: lastHour, ByWorkloads: true, Workloads: names, Limit: 100})
		}
	})
	b.Run("MapLastHour", func(b *testing.B) {
		for b.Loop() {
			edges, err := s.FlowEdges(ctx, lastHour, now, 20001)
			if err != nil || len(edges) == 0 {
				b.Fatalf("%d edges: %v", len(edges), err)
			}
		}
	})
	b.Run("RuleCountsLastHour", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.RuleCounts(ctx, lastHour, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
