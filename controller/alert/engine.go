package alert

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
)

// DefaultRefreshInterval is how often an open alert is re-posted to
// Alertmanager webhooks: Alertmanager forgets an alert whose endsAt
// passes, so a live alert must be re-sent well before (the deliverer sets
// endsAt several intervals ahead).
const DefaultRefreshInterval = time.Minute

// Engine turns matching flows into alerts. Its methods run inside the
// caller's store transaction; what it remembers between transactions
// (which connections an alert already counted) is only updated once the
// caller reports the transaction committed, so a failed and retried batch
// is counted once.
type Engine struct {
	refresh time.Duration

	mu     sync.Mutex
	policy *Policy
	// seen remembers, per live alert, the connections (5-tuples) it has
	// counted: an agent reports a connection again when it lasts, and a
	// connection attempt reaches the controller from both ends. Bounded
	// per alert; lost on restart (at most one extra count per connection
	// in flight then).
	seen map[int64]*tupleSet
}

// maxTuplesPerAlert bounds the memory one alert's dedup set takes; past
// it the oldest are forgotten (a long-lived flood counts a connection
// again only after that many newer ones).
const maxTuplesPerAlert = 4096

// NewEngine returns an engine enforcing p. refresh <= 0 takes
// DefaultRefreshInterval.
func NewEngine(p *Policy, refresh time.Duration) *Engine {
	if refresh <= 0 {
		refresh = DefaultRefreshInterval
	}
	if p == nil {
		p = NewPolicy(&policy.Set{}, Builtin{})
	}
	return &Engine{refresh: refresh, policy: p, seen: make(map[int64]*tupleSet)}
}

// SetPolicy switches to a new policy; alerts already raised keep the rule
// they were raised by (and its webhooks, as named in the alert).
func (e *Engine) SetPolicy(p *Policy) {
	e.mu.Lock()
	e.policy = p
	e.mu.Unlock()
}

// Policy returns the policy in force.
func (e *Engine) Policy() *Policy {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.policy
}

// Pending is what a transaction's Observe and Sweep calls changed in the
// engine's memory; Commit applies it once the transaction committed.
type Pending struct {
	tuples map[int64][]tuple
	forget []int64
	// Raised counts alerts opened, by rule; Deliveries the deliveries
	// queued.
	Raised     map[string]int
	Deliveries int
}

func (p *Pending) add(id int64, t tuple) {
	if p.tuples == nil {
		p.tuples = make(map[int64][]tuple)
	}
	p.tuples[id] = append(p.tuples[id], t)
}

func (p *Pending) has(id int64, t tuple) bool {
	for _, x := range p.tuples[id] {
		if x == t {
			return true
		}
	}
	return false
}

func (p *Pending) raised(rule string) {
	if p.Raised == nil {
		p.Raised = make(map[string]int)
	}
	p.Raised[rule]++
}

// Commit applies what a committed transaction did to the engine's memory.
func (e *Engine) Commit(p *Pending) {
	if p == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, ts := range p.tuples {
		s := e.seen[id]
		if s == nil {
			s = newTupleSet()
			e.seen[id] = s
		}
		for _, t := range ts {
			s.add(t)
		}
	}
	for _, id := range p.forget {
		delete(e.seen, id)
	}
}

// Observe matches flow records against the rules and records what they
// raise in tx: a new alert (with a firing delivery to each of its
// webhooks) or one more count on the live alert of the same key. now is
// the controller's clock; alert times are the flows' own.
func (e *Engine) Observe(tx store.EventTx, recs []flowrecord.Record, now time.Time, pend *Pending) error {
	e.mu.Lock()
	pol := e.policy
	e.mu.Unlock()
	if len(pol.rules) == 0 {
		return nil
	}
	for i := range recs {
		f := &recs[i]
		src, dst := pol.ends(f)
		for ri := range pol.rules {
			r := &pol.rules[ri]
			if !r.matches(f, &src, &dst) {
				continue
			}
			if err := e.raise(tx, r, f, &src, &dst, now, pend); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *Engine) raise(tx store.EventTx, r *rule, f *flowrecord.Record, src, dst *end, now time.Time, pend *Pending) error {
	source, destination := endName(src), endName(dst)
	key := dedupKey(r.name, source, destination, f.DstPort, f.Protocol)
	t := tupleOf(f)
	first, last := f.FirstSeen, f.LastSeen
	if first.IsZero() {
		first = f.Time
	}
	if last.IsZero() {
		last = first
	}
	a, err := tx.LiveAlert(key)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return err
	case first.Sub(a.LastSeen) > a.Window:
		// The previous run ended a window ago (the sweeper had not got
		// to it yet): close it and open a new one.
		if err := e.resolve(tx, &a, a.LastSeen.Add(a.Window), "window", now, pend); err != nil {
			return err
		}
	default:
		if !e.counted(a.ID, t, pend) {
			a.Count++
			pend.add(a.ID, t)
		}
		if last.After(a.LastSeen) {
			a.LastSeen = last
		}
		if first.Before(a.FirstSeen) {
			a.FirstSeen = first
		}
		a.Verdict, a.DecidingRule, a.Node = f.Verdict.String(), f.Rule, f.Node
		return tx.UpdateAlert(&a)
	}
	a = store.Alert{
		Rule: r.name, Severity: r.severity, Key: key, State: store.AlertOpen, Count: 1,
		Source: source, Destination: destination,
		SrcWorkload: src.workload, DstWorkload: dst.workload,
		SrcAddr: src.addr, DstAddr: dst.addr,
		SrcLabels: src.labels, DstLabels: dst.labels,
		Port: f.DstPort, Protocol: f.Protocol,
		Verdict: f.Verdict.String(), DecidingRule: f.Rule, Node: f.Node,
		FirstSeen: first, LastSeen: last, Window: r.window,
		Notify: r.notify, Created: now,
	}
	if err := tx.InsertAlert(&a); err != nil {
		return err
	}
	pend.add(a.ID, t)
	pend.raised(r.name)
	return e.queue(tx, &a, store.EventFiring, a.Notify, now, pend)
}

func (e *Engine) counted(id int64, t tuple, pend *Pending) bool {
	if pend.has(id, t) {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.seen[id]
	return s != nil && s.has(t)
}

func (e *Engine) queue(tx store.EventTx, a *store.Alert, event string, webhooks []string, now time.Time, pend *Pending) error {
	if len(webhooks) == 0 {
		return nil
	}
	ds := make([]store.Delivery, len(webhooks))
	for i, w := range webhooks {
		ds[i] = store.Delivery{AlertID: a.ID, Webhook: w, Event: event, NextAttempt: now, Created: now}
	}
	if err := tx.AddDeliveries(ds); err != nil {
		return err
	}
	pend.Deliveries += len(ds)
	return nil
}

// resolve closes a live alert as of at and tells its webhooks. at may be
// flow time long past (a late batch); the deliveries are queued at now, the
// controller's clock, which their retries and give-up deadline count from.
func (e *Engine) resolve(tx store.EventTx, a *store.Alert, at time.Time, by string, now time.Time, pend *Pending) error {
	a.State, a.ResolvedAt, a.ResolvedBy = store.AlertResolved, at, by
	if err := tx.UpdateAlert(a); err != nil {
		return err
	}
	pend.forget = append(pend.forget, a.ID)
	return e.queue(tx, a, store.EventResolved, a.Notify, now, pend)
}

// Resolve closes a live alert on an operator's request (the API).
func (e *Engine) Resolve(tx store.EventTx, id int64, now time.Time, pend *Pending) (store.Alert, error) {
	a, err := tx.Alert(id)
	if err != nil {
		return a, err
	}
	if a.State == store.AlertResolved {
		return a, nil
	}
	return a, e.resolve(tx, &a, now, "api", now, pend)
}

// Sweep resolves live alerts whose window passed with no repeat, and
// queues the periodic re-post of the others to Alertmanager webhooks.
func (e *Engine) Sweep(tx store.EventTx, now time.Time, pend *Pending) error {
	pol := e.Policy()
	live, err := tx.LiveAlerts()
	if err != nil {
		return err
	}
	for i := range live {
		a := &live[i]
		if now.Sub(a.LastSeen) > a.Window {
			if err := e.resolve(tx, a, now, "window", now, pend); err != nil {
				return err
			}
			continue
		}
		for _, name := range a.Notify {
			w, ok := pol.Webhook(name)
			if !ok || w.Format != policy.FormatAlertmanager {
				continue
			}
			last, err := tx.LastDeliveryCreated(a.ID, name)
			if err != nil {
				return err
			}
			if now.Sub(last) >= e.refresh {
				if err := e.queue(tx, a, store.EventRefresh, []string{name}, now, pend); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func endName(e *end) string {
	if e.workload != "" {
		return e.workload
	}
	return e.addr.String()
}

func dedupKey(rule, src, dst string, port uint16, proto string) string {
	return fmt.Sprintf("%s|%s|%s|%s/%s", rule, src, dst, strconv.Itoa(int(port)), proto)
}

// tuple names one connection. Both ends' reports of it (egress on the
// source's node, ingress on the destination's) carry the same tuple.
type tuple struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	proto            string
}

func tupleOf(f *flowrecord.Record) tuple {
	// Not the first-seen time: the two ends' clocks differ. A client
	// port reused for a new attempt inside one window is counted once.
	return tuple{src: f.SrcAddr.Unmap(), dst: f.DstAddr.Unmap(), srcPort: f.SrcPort, dstPort: f.DstPort, proto: f.Protocol}
}

// tupleSet is a FIFO-bounded set.
type tupleSet struct {
	m     map[tuple]struct{}
	order []tuple
}

func newTupleSet() *tupleSet { return &tupleSet{m: make(map[tuple]struct{})} }

func (s *tupleSet) has(t tuple) bool { _, ok := s.m[t]; return ok }

func (s *tupleSet) add(t tuple) {
	if s.has(t) {
		return
	}
	if len(s.order) >= maxTuplesPerAlert {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	s.m[t] = struct{}{}
	s.order = append(s.order, t)
}
