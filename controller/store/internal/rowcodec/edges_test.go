package rowcodec

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestRecordEdge: a record's edge values are the ones FlowArgs stores.
func TestRecordEdge(t *testing.T) {
	for _, r := range []flowrecord.Record{
		{Time: time.Unix(0, 1234567), Protocol: "TCP", SrcAddr: netip.MustParseAddr("10.250.0.1"), SrcWorkload: "web",
			DstAddr: netip.MustParseAddr("fd0e::2"), DstPort: 22, Verdict: ruleset.VerdictDenied, Packets: math.MaxUint64, Bytes: 7,
			State: flowrecord.StateClosed},
		{Protocol: "UDP", DstWorkload: "db", DstPort: 53},
	} {
		a := FlowArgs(&r)
		k, tm, state, packets, bytes := RecordEdge(&r)
		want := EdgeKeyOf(a[6].(string), a[4].(string), a[10].(string), a[8].(string), a[3].(string), a[9].(int64), a[12].(int64))
		if k != want || tm != a[0].(int64) || state != a[25].(string) || packets != a[14].(int64) || bytes != a[15].(int64) {
			t.Errorf("%+v: %+v %d %s %d %d, FlowArgs %v", r, k, tm, state, packets, bytes, a)
		}
	}
}

// TestEdgeKeyString: a key reads back whatever its texts hold, and SQL's
// encoding (EdgeKeySQL) is the same, checked by the SQLite store's
// benchmark seed and migration tests.
func TestEdgeKeyString(t *testing.T) {
	for _, k := range []EdgeKey{
		{},
		{SrcWorkload: "web", DstWorkload: "db", Protocol: "TCP", Port: 22, Verdict: 1},
		{Src: "10.0.0.1", Dst: "fd0e::1", Protocol: "UDP", Port: 65535, Verdict: 3},
		{SrcWorkload: "a:1,2", Src: "", DstWorkload: "ü:", Protocol: "12:", Port: 0, Verdict: 0},
	} {
		got, err := ParseEdgeKey(k.String())
		if err != nil || got != k {
			t.Errorf("%+v: %q read back as %+v, %v", k, k.String(), got, err)
		}
	}
	for _, bad := range []string{"", "3:ab", "x:", "0:0:0:0:0:22", "0:0:0:0:0:22,x"} {
		if k, err := ParseEdgeKey(bad); err == nil {
			t.Errorf("%q read as %+v", bad, k)
		}
	}
}

// TestEdgeCover: the parts of a range are whole buckets of their width,
// adjacent, in no bucket before the horizon, and together the range; with
// a rollup filled up to some time (EdgeCoverRolled), in no finest bucket
// that ends after it.
func TestEdgeCover(t *testing.T) {
	m, ten := EdgeSpans[0], EdgeSpans[1]
	base := int64(1_800_000_000) * 1e9 // a multiple of ten minutes
	for _, c := range []struct {
		lo, hi int64
		from   []int64
	}{
		{base + 7, base + 3*ten + 5*m + 3, NoHorizon()},
		{base, base + ten, NoHorizon()},
		{base + 1, base + m - 1, NoHorizon()},
		{base - 5*m - 1, base + 25*m + 1, []int64{base + 2*m, base + ten}},
		{base, base + 2*ten, []int64{math.MaxInt64, math.MaxInt64}},
		{math.MinInt64, math.MaxInt64, NoHorizon()},
	} {
		checkCover(t, c.lo, c.hi, c.from, math.MaxInt64, EdgeCover(c.lo, c.hi, c.from))
		for _, rolled := range []int64{math.MinInt64, c.lo, c.lo + 1, base + ten + 3*m + 5, base + 2*ten, c.hi - 1, c.hi, math.MaxInt64} {
			checkCover(t, c.lo, c.hi, c.from, rolled, EdgeCoverRolled(c.lo, c.hi, c.from, rolled))
		}
	}
}

// checkCover fails t unless parts cover [lo, hi) as EdgeCoverRolled
// must for the horizon from and a rollup filled up to rolled.
func checkCover(t *testing.T, lo, hi int64, from []int64, rolled int64, parts []EdgeRange) {
	t.Helper()
	var covered int64
	for _, p := range parts {
		if p.Lo >= p.Hi {
			t.Errorf("%d..%d (rolled %d): empty part %+v", lo, hi, rolled, p)
		}
		if p.Span != 0 {
			i := 0
			for EdgeSpans[i] != p.Span {
				i++
			}
			if p.Lo%p.Span != 0 || p.Hi%p.Span != 0 || p.Lo < from[i] {
				t.Errorf("%d..%d (rolled %d): part %+v not whole buckets after the horizon", lo, hi, rolled, p)
			}
			if p.Hi > FloorTo(rolled, EdgeSpans[0]) {
				t.Errorf("%d..%d (rolled %d): part %+v reads buckets the rollup does not hold whole", lo, hi, rolled, p)
			}
		}
		if p.Lo < lo || p.Hi > hi {
			t.Errorf("%d..%d (rolled %d): part %+v outside", lo, hi, rolled, p)
		}
		covered += p.Hi/1e9 - p.Lo/1e9 // seconds: the widest range overflows nanoseconds
	}
	if want, n := hi/1e9-lo/1e9, int64(len(parts)); covered < want-n || covered > want+n {
		t.Errorf("%d..%d (rolled %d): parts %+v cover %d s, want %d", lo, hi, rolled, parts, covered, want)
	}
	for i := range parts {
		for j := range parts {
			if i != j && parts[i].Lo < parts[j].Hi && parts[j].Lo < parts[i].Hi {
				t.Errorf("%d..%d (rolled %d): parts %+v and %+v overlap", lo, hi, rolled, parts[i], parts[j])
			}
		}
	}
}
