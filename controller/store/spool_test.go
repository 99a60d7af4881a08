package store

import "testing"

// TestSpoolPositionBoundedHoles: holes are bounded; the oldest go first.
// The rest of SpoolPosition's behaviour, and its persistence, is tested
// by the conformance suite (controller/store/storetest, SpoolPosition).
func TestSpoolPositionBoundedHoles(t *testing.T) {
	q := SpoolPosition{}
	for i := range uint64(maxHoles + 10) {
		q.Add(2*i + 2)
	}
	if len(q.Holes) != maxHoles || q.Stored(1) != true || q.Stored(2*maxHoles+19) {
		t.Errorf("bounded holes: %d, Stored(1)=%v", len(q.Holes), q.Stored(1))
	}
}
