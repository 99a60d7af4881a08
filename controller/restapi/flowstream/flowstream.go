// Package flowstream fans newly stored flows out to live subscribers (the
// dashboard's server-sent events): the flow ingest's single writer
// publishes each committed group of records, each subscriber gets those
// its filter matches.
//
// Invariants: Publish never blocks and never waits for a subscriber:
// each subscriber has a bounded buffer, and one whose buffer is full is
// dropped (its Gone channel closes; the client reconnects and pages the
// gap from the store); the number of subscribers is bounded (Subscribe
// refuses beyond it, ErrTooMany); published records are not modified.
//
// It must not import restapi (which uses it) nor flowingest (which feeds
// it through a plain function); of the store it uses only the query type.
package flowstream

import (
	"errors"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Defaults of Config.
const (
	DefaultMaxSubscribers = 32
	DefaultBuffer         = 1024
)

// ErrTooMany refuses a subscriber beyond the bound.
var ErrTooMany = errors.New("too many live flow subscribers")

// Config configures a Broker. Zero values take the defaults.
type Config struct {
	Log            *zap.Logger
	MaxSubscribers int
	// Buffer is each subscriber's queue of records not yet sent.
	Buffer int
}

// Broker is safe for concurrent use.
type Broker struct {
	cfg Config

	mu   sync.Mutex // guards subs; nothing else is locked while it is held
	subs map[*Sub]struct{}
}

// Sub is one subscriber.
type Sub struct {
	// C carries the matching records, oldest first.
	C <-chan flowrecord.Record
	// Gone closes when the subscriber was dropped for falling behind.
	Gone <-chan struct{}

	c     chan flowrecord.Record
	gone  chan struct{}
	match func(*flowrecord.Record) bool
}

// New returns a broker without subscribers.
func New(cfg Config) *Broker {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.MaxSubscribers <= 0 {
		cfg.MaxSubscribers = DefaultMaxSubscribers
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	return &Broker{cfg: cfg, subs: make(map[*Sub]struct{})}
}

// Subscribe adds a subscriber to the records match accepts (match runs on
// the publisher's goroutine: it must be quick and must not block).
func (b *Broker) Subscribe(match func(*flowrecord.Record) bool) (*Sub, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) >= b.cfg.MaxSubscribers {
		return nil, ErrTooMany
	}
	s := &Sub{c: make(chan flowrecord.Record, b.cfg.Buffer), gone: make(chan struct{}), match: match}
	s.C, s.Gone = s.c, s.gone
	b.subs[s] = struct{}{}
	return s, nil
}

// Unsubscribe removes a subscriber (again: no effect).
func (b *Broker) Unsubscribe(s *Sub) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, s)
}

// Subscribers returns how many there are.
func (b *Broker) Subscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Publish offers stored records to every subscriber.
func (b *Broker) Publish(recs []flowrecord.Record) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
	recs:
		for i := range recs {
			if !s.match(&recs[i]) {
				continue
			}
			select {
			case s.c <- recs[i]:
			default:
				delete(b.subs, s)
				close(s.gone)
				b.cfg.Log.Warn("live flow subscriber dropped: it fell behind", zap.Int("buffer", b.cfg.Buffer))
				break recs
			}
		}
	}
}

// Matcher is a live stream's filter: it selects the records the store's
// query q would (its time bounds, limit and cursor aside).
func Matcher(q store.FlowQuery) func(*flowrecord.Record) bool {
	return func(r *flowrecord.Record) bool {
		switch {
		case q.Verdict != ruleset.VerdictNone && r.Verdict != q.Verdict,
			q.HasPort && r.DstPort != q.Port,
			q.Protocol != "" && r.Protocol != q.Protocol,
			q.Workload != "" && r.SrcWorkload != q.Workload && r.DstWorkload != q.Workload,
			q.Addr.IsValid() && r.SrcAddr != q.Addr && r.DstAddr != q.Addr,
			q.Rule != "" && r.Rule != q.Rule,
			q.Node != "" && r.Node != q.Node,
			q.ByWorkloads && !slices.Contains(q.Workloads, r.SrcWorkload) && !slices.Contains(q.Workloads, r.DstWorkload):
			return false
		}
		return true
	}
}
