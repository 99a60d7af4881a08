package postgres

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The service map's rollup (migration 5): flow_edges, kept with the
// flows it sums. See rowcodec's edges.go for the buckets and how a range
// is split.

// pgEdgeSums are a batch's sums of one rollup row, packets and bytes
// exact (NUMERIC, as SUM over BIGINT is: no wrap-around).
type pgEdgeSums struct {
	flows, first, last int64
	packets, bytes     big.Int
}

// addFlowEdges adds a batch of records, just stored, to the rollup in
// tx: summed here per row, then one upsert of the batch's rows.
func addFlowEdges(ctx context.Context, tx pgx.Tx, recs []flowrecord.Record) error {
	sums := map[rc.EdgeBucket]*pgEdgeSums{}
	var v big.Int
	for i := range recs {
		k, t, state, packets, bytes := rc.RecordEdge(&recs[i])
		for _, span := range rc.EdgeSpans {
			b := rc.EdgeBucket{Span: span, Bucket: rc.FloorTo(t, span), EdgeKey: k}
			e := sums[b]
			if e == nil {
				e = &pgEdgeSums{first: t, last: t}
				sums[b] = e
			}
			if state == string(flowrecord.StateNew) {
				e.flows++
			}
			if rc.CountsVolume(state, k.Verdict) {
				e.packets.Add(&e.packets, v.SetInt64(packets))
				e.bytes.Add(&e.bytes, v.SetInt64(bytes))
			}
			e.first, e.last = min(e.first, t), max(e.last, t)
		}
	}
	if len(sums) == 0 {
		return nil
	}
	var (
		spans, buckets, flows, firsts, lasts []int64
		srcWs, srcs, dstWs, dsts, protos     []string
		ports, verdicts                      []int32
		packets, bytes                       []string
	)
	for b, e := range sums {
		spans, buckets = append(spans, b.Span), append(buckets, b.Bucket)
		srcWs, srcs, dstWs, dsts = append(srcWs, b.SrcWorkload), append(srcs, b.Src), append(dstWs, b.DstWorkload), append(dsts, b.Dst)
		protos, ports, verdicts = append(protos, b.Protocol), append(ports, int32(b.Port)), append(verdicts, int32(b.Verdict))
		flows, firsts, lasts = append(flows, e.flows), append(firsts, e.first), append(lasts, e.last)
		packets, bytes = append(packets, e.packets.String()), append(bytes, e.bytes.String())
	}
	_, err := tx.Exec(ctx, `INSERT INTO flow_edges (span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict,
	flows, packets, bytes, first_time, last_time)
SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::INTEGER[], $9::INTEGER[],
	$10::BIGINT[], $11::TEXT[]::NUMERIC[], $12::TEXT[]::NUMERIC[], $13::BIGINT[], $14::BIGINT[])
ON CONFLICT (span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict) DO UPDATE SET
	flows = flow_edges.flows + excluded.flows, packets = flow_edges.packets + excluded.packets,
	bytes = flow_edges.bytes + excluded.bytes, first_time = LEAST(flow_edges.first_time, excluded.first_time),
	last_time = GREATEST(flow_edges.last_time, excluded.last_time)`,
		spans, buckets, srcWs, srcs, dstWs, dsts, protos, ports, verdicts, flows, packets, bytes, firsts, lasts)
	if err != nil {
		return fmt.Errorf("flow edges: %w", err)
	}
	return nil
}

// dropFlowEdges is retention's share of the rollup, in the transaction
// (holding lockEvents) that deleted flows recorded up to last: the rows
// of every bucket up to the one holding last go, and flow_edges_from
// moves past them (never back). Which flows were deleted does not
// matter: no bucket after the horizon lost any, and FlowEdges reads the
// range before it from the flows.
func dropFlowEdges(ctx context.Context, tx pgx.Tx, last int64) error {
	for _, span := range rc.EdgeSpans {
		if _, err := tx.Exec(ctx, `INSERT INTO flow_edges_from (span, bucket) VALUES ($1, $2)
			ON CONFLICT (span) DO UPDATE SET bucket = GREATEST(flow_edges_from.bucket, excluded.bucket)`, span, rc.EdgeHorizon(last, span)); err != nil {
			return fmt.Errorf("flow edges: %w", err)
		}
		if _, err := tx.Exec(ctx, "DELETE FROM flow_edges WHERE span = $1 AND bucket < (SELECT bucket FROM flow_edges_from WHERE span = $1)", span); err != nil {
			return fmt.Errorf("flow edges: %w", err)
		}
	}
	return nil
}

// flowEdges groups the range's flows; a workload other than "" keeps
// only its flows. The range is split by rowcodec.EdgeCover: whole
// buckets from the rollup, the flows of partial ones at the ends from
// flows, summed together in one statement (one snapshot).
func (s *Postgres) flowEdges(ctx context.Context, since, until time.Time, workload string, limit int) ([]store.FlowEdge, error) {
	lo, hi := rangeArgs(since, until)
	// One snapshot for the horizon and the sums: retention moving it
	// meanwhile must not hide the buckets it deleted from both.
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	defer tx.Rollback(ctx)
	from := rc.NoHorizon()
	rows, err := tx.Query(ctx, "SELECT span, bucket FROM flow_edges_from")
	if err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	for rows.Next() {
		var span, bucket int64
		if err := rows.Scan(&span, &bucket); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read flow edges: %w", err)
		}
		for i, sp := range rc.EdgeSpans {
			if sp == span {
				from[i] = bucket
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	args := []any{workload}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	var allowed string
	var parts []string
	for _, r := range rc.EdgeCover(lo, hi, from) {
		if r.Span == 0 {
			if allowed == "" {
				allowed = arg(int64(ruleset.VerdictAllowed))
			}
			parts = append(parts, `SELECT src_workload, CASE WHEN src_workload = '' THEN src_addr ELSE '' END AS src,
	dst_workload, CASE WHEN dst_workload = '' THEN dst_addr ELSE '' END AS dst, protocol, dst_port AS port, verdict,
	CASE WHEN state = 'new' THEN 1 ELSE 0 END::BIGINT AS flows,
	CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> `+allowed+`) THEN packets::NUMERIC END AS packets,
	CASE WHEN state = 'closed' OR (state = 'new' AND verdict <> `+allowed+`) THEN bytes::NUMERIC END AS bytes,
	time AS first_time, time AS last_time
FROM flows WHERE time >= `+arg(r.Lo)+` AND time < `+arg(r.Hi)+` AND ($1 = '' OR src_workload = $1 OR dst_workload = $1)`)
			continue
		}
		sp := arg(r.Span)
		parts = append(parts, `SELECT src_workload, src, dst_workload, dst, protocol, port, verdict, flows, packets, bytes, first_time, last_time
FROM flow_edges WHERE span = `+sp+` AND bucket >= `+arg(r.Lo)+` AND bucket < `+arg(r.Hi)+` AND ($1 = '' OR src_workload = $1 OR dst_workload = $1)`)
	}
	if len(parts) == 0 {
		return nil, nil
	}
	query := `SELECT src_workload, src, dst_workload, dst, protocol, port::BIGINT, verdict::BIGINT, SUM(flows)::BIGINT AS n,
	COALESCE(SUM(packets), 0)::BIGINT, COALESCE(SUM(bytes), 0)::BIGINT, MIN(first_time), MAX(last_time)
FROM (` + strings.Join(parts, "\nUNION ALL\n") + `) e
GROUP BY src_workload, src, dst_workload, dst, protocol, port, verdict
ORDER BY n DESC, src_workload, src, dst_workload, dst, protocol, port, verdict
LIMIT ` + arg(limit)
	return queryAll(ctx, tx, "flow edges", func(row pgx.Row) (store.FlowEdge, error) {
		var e store.FlowEdge
		var src, dst string
		var port, verdict, n, packets, bytes, first, last int64
		if err := row.Scan(&e.SrcWorkload, &src, &e.DstWorkload, &dst, &e.Protocol, &port, &verdict, &n, &packets, &bytes, &first, &last); err != nil {
			return e, err
		}
		e.SrcAddr, _ = netip.ParseAddr(src)
		e.DstAddr, _ = netip.ParseAddr(dst)
		e.Port, e.Verdict = uint16(port), ruleset.Verdict(verdict)
		e.Flows, e.Packets, e.Bytes = uint64(n), uint64(packets), uint64(bytes)
		e.FirstSeen, e.LastSeen = rc.FromNanos(first), rc.FromNanos(last)
		return e, nil
	}, query, args...)
}
