package sqlite

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// rangeArgs are the bounds of a time range as SQL arguments; a zero
// until is no bound.
func rangeArgs(since, until time.Time) (int64, int64) {
	u := int64(1<<63 - 1)
	if !until.IsZero() {
		u = until.UnixNano()
	}
	return since.UnixNano(), u
}

// FlowEdges groups the range's flows from the covering index flows_map
// (migration 4): the table itself is not read.
func (s *SQLite) FlowEdges(ctx context.Context, since, until time.Time, limit int) ([]store.FlowEdge, error) {
	return s.flowEdges(ctx, since, until, "", limit)
}

// FlowEdgesOf is FlowEdges of one workload's flows, from the same index.
func (s *SQLite) FlowEdgesOf(ctx context.Context, since, until time.Time, workload string, limit int) ([]store.FlowEdge, error) {
	return s.flowEdges(ctx, since, until, workload, limit)
}

// flowEdges groups the range's flows; a workload other than "" keeps
// only its flows.
func (s *SQLite) flowEdges(ctx context.Context, since, until time.Time, workload string, limit int) ([]store.FlowEdge, error) {
	lo, hi := rangeArgs(since, until)
	rows, err := s.edb.QueryContext(ctx, `
SELECT src_workload, CASE WHEN src_workload = '' THEN src_addr ELSE '' END AS src,
	dst_workload, CASE WHEN dst_workload = '' THEN dst_addr ELSE '' END AS dst,
	protocol, dst_port, verdict,
	SUM(state = 'new') AS n,
	SUM(CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> ?) THEN packets ELSE 0 END),
	SUM(CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> ?) THEN bytes ELSE 0 END),
	MIN(time), MAX(time)
FROM flows INDEXED BY flows_map
WHERE time >= ? AND time < ? AND (? = '' OR src_workload = ? OR dst_workload = ?)
GROUP BY src_workload, src, dst_workload, dst, protocol, dst_port, verdict
ORDER BY n DESC, src_workload, src, dst_workload, dst, protocol, dst_port, verdict
LIMIT ?`, int64(ruleset.VerdictAllowed), int64(ruleset.VerdictAllowed), lo, hi, workload, workload, workload, limit)
	if err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	defer rows.Close()
	var out []store.FlowEdge
	for rows.Next() {
		var e store.FlowEdge
		var src, dst string
		var port, verdict, n, packets, bytes, first, last int64
		if err := rows.Scan(&e.SrcWorkload, &src, &e.DstWorkload, &dst, &e.Protocol, &port, &verdict, &n, &packets, &bytes, &first, &last); err != nil {
			return nil, fmt.Errorf("read flow edges: %w", err)
		}
		e.SrcAddr, _ = netip.ParseAddr(src)
		e.DstAddr, _ = netip.ParseAddr(dst)
		e.Port, e.Verdict = uint16(port), ruleset.Verdict(verdict)
		e.Flows, e.Packets, e.Bytes = uint64(n), uint64(packets), uint64(bytes)
		e.FirstSeen, e.LastSeen = rc.FromNanos(first), rc.FromNanos(last)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	return out, nil
}

// RuleCounts counts new flows (first records: one per connection
// attempt) by rule and verdict.
func (s *SQLite) RuleCounts(ctx context.Context, since, until time.Time) ([]store.RuleCount, error) {
	lo, hi := rangeArgs(since, until)
	rows, err := s.edb.QueryContext(ctx, `SELECT rule, verdict, COUNT(*) FROM flows INDEXED BY flows_map
WHERE time >= ? AND time < ? AND state = 'new' GROUP BY rule, verdict ORDER BY rule, verdict`, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("count flows by rule: %w", classify(err))
	}
	defer rows.Close()
	var out []store.RuleCount
	for rows.Next() {
		var c store.RuleCount
		var verdict, n int64
		if err := rows.Scan(&c.Rule, &verdict, &n); err != nil {
			return nil, fmt.Errorf("count flows by rule: %w", err)
		}
		c.Verdict, c.Flows = ruleset.Verdict(verdict), uint64(n)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count flows by rule: %w", classify(err))
	}
	return out, nil
}
