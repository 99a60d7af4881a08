package webhook

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

var schedT0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// dues makes due deliveries: one per webhook name given, IDs from first,
// queued at schedT0.
func dues(first int64, webhooks ...string) []store.Delivery {
	out := make([]store.Delivery, len(webhooks))
	for i, w := range webhooks {
		id := first + int64(i)
		out[i] = store.Delivery{ID: id, AlertID: id, Webhook: w, Event: store.EventFiring, State: store.DeliveryPending,
			NextAttempt: schedT0, Created: schedT0}
	}
	return out
}

func repeat(w string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = w
	}
	return out
}

func ids(ds []store.Delivery) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func perHook(ds []store.Delivery) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		out[d.Webhook]++
	}
	return out
}

// minutes is a webhook backoff of n minutes after the n-th failure.
func minutes(n int) time.Duration { return time.Duration(n) * time.Minute }

func TestSchedulerCaps(t *testing.T) {
	tests := []struct {
		name        string
		concurrency int
		due         []store.Delivery
		want        map[string]int // attempts started per webhook
	}{
		{"concurrency cap over many webhooks", 4, dues(1, "a", "b", "c", "d", "e", "f"), map[string]int{"a": 1, "b": 1, "c": 1, "d": 1}},
		{"one webhook gets half", 4, dues(1, repeat("a", 10)...), map[string]int{"a": 2}},
		{"half of an odd concurrency", 5, dues(1, repeat("a", 10)...), map[string]int{"a": 2}},
		{"the others get the rest", 4, dues(1, append(repeat("a", 10), repeat("b", 10)...)...), map[string]int{"a": 2, "b": 2}},
		{"a slow webhook leaves slots to one queued behind it", 8,
			dues(1, append(repeat("slow", 20), "fast")...), map[string]int{"slow": 4, "fast": 1}},
		{"concurrency 1 still starts one", 1, dues(1, "a", "a"), map[string]int{"a": 1}},
		{"nothing due", 4, nil, map[string]int{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newScheduler(tc.concurrency, time.Hour, minutes, 0, 0)
			p := s.take(schedT0, tc.due)
			if got := perHook(p.start); !maps.Equal(got, tc.want) {
				t.Errorf("started %v, want %v", got, tc.want)
			}
			if len(p.hold)+len(p.giveUp) != 0 {
				t.Errorf("healthy webhooks: held %v, gave up %v", ids(p.hold), ids(p.giveUp))
			}
			// The same due list again (attempts still in flight, so the
			// deliveries are still pending in the store): nothing more
			// starts, nothing starts twice.
			if again := s.take(schedT0, tc.due); len(again.start) != 0 {
				t.Errorf("second take with every slot in use started %v", ids(again.start))
			}
			// One attempt reports: exactly one slot frees, and it goes to a
			// delivery not started before.
			if len(p.start) == 0 {
				return
			}
			first := p.start[0]
			s.done(result{d: first, outcome: OutcomeDelivered}, schedT0)
			var rest []store.Delivery
			for _, d := range tc.due {
				if d.ID != first.ID {
					rest = append(rest, d)
				}
			}
			again := s.take(schedT0, rest)
			for _, d := range again.start {
				if slices.Contains(ids(p.start), d.ID) {
					t.Errorf("delivery %d started twice", d.ID)
				}
			}
			if len(rest) > len(p.start)-1 && len(again.start) != 1 {
				t.Errorf("after one result, %d attempts started, want 1", len(again.start))
			}
		})
	}
}

// TestSchedulerFailingWebhook: after a failed attempt the webhook's other
// due deliveries are held until the webhook's backoff ends (never past
// their give-up deadline, and given up once it passed), other webhooks go
// on, then one probe (fewest attempts) is sent; its success releases the
// rest.
func TestSchedulerFailingWebhook(t *testing.T) {
	const giveUp = 30 * time.Minute
	s := newScheduler(8, giveUp, minutes, 0, 0)
	now := schedT0.Add(10 * time.Minute)

	first := dues(1, "down")[0]
	if p := s.take(now, []store.Delivery{first}); len(p.start) != 1 {
		t.Fatalf("first delivery not started: %+v", p)
	}
	first.Attempts = 1
	s.done(result{d: first, outcome: OutcomeRetry, failing: true, err: "HTTP 503 Service Unavailable"}, now)
	downUntil := now.Add(minutes(1))

	due := dues(10, "down", "down", "down", "up")
	due[1].Created = schedT0.Add(-giveUp + 10*time.Minute + 30*time.Second) // deadline before downUntil
	due[2].Created = schedT0.Add(-giveUp)                                   // deadline passed
	due[2].LastError = "HTTP 500 Internal Server Error"                     // its own last error is kept

	p := s.take(now, due)
	if got := ids(p.start); !slices.Equal(got, []int64{13}) {
		t.Errorf("started %v, want only the healthy webhook's delivery 13", got)
	}
	if got := ids(p.hold); !slices.Equal(got, []int64{10, 11}) {
		t.Fatalf("held %v, want 10 and 11", got)
	}
	if got := p.hold[0]; !got.NextAttempt.Equal(downUntil) || !strings.HasPrefix(got.LastError, "held back while the webhook is failing: HTTP 503") {
		t.Errorf("held delivery: next attempt %v (want %v), last error %q", got.NextAttempt, downUntil, got.LastError)
	}
	if got, want := p.hold[1].NextAttempt, due[1].Created.Add(giveUp); !got.Equal(want) {
		t.Errorf("held delivery with an earlier deadline: next attempt %v, want the deadline %v", got, want)
	}
	if got := ids(p.giveUp); !slices.Equal(got, []int64{12}) {
		t.Fatalf("gave up %v, want 12", got)
	}
	if g := p.giveUp[0]; g.State != store.DeliveryGaveUp || !g.Finished.Equal(now) || g.LastError != "HTTP 500 Internal Server Error" {
		t.Errorf("given up: %+v", g)
	}
	// A delivery never attempted says why it was given up.
	never := dues(20, "down")[0]
	never.Created = schedT0.Add(-giveUp)
	if p := s.take(now, []store.Delivery{never}); len(p.giveUp) != 1 ||
		p.giveUp[0].LastError != "never attempted, webhook failing: HTTP 503 Service Unavailable" {
		t.Errorf("never attempted delivery past its deadline: %+v", p)
	}

	// The hold is over: one probe, the delivery with the fewest attempts
	// (the first of those on ties), nothing else to that webhook.
	now = downUntil
	probeDue := dues(30, "down", "down", "down", "down")
	probeDue[0].Attempts, probeDue[1].Attempts, probeDue[2].Attempts, probeDue[3].Attempts = 5, 2, 7, 2
	p = s.take(now, probeDue)
	if got := ids(p.start); !slices.Equal(got, []int64{31}) || len(p.hold) != 0 {
		t.Fatalf("after the hold: started %v held %v, want the probe 31 alone", got, ids(p.hold))
	}
	if p := s.take(now, probeDue); len(p.start) != 0 {
		t.Errorf("a second probe started while one is in flight: %v", ids(p.start))
	}

	// The probe fails again: held longer (the webhook backoff grows).
	s.done(result{d: probeDue[1], outcome: OutcomeRetry, failing: true, err: "HTTP 503 Service Unavailable"}, now)
	p = s.take(now, probeDue)
	if len(p.start) != 0 || len(p.hold) != 4 || !p.hold[0].NextAttempt.Equal(now.Add(minutes(2))) {
		t.Fatalf("after a second failure: started %v, held %d until %v; want all 4 held until %v",
			ids(p.start), len(p.hold), p.hold[0].NextAttempt, now.Add(minutes(2)))
	}

	// The next probe succeeds: the webhook is healthy again, the rest go
	// out up to the per-webhook cap.
	now = now.Add(minutes(2))
	p = s.take(now, probeDue)
	if len(p.start) != 1 {
		t.Fatalf("second probe: started %v", ids(p.start))
	}
	s.done(result{d: p.start[0], outcome: OutcomeDelivered}, now)
	var rest []store.Delivery
	for _, d := range probeDue {
		if d.ID != p.start[0].ID {
			rest = append(rest, d)
		}
	}
	if p := s.take(now, rest); len(p.start) != 3 || len(p.hold) != 0 {
		t.Errorf("healthy again: started %v held %v, want 3 started", ids(p.start), ids(p.hold))
	}
}

// TestSchedulerRetryAfterHoldsWebhook: a Retry-After longer than the
// webhook backoff holds the whole webhook that long.
func TestSchedulerRetryAfterHoldsWebhook(t *testing.T) {
	for _, tc := range []struct {
		retryAfter time.Duration
		want       time.Duration
	}{
		{0, minutes(1)},
		{30 * time.Second, minutes(1)},
		{10 * time.Minute, 10 * time.Minute},
	} {
		t.Run(fmt.Sprint(tc.retryAfter), func(t *testing.T) {
			s := newScheduler(8, time.Hour, minutes, 0, 0)
			d := dues(1, "a")[0]
			s.take(schedT0, []store.Delivery{d})
			s.done(result{d: d, outcome: OutcomeRetry, failing: true, err: "HTTP 429 Too Many Requests", retryAfter: tc.retryAfter}, schedT0)
			p := s.take(schedT0, dues(2, "a"))
			if len(p.hold) != 1 || !p.hold[0].NextAttempt.Equal(schedT0.Add(tc.want)) {
				t.Fatalf("held %+v, want one held until %v", p.hold, schedT0.Add(tc.want))
			}
		})
	}
}

// TestSchedulerNotFailing: a failure that is the delivery's own (its alert
// could not be read) or a shutdown does not hold the webhook; a healthy,
// idle webhook is forgotten.
func TestSchedulerNotFailing(t *testing.T) {
	for _, r := range []result{
		{outcome: OutcomeRetry, failing: false, err: "read alert: database is locked"},
		{outcome: OutcomeGaveUp, failing: false, err: "alert 1 no longer exists"},
		{outcome: ""}, // shutting down, or nothing to send
		{outcome: OutcomeDelivered},
	} {
		t.Run(fmt.Sprintf("%s/%q", r.outcome, r.err), func(t *testing.T) {
			s := newScheduler(4, time.Hour, minutes, 0, 0)
			d := dues(1, "a")[0]
			s.take(schedT0, []store.Delivery{d})
			r.d = d
			s.done(r, schedT0)
			p := s.take(schedT0, dues(2, "a", "a", "a"))
			if len(p.start) != 2 || len(p.hold) != 0 {
				t.Errorf("started %v held %v, want 2 started (the per-webhook cap)", ids(p.start), ids(p.hold))
			}
			for _, d := range p.start {
				s.done(result{d: d, outcome: OutcomeDelivered}, schedT0)
			}
			if len(s.hooks) != 0 || len(s.inflight) != 0 {
				t.Errorf("idle healthy scheduler remembers hooks %v, in flight %v", s.hooks, s.inflight)
			}
		})
	}
}

// TestSchedulerRateLimit: a webhook gets its burst at once, then one
// attempt per 1/rate; the rest wait (not held, not given up, nothing
// written), other webhooks are not slowed, and the plan says when the
// next may go.
func TestSchedulerRateLimit(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := newScheduler(100, time.Hour, minutes, 2, 3) // 2/s, burst 3
	var due []store.Delivery
	for i := range 10 {
		due = append(due, store.Delivery{ID: int64(i + 1), AlertID: int64(i + 1), Webhook: "busy",
			Event: store.EventFiring, State: store.DeliveryPending, NextAttempt: now, Created: now.Add(-2 * time.Hour)})
	}
	due = append(due, store.Delivery{ID: 99, AlertID: 99, Webhook: "quiet", Event: store.EventFiring,
		State: store.DeliveryPending, NextAttempt: now, Created: now})
	started := map[int64]bool{}
	take := func(at time.Time) plan {
		t.Helper()
		var left []store.Delivery
		for _, d := range due {
			if !started[d.ID] {
				left = append(left, d)
			}
		}
		p := s.take(at, left)
		if len(p.hold)+len(p.giveUp) != 0 {
			t.Errorf("at %v: held %d, gave up %d; rate-limited deliveries just wait", at.Sub(now), len(p.hold), len(p.giveUp))
		}
		for _, d := range p.start {
			started[d.ID] = true
			s.done(result{d: d, outcome: OutcomeDelivered}, at)
		}
		return p
	}
	p := take(now)
	if len(p.start) != 4 || p.start[3].Webhook != "quiet" {
		t.Errorf("first pass started %d (%v), want the burst of 3 and the quiet webhook's", len(p.start), p.start)
	}
	if p.rateWait != 500*time.Millisecond {
		t.Errorf("rate wait %v, want 500ms", p.rateWait)
	}
	if p := take(now.Add(100 * time.Millisecond)); len(p.start) != 0 {
		t.Errorf("100ms on: started %d, want none", len(p.start))
	}
	if p := take(now.Add(time.Second)); len(p.start) != 2 {
		t.Errorf("1s on: started %d, want 2", len(p.start))
	}
	if p := take(now.Add(time.Hour)); len(p.start) != 3 {
		t.Errorf("an hour on: started %d, want the burst of 3", len(p.start))
	}
	if p := take(now.Add(time.Hour + 2*time.Second)); len(p.start) != 2 || len(started) != len(due) {
		t.Errorf("then: started %d, %d of %d in all", len(p.start), len(started), len(due))
	}
}
