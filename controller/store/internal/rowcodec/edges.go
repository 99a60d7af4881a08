package rowcodec

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The flow-edge rollup (both stores' flow_edges table, events migration
// 5): per time bucket, the sums store.FlowEdge reports for each edge key
// (EdgeKey) of the flows recorded in the bucket, kept in the transaction
// that inserts the flows and corrected by retention in the one that
// deletes them. FlowEdges reads the whole buckets a range covers from it
// and only what is left at the range's ends from the flows.

// EdgeSpans are the rollup's bucket widths in nanoseconds, finest first,
// each a multiple of the one before; buckets start at multiples of their
// width since the Unix epoch. Every flow counts in one bucket of each.
// They are part of the schema: rows of another width would never be read,
// and a width added without filling it would miss the older flows, so a
// change needs a migration that fills the table again.
var EdgeSpans = []int64{int64(60e9), int64(600e9)}

// EdgeKey is what FlowEdges groups flows by, as stored: an end's address
// only where no workload names it.
type EdgeKey struct {
	SrcWorkload, Src, DstWorkload, Dst, Protocol string
	Port, Verdict                                int64
}

// String encodes the key in one string, as the SQLite store's rollup
// keeps it (a row read in one column instead of seven costs half as
// much): each text its byte length, ':' and its bytes, then the port,
// ',' and the verdict, in decimal.
func (k EdgeKey) String() string {
	b := make([]byte, 0, len(k.SrcWorkload)+len(k.Src)+len(k.DstWorkload)+len(k.Dst)+len(k.Protocol)+24)
	for _, f := range [...]string{k.SrcWorkload, k.Src, k.DstWorkload, k.Dst, k.Protocol} {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(b, ':')
		b = append(b, f...)
	}
	b = strconv.AppendInt(b, k.Port, 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, k.Verdict, 10)
	return string(b)
}

// EdgeKeySQL is SQL for EdgeKey.String of a row with the named columns.
func EdgeKeySQL(srcWorkload, src, dstWorkload, dst, protocol, port, verdict string) string {
	var b strings.Builder
	for _, f := range [...]string{srcWorkload, src, dstWorkload, dst, protocol} {
		b.WriteString("length(CAST(" + f + " AS BLOB)) || ':' || " + f + " || ")
	}
	b.WriteString(port + " || ',' || " + verdict)
	return b.String()
}

// ParseEdgeKey reads what EdgeKey.String wrote.
func ParseEdgeKey(s string) (EdgeKey, error) {
	var k EdgeKey
	rest := s
	for _, f := range [...]*string{&k.SrcWorkload, &k.Src, &k.DstWorkload, &k.Dst, &k.Protocol} {
		n, after, ok := strings.Cut(rest, ":")
		l, err := strconv.Atoi(n)
		if !ok || err != nil || l < 0 || l > len(after) {
			return k, fmt.Errorf("edge key %q: bad length", s)
		}
		*f, rest = after[:l], after[l:]
	}
	port, verdict, ok := strings.Cut(rest, ",")
	var err1, err2 error
	k.Port, err1 = strconv.ParseInt(port, 10, 64)
	k.Verdict, err2 = strconv.ParseInt(verdict, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return k, fmt.Errorf("edge key %q: bad port or verdict", s)
	}
	return k, nil
}

// EdgeKeyOf is the key of a stored flow row.
func EdgeKeyOf(srcWorkload, srcAddr, dstWorkload, dstAddr, protocol string, port, verdict int64) EdgeKey {
	if srcWorkload != "" {
		srcAddr = ""
	}
	if dstWorkload != "" {
		dstAddr = ""
	}
	return EdgeKey{SrcWorkload: srcWorkload, Src: srcAddr, DstWorkload: dstWorkload, Dst: dstAddr, Protocol: protocol, Port: port, Verdict: verdict}
}

// RecordEdge is a record's key, time, state, packets and bytes as
// FlowArgs stores them (TestRecordEdge holds it to that), without
// FlowArgs' boxing of every column.
func RecordEdge(r *flowrecord.Record) (k EdgeKey, t int64, state string, packets, bytes int64) {
	k = EdgeKeyOf(r.SrcWorkload, r.SrcAddr.String(), r.DstWorkload, r.DstAddr.String(), r.Protocol, int64(r.DstPort), int64(r.Verdict))
	return k, r.Time.UnixNano(), string(StateOrNew(r.State)), int64(r.Packets), int64(r.Bytes)
}

// EdgeSums are one edge's sums over some flows: Flows counts the new
// ones (first records); Packets and Bytes sum the closed connections'
// and the not-allowed flows' (their only record is the new one), with
// int64 wrap-around as the SQLite store has always summed them; First
// and Last are the earliest and latest record times. Set says a flow was
// added.
type EdgeSums struct {
	Flows, Packets, Bytes, First, Last int64
	Set                                bool
}

// CountsVolume says whether a flow row's packets and bytes count in an
// edge's totals.
func CountsVolume(state string, verdict int64) bool {
	return state == string(flowrecord.StateClosed) || (state == string(flowrecord.StateNew) && verdict != int64(ruleset.VerdictAllowed))
}

// Add counts one stored flow row.
func (e *EdgeSums) Add(state string, verdict, packets, bytes, t int64) {
	if state == string(flowrecord.StateNew) {
		e.Flows++
	}
	if CountsVolume(state, verdict) {
		e.Packets += packets
		e.Bytes += bytes
	}
	e.Merge(EdgeSums{First: t, Last: t, Set: true})
}

// Merge adds another group's sums (a rollup row's) to e.
func (e *EdgeSums) Merge(o EdgeSums) {
	e.Flows += o.Flows
	e.Packets += o.Packets
	e.Bytes += o.Bytes
	if !e.Set {
		e.First, e.Last, e.Set = o.First, o.Last, true
		return
	}
	e.First, e.Last = min(e.First, o.First), max(e.Last, o.Last)
}

// FloorTo is the start of the bucket of width span holding t.
func FloorTo(t, span int64) int64 {
	r := t % span
	switch {
	case r > 0:
		return t - r
	case r < 0:
		if t < math.MinInt64+span {
			return math.MinInt64
		}
		return t - r - span
	}
	return t
}

// ceilTo is the first bucket start of width span at or after t; false if
// there is none in int64.
func ceilTo(t, span int64) (int64, bool) {
	r := t % span
	switch {
	case r > 0:
		if t > math.MaxInt64-span {
			return 0, false
		}
		return t - r + span, true
	case r < 0:
		return t - r, true
	}
	return t, true
}

// CeilTo is ceilTo's bound for a range's end: math.MaxInt64 when no
// bucket starts at or after t.
func CeilTo(t, span int64) int64 {
	if c, ok := ceilTo(t, span); ok {
		return c
	}
	return math.MaxInt64
}

// EdgeRange is one part of a range FlowEdges reads: with Span 0 the flows
// recorded in [Lo, Hi); otherwise the rollup's buckets of width Span
// starting in [Lo, Hi).
type EdgeRange struct {
	Span, Lo, Hi int64
}

// EdgeCover splits the time range [lo, hi) into the coarsest whole
// buckets it holds and, at each end, finer ones, down to the flows of
// the partial finest buckets at the ends: the parts together count each
// flow of the range once and no other. from[i] is the first bucket of
// width EdgeSpans[i] the rollup holds (retention deletes the rows of
// buckets it deleted flows of: EdgeHorizon); the range before it is
// read from finer buckets, or from the flows.
func EdgeCover(lo, hi int64, from []int64) []EdgeRange {
	var out []EdgeRange
	cover(lo, hi, len(EdgeSpans), from, &out)
	return out
}

// cover covers [lo, hi) with the widths EdgeSpans[:n].
func cover(lo, hi int64, n int, from []int64, out *[]EdgeRange) {
	if lo >= hi {
		return
	}
	for i := n - 1; i >= 0; i-- {
		a, ok := ceilTo(lo, EdgeSpans[i])
		a = max(a, from[i])
		b := FloorTo(hi, EdgeSpans[i])
		if ok && a < b {
			*out = append(*out, EdgeRange{Span: EdgeSpans[i], Lo: a, Hi: b})
			cover(lo, a, i, from, out)
			cover(b, hi, i, from, out)
			return
		}
	}
	*out = append(*out, EdgeRange{Lo: lo, Hi: hi})
}

// NoHorizon is a from for EdgeCover where the rollup holds every bucket.
func NoHorizon() []int64 {
	from := make([]int64, len(EdgeSpans))
	for i := range from {
		from[i] = math.MinInt64
	}
	return from
}

// EdgeHorizon is the first bucket of width span whose rows stay exact
// once flows recorded up to last (their latest time) are deleted: the
// first starting after last. The rows of earlier buckets go, and
// FlowEdges reads their range from finer buckets or the flows, so that
// no row need be made again from the flows a bucket has left.
func EdgeHorizon(last, span int64) int64 {
	if last == math.MaxInt64 {
		return math.MaxInt64
	}
	return CeilTo(last+1, span)
}

// EdgeBucket is one rollup row's key.
type EdgeBucket struct {
	Span, Bucket int64
	EdgeKey
}

// RollupRecords aggregates records, as stored, into the rollup rows they
// add to: one per bucket of each width and edge key.
func RollupRecords(recs []flowrecord.Record) map[EdgeBucket]*EdgeSums {
	out := map[EdgeBucket]*EdgeSums{}
	for i := range recs {
		k, t, state, packets, bytes := RecordEdge(&recs[i])
		for _, span := range EdgeSpans {
			b := EdgeBucket{Span: span, Bucket: FloorTo(t, span), EdgeKey: k}
			e := out[b]
			if e == nil {
				e = &EdgeSums{}
				out[b] = e
			}
			e.Add(state, k.Verdict, packets, bytes, t)
		}
	}
	return out
}

// EdgeCoverRolled is EdgeCover for a rollup that holds only the flows
// recorded before rolled (PostgreSQL's, filled by a background step,
// events migration 6): buckets of the finest width that end at or before
// rolled are read from the rollup as EdgeCover splits them, the rest of
// the range, from the start of the finest bucket holding rolled, from the
// flows. A flows part of EdgeCover that ends where that one starts is
// merged into it.
func EdgeCoverRolled(lo, hi int64, from []int64, rolled int64) []EdgeRange {
	at := FloorTo(rolled, EdgeSpans[0])
	out := EdgeCover(lo, min(hi, at), from)
	a := max(lo, at)
	if a >= hi {
		return out
	}
	for i := range out {
		if out[i].Span == 0 && out[i].Hi == a {
			out[i].Hi = hi
			return out
		}
	}
	return append(out, EdgeRange{Lo: a, Hi: hi})
}
