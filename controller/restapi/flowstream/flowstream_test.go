package flowstream

import (
	"errors"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
)

func recs(ports ...uint16) []flowrecord.Record {
	out := make([]flowrecord.Record, len(ports))
	for i, p := range ports {
		out[i].DstPort = p
	}
	return out
}

// TestSlowSubscriberDropped: a subscriber that does not read is dropped
// once its buffer is full, without holding up Publish or the others.
func TestSlowSubscriberDropped(t *testing.T) {
	b := New(Config{Buffer: 4})
	all := func(*flowrecord.Record) bool { return true }
	slow, err := b.Subscribe(all)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := b.Subscribe(func(r *flowrecord.Record) bool { return r.DstPort == 22 })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for range 100 {
			b.Publish(recs(22, 80, 443))
			<-fast.C
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	select {
	case <-slow.Gone:
	default:
		t.Error("the slow subscriber was not dropped")
	}
	select {
	case <-fast.Gone:
		t.Error("the subscriber that keeps up was dropped")
	default:
	}
	if n := b.Subscribers(); n != 1 {
		t.Errorf("%d subscribers left, want 1", n)
	}
	if len(slow.C) != 4 {
		t.Errorf("the slow subscriber's queue holds %d, want its buffer of 4", len(slow.C))
	}
}

// TestSubscribersBounded: beyond the bound, Subscribe refuses; a leaving
// subscriber makes room.
func TestSubscribersBounded(t *testing.T) {
	b := New(Config{MaxSubscribers: 2})
	all := func(*flowrecord.Record) bool { return true }
	s1, _ := b.Subscribe(all)
	if _, err := b.Subscribe(all); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscribe(all); !errors.Is(err, ErrTooMany) {
		t.Fatalf("third subscriber: %v, want ErrTooMany", err)
	}
	b.Unsubscribe(s1)
	if _, err := b.Subscribe(all); err != nil {
		t.Errorf("after one left: %v", err)
	}
}
