package postgres

import (
	"context"
	"errors"
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

// The service map's rollup (migration 5): flow_edges, the sums of the
// flows recorded before flow_edges_rolled.upto (migration 6), filled by
// RollupFlowEdges apart from the inserts, which add only their records
// older than upto. See rowcodec's edges.go for the buckets and how a
// range is split.

// pgEdgeSums are a batch's sums of one rollup row, packets and bytes
// exact (NUMERIC, as SUM over BIGINT is: no wrap-around).
type pgEdgeSums struct {
	flows, first, last int64
	packets, bytes     big.Int
}

// flowEdgesConflict adds an upserted rollup row to the one stored.
const flowEdgesConflict = `ON CONFLICT (span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict) DO UPDATE SET
	flows = flow_edges.flows + excluded.flows, packets = flow_edges.packets + excluded.packets,
	bytes = flow_edges.bytes + excluded.bytes, first_time = LEAST(flow_edges.first_time, excluded.first_time),
	last_time = GREATEST(flow_edges.last_time, excluded.last_time)`

// rollupState is how far the rollup reaches: it holds the sums of the
// flows recorded before upto, in the buckets of width EdgeSpans[i]
// from from[i] on (the horizon retention moved).
type rollupState struct {
	upto int64
	from []int64
}

// readRollupState reads flow_edges_rolled and flow_edges_from in one
// statement.
func readRollupState(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (rollupState, error) {
	st := rollupState{from: rc.NoHorizon()}
	var spans, buckets []int64
	err := q.QueryRow(ctx, `SELECT upto, ARRAY(SELECT span FROM flow_edges_from ORDER BY span),
	ARRAY(SELECT bucket FROM flow_edges_from ORDER BY span) FROM flow_edges_rolled`).Scan(&st.upto, &spans, &buckets)
	if err != nil {
		return st, fmt.Errorf("flow edges: %w", err)
	}
	for j, span := range spans {
		for i, sp := range rc.EdgeSpans {
			if sp == span && j < len(buckets) {
				st.from[i] = buckets[j]
			}
		}
	}
	return st, nil
}

// addFlowEdges adds records, just stored and recorded before the
// rollup's upto (the rest waits for RollupFlowEdges), to the rollup in
// tx: summed here per row, then one upsert of the batch's rows. Buckets
// before the horizon get none: FlowEdges reads them from the flows.
func addFlowEdges(ctx context.Context, tx pgx.Tx, recs []flowrecord.Record, from []int64) error {
	sums := map[rc.EdgeBucket]*pgEdgeSums{}
	var v big.Int
	for i := range recs {
		k, t, state, packets, bytes := rc.RecordEdge(&recs[i])
		for j, span := range rc.EdgeSpans {
			b := rc.EdgeBucket{Span: span, Bucket: rc.FloorTo(t, span), EdgeKey: k}
			if b.Bucket < from[j] {
				continue
			}
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
`+flowEdgesConflict,
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
// only its flows. The range is split by rowcodec.EdgeCoverRolled: whole
// buckets the rollup holds from it, the flows of partial ones at the
// ends and of those not rolled up yet from flows, summed together in one
// statement (one snapshot).
func (s *Postgres) flowEdges(ctx context.Context, since, until time.Time, workload string, limit int) ([]store.FlowEdge, error) {
	lo, hi := rangeArgs(since, until)
	// One snapshot for the horizon, upto and the sums: retention or the
	// rollup moving them meanwhile must not hide flows from both, or
	// count them in both.
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("read flow edges: %w", classify(err))
	}
	defer tx.Rollback(ctx)
	st, err := readRollupState(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("read %w", classify(err))
	}
	args := []any{workload}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	var allowed string
	var parts []string
	for _, r := range rc.EdgeCoverRolled(lo, hi, st.from, st.upto) {
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

// rollupFlowsSQL sums the flows of [$1, $2) into every width of the
// rollup, adding to the rows stored: grouped per finest bucket and edge
// key from the flows (one scan of the range, in flows_time's order),
// then each width's rows grouped from those; $3... are the widths'
// horizons, before which no row is written.
var rollupFlowsSQL = func() string {
	span0 := strconv.FormatInt(rc.EdgeSpans[0], 10)
	volume := "state = 'closed' OR (state = 'new' AND verdict <> " + strconv.Itoa(int(ruleset.VerdictAllowed)) + ")"
	var b strings.Builder
	b.WriteString(`WITH m AS (SELECT time - ((time % ` + span0 + `) + ` + span0 + `) % ` + span0 + ` AS bucket,
	src_workload, CASE WHEN src_workload = '' THEN src_addr ELSE '' END AS src,
	dst_workload, CASE WHEN dst_workload = '' THEN dst_addr ELSE '' END AS dst, protocol, dst_port AS port, verdict,
	COUNT(*) FILTER (WHERE state = 'new') AS flows,
	COALESCE(SUM(packets) FILTER (WHERE ` + volume + `), 0) AS packets,
	COALESCE(SUM(bytes) FILTER (WHERE ` + volume + `), 0) AS bytes,
	MIN(time) AS first_time, MAX(time) AS last_time
FROM flows WHERE time >= $1 AND time < $2 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8)`)
	for i, span := range rc.EdgeSpans {
		sp := strconv.FormatInt(span, 10)
		insert := `INSERT INTO flow_edges (span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict,
	flows, packets, bytes, first_time, last_time)
SELECT ` + sp + `, bucket - ((bucket % ` + sp + `) + ` + sp + `) % ` + sp + `, src_workload, src, dst_workload, dst, protocol, port, verdict,
	SUM(flows), SUM(packets), SUM(bytes), MIN(first_time), MAX(last_time)
FROM m WHERE bucket - ((bucket % ` + sp + `) + ` + sp + `) % ` + sp + ` >= $` + strconv.Itoa(i+3) + ` GROUP BY 2, 3, 4, 5, 6, 7, 8, 9
` + flowEdgesConflict
		if i < len(rc.EdgeSpans)-1 {
			b.WriteString(", s" + strconv.Itoa(i) + " AS (" + insert + ")")
			continue
		}
		b.WriteString("\n" + insert)
	}
	return b.String()
}()

// RollupFlowEdges (store.FlowEdgeRoller) sums the flows recorded from
// the rollup's upto (or its horizon, if retention passed it) up to until
// into flow_edges and moves upto there, in one transaction holding
// lockEvents: no insert runs meanwhile, so every flow before the new
// upto is either summed here or, stored later, by its insert. A step
// takes at most about limit flows (the oldest): it ends at the time of
// the limit-th, so that it never holds lockEvents, and the ingest behind
// it, for long.
func (s *Postgres) RollupFlowEdges(ctx context.Context, until time.Time, limit int) (bool, error) {
	var more bool
	err := s.tx(ctx, func(tx pgx.Tx) error {
		more = false
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockEvents); err != nil {
			return err
		}
		st, err := readRollupState(ctx, tx)
		if err != nil {
			return err
		}
		lo, hi := max(st.upto, st.from[0]), until.UnixNano()
		if lo >= hi {
			return nil
		}
		var t int64
		err = tx.QueryRow(ctx, "SELECT time FROM flows WHERE time >= $1 AND time < $2 ORDER BY time OFFSET $3 LIMIT 1",
			lo, hi, max(limit, 1)).Scan(&t)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		default:
			// Flows of t's time are left whole to the next step (all
			// of them in this one, if every flow so far has lo's time).
			hi, more = max(t, lo+1), true
		}
		args := []any{lo, hi}
		for _, f := range st.from {
			args = append(args, f)
		}
		if _, err := tx.Exec(ctx, rollupFlowsSQL, args...); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE flow_edges_rolled SET upto = $1", hi)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("roll up flow edges: %w", classify(err))
	}
	return more, nil
}

var _ store.FlowEdgeRoller = (*Postgres)(nil)
