package webhook

import (
	"math"
	"testing"
	"time"
)

// almostOne is the largest r the jitter source may return.
var almostOne = math.Nextafter(1, 0)

func TestBackoffBounds(t *testing.T) {
	const minD, maxD = time.Second, time.Minute
	tests := []struct {
		name       string
		n          int
		r          float64
		minD, maxD time.Duration
		lo, hi     time.Duration // inclusive
	}{
		{"first retry is the floor whatever r", 1, almostOne, minD, maxD, minD, minD},
		{"r=0 is the floor", 5, 0, minD, maxD, minD, minD},
		{"r=0 is the floor at a huge n", math.MaxInt, 0, minD, maxD, minD, minD},
		{"second retry up to twice the floor", 2, almostOne, minD, maxD, 2*minD - time.Microsecond, 2 * minD},
		{"third retry up to four times", 3, almostOne, minD, maxD, 4*minD - time.Microsecond, 4 * minD},
		{"half way at n=3", 3, 0.5, minD, maxD, minD + 1500*time.Millisecond, minD + 1500*time.Millisecond},
		{"ceiling capped at max", 7, almostOne, minD, maxD, maxD - time.Microsecond, maxD}, // 64s > 60s
		{"capped at max for n=1000", 1000, almostOne, minD, maxD, maxD - time.Microsecond, maxD},
		{"no overflow for the largest n", math.MaxInt, almostOne, minD, maxD, maxD - time.Microsecond, maxD},
		{"n=0 is the floor", 0, almostOne, minD, maxD, minD, minD},
		{"negative n is the floor", -3, almostOne, minD, maxD, minD, minD},
		{"max below min: min", 9, 0.5, time.Minute, time.Second, time.Minute, time.Minute},
		{"max near the int64 limit, huge n", math.MaxInt, almostOne, time.Nanosecond, math.MaxInt64,
			math.MaxInt64 - time.Second, math.MaxInt64},
		{"max near the int64 limit, n=62", 62, 0.5, time.Nanosecond, math.MaxInt64, 0, math.MaxInt64},
		{"zero floor, huge n", math.MaxInt, 0.5, 0, time.Minute, 30 * time.Second, 30 * time.Second},
		{"r out of range above", 3, 1.5, minD, maxD, 4 * minD, 4 * minD},
		{"r out of range below", 3, -1, minD, maxD, minD, minD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := callBackoff(t, tc.n, tc.minD, tc.maxD, tc.r)
			if got < tc.lo || got > tc.hi {
				t.Errorf("backoff(%d, %v, %v, %v) = %v, want in [%v, %v]", tc.n, tc.minD, tc.maxD, tc.r, got, tc.lo, tc.hi)
			}
		})
	}
}

// TestBackoffMonotonic: for a given r the wait never shrinks as failures
// go on, and always stays within [min, max].
func TestBackoffMonotonic(t *testing.T) {
	for _, bounds := range [][2]time.Duration{{time.Second, 5 * time.Minute}, {10 * time.Millisecond, 50 * time.Millisecond}, {3, 1000}} {
		for _, r := range []float64{0, 0.1, 0.5, 0.9, almostOne} {
			prev := time.Duration(0)
			for n := 1; n <= 200; n++ {
				got := backoff(n, bounds[0], bounds[1], r)
				if got < bounds[0] || got > bounds[1] {
					t.Fatalf("backoff(%d, %v, %v, %v) = %v, outside the bounds", n, bounds[0], bounds[1], r, got)
				}
				if got < prev {
					t.Fatalf("backoff(%d, %v, %v, %v) = %v, less than %v at n-1", n, bounds[0], bounds[1], r, got, prev)
				}
				prev = got
			}
		}
	}
}

// callBackoff fails the test, rather than hanging it, if backoff loops.
func callBackoff(t *testing.T, n int, minD, maxD time.Duration, r float64) time.Duration {
	t.Helper()
	done := make(chan time.Duration, 1)
	go func() { done <- backoff(n, minD, maxD, r) }()
	select {
	case d := <-done:
		return d
	case <-time.After(10 * time.Second):
		t.Fatalf("backoff(%d, %v, %v, %v) still running after 10s", n, minD, maxD, r)
		return 0
	}
}
