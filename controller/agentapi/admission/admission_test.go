package admission

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestSourceOf(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.7:4431":              "192.0.2.7",
		"[::ffff:192.0.2.7]:4431":     "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:4431": "2001:db8:1:2::/64",
		"[2001:db8:1:2::9]:1":         "2001:db8:1:2::/64",
	} {
		tcp, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := SourceName(SourceOf(tcp)); got != want {
			t.Errorf("%s: source %s, want %s", addr, got, want)
		}
	}
	if got := SourceName(SourceOf(nil)); got != "other" {
		t.Errorf("no address: %s", got)
	}
}

// TestJoinLimiter: a burst, then the rate; sources are apart; past
// MaxTrackedSources, new sources share one bucket, so the state stays
// bounded whatever the number of sources.
func TestJoinLimiter(t *testing.T) {
	j := NewJoinLimiter(5, 20)
	now := time.Now()
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	allowed := 0
	for range 100 {
		if j.Allow(a, now) {
			allowed++
		}
	}
	if allowed != 20 {
		t.Errorf("%d of a burst of 100 allowed, want 20", allowed)
	}
	if !j.Allow(b, now) {
		t.Error("another source refused")
	}
	if j.Allow(a, now.Add(100*time.Millisecond)) || !j.Allow(a, now.Add(200*time.Millisecond)) {
		t.Error("not refilled at 5 a second")
	}
	// Many sources, each using a little: bounded, then shared.
	for i := range 2 * MaxTrackedSources {
		src := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		j.Allow(src, now)
	}
	if n := len(j.buckets); n > MaxTrackedSources+1 {
		t.Errorf("%d buckets kept", n)
	}
}

// TestRefusalLog: a source's first refusals of a period are logged, the
// rest counted and said in one line when the period ends; the state is
// forgotten then.
func TestRefusalLog(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	now := time.Now()
	r := NewRefusalLog(zap.New(core), func() time.Time { return now })
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/64")
	logged := 0
	for range 1000 {
		if r.admit(a, now) {
			logged++
		}
	}
	if logged != RefusalLogBurst || !r.admit(b, now) {
		t.Errorf("%d of 1000 refusals of one source logged, want %d; other sources unaffected", logged, RefusalLogBurst)
	}
	r.flush(now.Add(RefusalLogPeriod / 2))
	if logs.Len() != 0 {
		t.Errorf("summary before the period ended: %v", logs.All())
	}
	r.flush(now.Add(RefusalLogPeriod))
	sums := logs.FilterMessageSnippet("not logged one by one").All()
	if len(sums) != 1 || sums[0].ContextMap()["refusals"] != uint64(1000-RefusalLogBurst) || sums[0].ContextMap()["source"] != "192.0.2.1" {
		t.Errorf("summaries: %v", logs.All())
	}
	if len(r.sources) != 0 {
		t.Errorf("%d sources kept after their periods ended", len(r.sources))
	}
	// A new period logs again, and a source that keeps going gets its
	// summary when its next refusal starts the next period.
	for range RefusalLogBurst + 3 {
		r.admit(a, now.Add(2*RefusalLogPeriod))
	}
	if !r.admit(a, now.Add(3*RefusalLogPeriod)) {
		t.Error("refusal of a new period not logged")
	}
	if n := len(logs.FilterMessageSnippet("not logged one by one").All()); n != 2 {
		t.Errorf("%d summaries, want 2", n)
	}
}
