package storetest

import (
	"context"
	"testing"

	"github.com/eastguard/eastguard/controller/store"
)

func testSpoolPosition(t *testing.T, open Open) {
	p := store.SpoolPosition{}
	for _, seq := range []uint64{1, 2, 5} {
		if p.Stored(seq) {
			t.Fatalf("seq %d stored before it was added", seq)
		}
		p.Add(seq)
	}
	// 3 and 4 are a hole: new, and 1, 2, 5 are duplicates.
	for seq, want := range map[uint64]bool{1: true, 2: true, 3: false, 4: false, 5: true, 6: false} {
		if got := p.Stored(seq); got != want {
			t.Errorf("Stored(%d) = %v, want %v", seq, got, want)
		}
	}
	p.Add(4)
	if !p.Stored(4) || p.Stored(3) || len(p.Holes) != 1 || p.Holes[0] != (store.SeqRange{First: 3, Last: 3}) {
		t.Errorf("after 4: %+v", p)
	}
	p.Add(3)
	if len(p.Holes) != 0 {
		t.Errorf("holes left: %+v", p.Holes)
	}
	// Holes are bounded: TestSpoolPositionBoundedHoles in controller/store.
	// Positions survive the store.
	s := open(t)
	ctx := context.Background()
	p.Add(9)
	err := s.EventTx(ctx, func(tx store.EventTx) error {
		p.Node, p.SpoolID = "n", 1<<63+5 // a uint64 beyond int64
		return tx.SaveSpoolPosition(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.EventTx(ctx, func(tx store.EventTx) error {
		got, err := tx.SpoolPosition("n", 1<<63+5)
		if err != nil {
			return err
		}
		if got.High != 9 || len(got.Holes) != 1 || got.Holes[0] != (store.SeqRange{First: 6, Last: 8}) {
			t.Errorf("stored position: %+v", got)
		}
		other, err := tx.SpoolPosition("n", 2)
		if other.High != 0 || other.Node != "n" || other.SpoolID != 2 {
			t.Errorf("unknown spool: %+v", other)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestForgetAndPruneSpools: a node's spool positions are capped (the
// least recently updated forgotten first, other nodes untouched) and those
