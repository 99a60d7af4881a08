package webhook

import "time"

// backoff returns how long to wait after the n-th failed attempt (n >= 1):
// "full jitter" with a floor, uniform in [min, ceil] where ceil doubles
// with each attempt from min up to max. The jitter spreads the retries of
// many deliveries that failed together (a receiver that went down) so
// they do not come back as one burst; the floor keeps a retry from being
// immediate. r is a uniform random number in [0, 1).
func backoff(n int, minD, maxD time.Duration, r float64) time.Duration {
	minD = max(minD, 0)
	if maxD < minD {
		maxD = minD
	}
	ceil := minD
	// Doubling stops at maxD, and stops before a doubling could overflow
	// (or could not grow: a zero floor), so the loop runs at most 63
	// times whatever n is.
	for i := 1; i < n && ceil < maxD; i++ {
		if ceil <= 0 || ceil > maxD/2 {
			ceil = maxD
			break
		}
		ceil *= 2
	}
	if ceil <= 0 || ceil > maxD {
		ceil = maxD
	}
	// Keep the result within [minD, ceil] whatever r is, and when the
	// float product rounds past the span (a span near the int64 limit).
	span := ceil - minD
	switch {
	case r <= 0:
		return minD
	case r >= 1:
		return ceil
	}
	j := time.Duration(r * float64(span))
	if j < 0 || j > span {
		j = span
	}
	return minD + j
}
