package webhook

import (
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

// scheduler decides which due deliveries are attempted now. It belongs
// to Run's goroutine; attempts report back through Run.
//
// Isolation between webhooks rests on three rules:
//   - at most Concurrency attempts run at once, and at most perWebhook
//     (half of them) to one webhook, so one slow receiver always leaves
//     slots to the others;
//   - a webhook whose last attempt failed is "failing": its other
//     deliveries are held back (their NextAttempt moved to when the
//     webhook is tried again) instead of each timing out in turn, so a
//     dead receiver costs one attempt per backoff period, not one per
//     delivery, and its deliveries leave the head of the due queue where
//     they would hide other webhooks' from DueDeliveries;
//   - a failing webhook is tried again with one probe, the due delivery
//     with the fewest attempts, so one delivery the receiver always
//     refuses cannot keep the webhook failing for the others.
//
// And each webhook has a token bucket (rate, burst): an attempt takes a
// token, and a due delivery finding none waits in the outbox, pending,
// until one is there (it is never given up for waiting: give-up counts
// failed attempts' time only, so a storm delays deliveries, never loses
// them).
type scheduler struct {
	concurrency int
	perWebhook  int
	giveUpAfter time.Duration
	// hookBackoff is how long a webhook is held after its n-th failure
	// in a row.
	hookBackoff func(n int) time.Duration
	inflight    map[int64]bool
	hooks       map[string]*hookState
	// rate (attempts per second, <= 0: unlimited) and burst configure
	// buckets, one per webhook that was attempted.
	rate    float64
	burst   float64
	buckets map[string]*bucket
}

// bucket is a token bucket: tokens at last, refilled at the scheduler's
// rate up to its burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// take takes a token if there is one; else it returns how long until
// there is.
func (s *scheduler) takeToken(name string, now time.Time) (bool, time.Duration) {
	if s.rate <= 0 {
		return true, 0
	}
	b := s.buckets[name]
	if b == nil {
		b = &bucket{tokens: s.burst, last: now}
		s.buckets[name] = b
	}
	if now.After(b.last) {
		b.tokens = min(s.burst, b.tokens+now.Sub(b.last).Seconds()*s.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / s.rate * float64(time.Second))
}

// hookState is what the scheduler knows of one webhook. It lives in
// memory only: after a restart every webhook starts healthy and the first
// failure holds it again.
type hookState struct {
	inflight  int
	fails     int // failed attempts in a row; 0 when healthy
	downUntil time.Time
	lastErr   string
}

// plan is what take decided: attempts to start, and deliveries to write
// back without an attempt.
type plan struct {
	// rateWait, when some due delivery waits for its webhook's rate
	// limit, is how long until the first of them may go.
	rateWait time.Duration
	start    []store.Delivery
	hold     []store.Delivery // NextAttempt and LastError updated
	giveUp   []store.Delivery // held past GiveUpAfter: State gave-up
}

func newScheduler(concurrency int, giveUpAfter time.Duration, hookBackoff func(int) time.Duration, rate float64, burst int) *scheduler {
	return &scheduler{
		rate:        rate,
		burst:       float64(max(burst, 1)),
		buckets:     map[string]*bucket{},
		concurrency: concurrency,
		perWebhook:  max(1, concurrency/2),
		giveUpAfter: giveUpAfter,
		hookBackoff: hookBackoff,
		inflight:    map[int64]bool{},
		hooks:       map[string]*hookState{},
	}
}

// free is the number of attempts that may start.
func (s *scheduler) free() int { return s.concurrency - len(s.inflight) }

// take plans due deliveries (DueDeliveries order) and marks the ones to
// start as in flight; each must later be passed to done.
func (s *scheduler) take(now time.Time, due []store.Delivery) plan {
	var p plan
	free := s.free()
	probes := s.probes(now, due)
	for _, dl := range due {
		if s.inflight[dl.ID] {
			continue // its attempt has not reported yet
		}
		h := s.hooks[dl.Webhook]
		if h != nil && h.fails > 0 && now.Before(h.downUntil) {
			if deadline := dl.Created.Add(s.giveUpAfter); !now.Before(deadline) {
				dl.State, dl.Finished = store.DeliveryGaveUp, now
				if dl.LastError == "" {
					dl.LastError = "never attempted, webhook failing: " + h.lastErr
				}
				p.giveUp = append(p.giveUp, dl)
			} else {
				dl.NextAttempt = h.downUntil
				if deadline.Before(dl.NextAttempt) {
					dl.NextAttempt = deadline // one last try, or give up, then
				}
				dl.LastError = "held back while the webhook is failing: " + h.lastErr
				p.hold = append(p.hold, dl)
			}
			continue
		}
		if free == 0 {
			continue // holds above are still worth writing
		}
		if h != nil && h.fails > 0 {
			if probes[dl.Webhook] != dl.ID {
				continue
			}
		} else if h != nil && h.inflight >= s.perWebhook {
			continue
		}
		if ok, wait := s.takeToken(dl.Webhook, now); !ok {
			if p.rateWait == 0 || wait < p.rateWait {
				p.rateWait = max(wait, time.Millisecond)
			}
			continue
		}
		if h == nil {
			h = &hookState{}
			s.hooks[dl.Webhook] = h
		}
		h.inflight++
		s.inflight[dl.ID] = true
		free--
		p.start = append(p.start, dl)
	}
	return p
}

// probes picks, for each failing webhook whose hold is over and that has
// nothing in flight, the due delivery with the fewest attempts (the first
// on ties).
func (s *scheduler) probes(now time.Time, due []store.Delivery) map[string]int64 {
	picked := map[string]store.Delivery{}
	for _, dl := range due {
		h := s.hooks[dl.Webhook]
		if h == nil || h.fails == 0 || now.Before(h.downUntil) || h.inflight > 0 || s.inflight[dl.ID] {
			continue
		}
		if cur, ok := picked[dl.Webhook]; !ok || dl.Attempts < cur.Attempts {
			picked[dl.Webhook] = dl
		}
	}
	ids := make(map[string]int64, len(picked))
	for name, dl := range picked {
		ids[name] = dl.ID
	}
	return ids
}

// done takes back an attempt's slot and updates its webhook's health.
func (s *scheduler) done(r result, now time.Time) {
	delete(s.inflight, r.d.ID)
	h := s.hooks[r.d.Webhook]
	if h == nil {
		return
	}
	h.inflight--
	switch {
	case r.outcome == OutcomeDelivered:
		h.fails, h.downUntil, h.lastErr = 0, time.Time{}, ""
	case r.failing:
		h.fails++
		h.downUntil = now.Add(max(s.hookBackoff(h.fails), r.retryAfter))
		h.lastErr = r.err
	}
	if h.inflight == 0 && h.fails == 0 {
		delete(s.hooks, r.d.Webhook) // healthy and idle: nothing to remember
	}
}
