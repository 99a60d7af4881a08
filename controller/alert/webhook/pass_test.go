package webhook

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// fakeOutbox answers the loop's reads with fixed due deliveries and next
// due time.
type fakeOutbox struct {
	due  []store.Delivery
	next time.Time
}

func (o *fakeOutbox) EventTx(context.Context, func(store.EventTx) error) error { return nil }
func (o *fakeOutbox) DueDeliveries(context.Context, time.Time, int, int) ([]store.Delivery, error) {
	return o.due, nil
}
func (o *fakeOutbox) NextDeliveryAt(context.Context) (time.Time, int, error) {
	return o.next, len(o.due), nil
}
func (o *fakeOutbox) UpdateDelivery(context.Context, store.Delivery) error { return nil }

// TestPassSleep: how long the loop sleeps when nothing wakes it. With an
// attempt in flight the store's next due time is that attempt's (past),
// so the loop must look again soon: a retry of another webhook coming due
// meanwhile must not wait for the slow attempt to end.
func TestPassSleep(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	inFlight := store.Delivery{ID: 1, AlertID: 1, Webhook: "slow", Event: store.EventFiring, State: store.DeliveryPending,
		NextAttempt: now, Created: now}
	tests := []struct {
		name     string
		inflight bool
		due      []store.Delivery
		next     time.Time
		want     time.Duration
	}{
		{"nothing pending", false, nil, time.Time{}, maxSleep},
		{"next due in 3s", false, nil, now.Add(3 * time.Second), 3 * time.Second},
		{"next due in an hour", false, nil, now.Add(time.Hour), maxSleep},
		{"an attempt in flight", true, []store.Delivery{inFlight}, now, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ob := &fakeOutbox{next: tc.next}
			d, err := New(Config{Store: ob, Webhooks: func(string) (policy.Webhook, bool) { return policy.Webhook{}, false },
				MinBackoff: time.Second, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			sched := newScheduler(4, time.Hour, func(int) time.Duration { return time.Minute }, 0, 0)
			if tc.inflight {
				if p := sched.take(now, []store.Delivery{inFlight}); len(p.start) != 1 {
					t.Fatal("not started")
				}
			}
			ob.due = tc.due
			var wg sync.WaitGroup
			if got := d.pass(context.Background(), sched, make(chan result, 4), &wg); got != tc.want {
				t.Errorf("sleep %v, want %v", got, tc.want)
			}
			wg.Wait()
		})
	}
}
