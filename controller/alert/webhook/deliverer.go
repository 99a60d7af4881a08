package webhook

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/alert/webhook/egress"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// Defaults of Config.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 5 * time.Minute
	DefaultGiveUpAfter = 24 * time.Hour
	DefaultConcurrency = 8
	// DefaultRate and DefaultBurst bound the attempts to one webhook:
	// one a second on average (Slack's limit for incoming webhooks), 20
	// at once. Beyond it deliveries wait in the outbox.
	DefaultRate  = 1.0
	DefaultBurst = 20
	// DefaultAlertmanagerResolveAfter is how far ahead of now an open
	// alert's endsAt is set: several re-post intervals, so a late re-post
	// does not let Alertmanager resolve a live alert.
	DefaultAlertmanagerResolveAfter = 5 * time.Minute
)

// Outbox is what the deliverer needs of the store.
type Outbox interface {
	EventTx(ctx context.Context, f func(tx store.EventTx) error) error
	DueDeliveries(ctx context.Context, now time.Time, perWebhook, limit int) ([]store.Delivery, error)
	NextDeliveryAt(ctx context.Context) (time.Time, int, error)
	UpdateDelivery(ctx context.Context, d store.Delivery) error
}

// Config configures a Deliverer. Zero values take the defaults.
type Config struct {
	Store Outbox
	// Webhooks looks a webhook up by name in the policy in force (read at
	// every attempt, so a changed URL or secret applies to deliveries
	// already queued).
	Webhooks func(name string) (policy.Webhook, bool)
	Log      *zap.Logger
	// Client sends the requests; nil is egress.NewClient(&Destinations): one
	// that connects only where Destinations allows, not through a proxy,
	// and does not follow redirects (a receiver that moved must be
	// reconfigured, not followed with the alert and its signature to
	// wherever it points). Tests may give their own.
	Client       *http.Client
	Destinations egress.Destinations
	// Secrets reads webhooks' secrets; nil reads env secrets only (file
	// secrets need a directory: egress.NewSecrets(--secrets-dir)).
	Secrets *egress.Secrets
	// Timeout bounds one attempt, connection and answer included.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts (full
	// jitter, doubling); GiveUpAfter is how long after it was queued a
	// delivery is abandoned and recorded as gave-up.
	MinBackoff, MaxBackoff time.Duration
	GiveUpAfter            time.Duration
	// Concurrency bounds the attempts in flight (at most half of them to
	// one webhook).
	Concurrency int
	// Rate is the attempts per second one webhook gets on average (0:
	// DefaultRate; negative: unlimited), Burst how many it may get at
	// once (0: DefaultBurst). Deliveries beyond wait, pending.
	Rate  float64
	Burst int
	// AlertmanagerResolveAfter: see DefaultAlertmanagerResolveAfter.
	AlertmanagerResolveAfter time.Duration
	// DashboardURL is the base of the alert links in payloads; "" for
	// none.
	DashboardURL string
	// Now is the clock; Rand returns uniform numbers in [0, 1) for the
	// jitter. Tests set both. Both, and Outcome, are called from several
	// goroutines at once.
	Now  func() time.Time
	Rand func() float64
	// Outcome, if set, is told every attempt's outcome (metrics).
	Outcome func(webhook, outcome string)
}

// Deliverer sends the outbox's deliveries: it is the only reader of
// pending deliveries and the only writer of their outcomes, so a delivery
// is never attempted twice at once. Deliveries are at least once: an
// attempt whose outcome could not be recorded is made again.
type Deliverer struct {
	cfg  Config
	log  *zap.Logger
	kick chan struct{}
}

// New returns a Deliverer; Run starts it.
func New(cfg Config) (*Deliverer, error) {
	if cfg.Store == nil || cfg.Webhooks == nil {
		return nil, errors.New("webhook: a store and a webhook lookup are required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Client == nil {
		cfg.Client = egress.NewClient(&cfg.Destinations)
	}
	if cfg.Secrets == nil {
		cfg.Secrets = egress.NewSecrets("")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = DefaultGiveUpAfter
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.AlertmanagerResolveAfter <= 0 {
		cfg.AlertmanagerResolveAfter = DefaultAlertmanagerResolveAfter
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	return &Deliverer{cfg: cfg, log: cfg.Log, kick: make(chan struct{}, 1)}, nil
}

// backoff is how long to wait after the n-th failure in a row, of a
// delivery or of a webhook.
func (d *Deliverer) backoff(n int) time.Duration {
	return backoff(n, d.cfg.MinBackoff, d.cfg.MaxBackoff, d.cfg.Rand())
}

// Kick says deliveries were queued; it never blocks.
func (d *Deliverer) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Loop bounds: how many due deliveries one pass reads, how long the loop
// sleeps at most without a kick or a result (a safety net: deliveries
// are only queued by this process, which kicks), and how long it waits
// after the store failed.
const (
	dueBatch   = 256
	maxSleep   = 5 * time.Second
	storeRetry = time.Second
)

// Run delivers until ctx is done, then waits for the attempts in flight
// (each stops at once: ctx is theirs too) and returns. Pending deliveries
// stay in the store for the next run: an outbox outlives the process.
func (d *Deliverer) Run(ctx context.Context) {
	sched := newScheduler(d.cfg.Concurrency, d.cfg.GiveUpAfter, d.backoff, d.cfg.Rate, d.cfg.Burst)
	results := make(chan result, d.cfg.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := d.pass(ctx, sched, results, &wg)
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			sched.done(r, d.cfg.Now())
		case <-d.kick:
		case <-timer.C:
		}
	}
}

// pass starts what is due and returns how long to sleep before the next
// pass if nothing else wakes the loop.
func (d *Deliverer) pass(ctx context.Context, sched *scheduler, results chan<- result, wg *sync.WaitGroup) time.Duration {
	now := d.cfg.Now()
	// Per webhook, the due deliveries the scheduler may start or hold
	// now, plus as many again: in-flight ones are still pending and come
	// back.
	due, err := d.cfg.Store.DueDeliveries(ctx, now, 2*d.cfg.Concurrency, dueBatch)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("read webhook outbox", zap.Error(err))
		}
		return storeRetry
	}
	p := sched.take(now, due)
	for _, dl := range p.hold {
		d.record(ctx, dl)
	}
	for _, dl := range p.giveUp {
		d.finish(ctx, dl, store.DeliveryGaveUp, dl.LastError, false)
	}
	for _, dl := range p.start {
		wg.Go(func() { results <- d.attempt(ctx, dl) })
	}
	if len(p.hold)+len(p.giveUp) > 0 {
		return 0 // what was written back may have uncovered other due ones
	}
	if len(due) > len(p.start) {
		// Due deliveries wait for a slot or a probe, and an attempt's
		// result wakes the loop; but NextDeliveryAt counts the
		// deliveries in flight (still pending in the store), so it
		// cannot say when a retry of another webhook comes due. Look
		// again after the shortest backoff, or that retry would wait for
		// a slow receiver's attempt to end (up to maxSleep). One waiting
		// for its webhook's rate limit may go sooner.
		wait := min(d.cfg.MinBackoff, maxSleep)
		if p.rateWait > 0 {
			wait = min(wait, p.rateWait)
		}
		return wait
	}
	next, _, err := d.cfg.Store.NextDeliveryAt(ctx)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			d.log.Error("read webhook outbox", zap.Error(err))
		}
		return storeRetry
	case next.IsZero():
		return maxSleep
	}
	// Deliveries in flight are still pending in the store, so next may
	// be in the past; their results wake the loop.
	return min(max(next.Sub(d.cfg.Now()), 0), maxSleep)
}
