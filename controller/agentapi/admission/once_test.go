package admission

import (
	"errors"
	"testing"
	"time"
)

func TestOnceRefusesReplayUntilExpiry(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	o := NewOnce(2)
	if err := o.Use("JTI=a", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if err := o.Use("JTI=a", now.Add(time.Hour), now.Add(time.Minute)); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v, want ErrReplay", err)
	}
	if err := o.Use("JTI=b", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	// Full of unexpired ids: refused, nothing forgotten.
	if err := o.Use("JTI=c", now.Add(time.Hour), now); !errors.Is(err, ErrOnceFull) {
		t.Fatalf("full: %v, want ErrOnceFull", err)
	}
	// b expired: dropped to make room; a still refused.
	later := now.Add(2 * time.Minute)
	if err := o.Use("JTI=c", now.Add(time.Hour), later); err != nil {
		t.Fatal(err)
	}
	if err := o.Use("JTI=a", now.Add(time.Hour), later); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay after pruning: %v, want ErrReplay", err)
	}
	o.Forget("JTI=c")
	if o.Len() != 1 {
		t.Fatalf("len %d, want 1", o.Len())
	}
}
