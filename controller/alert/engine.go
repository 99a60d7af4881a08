package alert

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
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

// Limits bound what an alert storm costs. Zero values take the defaults.
type Limits struct {
	// MaxLivePerRule is how many live alerts one rule may have; the
	// runs beyond it are folded into the rule's one summary alert.
	MaxLivePerRule int
	// MaxResolved and MaxFinishedDeliveries bound the resolved alerts
	// and the finished (delivered or given-up) deliveries kept; the
	// oldest finished go first. Pending deliveries are never deleted.
	MaxResolved           int
	MaxFinishedDeliveries int
}

// Defaults of Limits.
const (
	DefaultMaxLivePerRule        = 100
	DefaultMaxResolved           = 100000
	DefaultMaxFinishedDeliveries = 100000
)

// MaxPortSample is how many ports an alert lists (the first distinct ones
// seen); PortCount counts them all.
const MaxPortSample = 64

// sweepBatch bounds the alerts one sweep reads for each of its jobs
// (expiry, re-posts); a bigger backlog is worked off over the next
// sweeps. trimEvery is how often the sweep applies the size budgets.
const (
	sweepBatch = 1000
	trimEvery  = 20 * time.Second
)

// Engine turns matching flows into alerts. Its methods run inside the
// caller's store transaction; what it remembers between transactions
// (which connections an alert already counted) is only updated once the
// caller reports the transaction committed, so a failed and retried batch
// is counted once.
type Engine struct {
	refresh time.Duration
	limits  Limits

	mu     sync.Mutex
	policy *Policy
	// seen remembers, per live alert, the connections (5-tuples) it has
	// counted: an agent reports a connection again when it lasts, and a
	// connection attempt reaches the controller from both ends. Bounded
	// per alert; lost on restart (at most one extra count per connection
	// in flight then).
	seen map[int64]*boundedSet[tuple]
	// folded remembers, per summary alert, the runs (dedup keys) it
	// counted in Folded. Bounded and lost on restart like seen: a run
	// folded before a restart and seen again after it is counted again.
	folded map[int64]*boundedSet[string]
	// lastTrim is when the sweep last applied the size budgets.
	lastTrim time.Time
}

// maxTuplesPerAlert bounds the memory one alert's dedup set takes; past
// it the oldest are forgotten (a long-lived flood counts a connection
// again only after that many newer ones). maxFoldedKeys does the same for
// a summary alert's runs.
const (
	maxTuplesPerAlert = 4096
	maxFoldedKeys     = 16384
)

// NewEngine returns an engine enforcing p. refresh <= 0 takes
// DefaultRefreshInterval.
func NewEngine(p *Policy, refresh time.Duration, l Limits) *Engine {
	if refresh <= 0 {
		refresh = DefaultRefreshInterval
	}
	if p == nil {
		p = NewPolicy(&policy.Set{}, Builtin{})
	}
	if l.MaxLivePerRule <= 0 {
		l.MaxLivePerRule = DefaultMaxLivePerRule
	}
	if l.MaxResolved <= 0 {
		l.MaxResolved = DefaultMaxResolved
	}
	if l.MaxFinishedDeliveries <= 0 {
		l.MaxFinishedDeliveries = DefaultMaxFinishedDeliveries
	}
	return &Engine{refresh: refresh, limits: l, policy: p,
		seen: make(map[int64]*boundedSet[tuple]), folded: make(map[int64]*boundedSet[string])}
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
	keys   map[int64][]string
	forget []int64
	// Raised counts alerts opened, by rule; Folded the runs folded into
	// a summary alert, by rule; Deliveries the deliveries queued.
	Raised     map[string]int
	Folded     map[string]int
	Deliveries int
	// Trimmed counts the resolved alerts and finished deliveries the
	// size budgets deleted.
	TrimmedAlerts, TrimmedDeliveries int64
	trimmed                          bool
	trimAt                           time.Time
}

func (p *Pending) add(id int64, t tuple)     { appendTo(&p.tuples, id, t) }
func (p *Pending) addKey(id int64, k string) { appendTo(&p.keys, id, k) }
func (p *Pending) raised(rule string)        { inc(&p.Raised, rule) }
func (p *Pending) folded(rule string)        { inc(&p.Folded, rule) }

func appendTo[T any](m *map[int64][]T, id int64, v T) {
	if *m == nil {
		*m = make(map[int64][]T)
	}
	(*m)[id] = append((*m)[id], v)
}

func inc(m *map[string]int, k string) {
	if *m == nil {
		*m = make(map[string]int)
	}
	(*m)[k]++
}

// Commit applies what a committed transaction did to the engine's memory.
func (e *Engine) Commit(p *Pending) {
	if p == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	remember(e.seen, p.tuples, maxTuplesPerAlert)
	remember(e.folded, p.keys, maxFoldedKeys)
	for _, id := range p.forget {
		delete(e.seen, id)
		delete(e.folded, id)
	}
	if p.trimmed {
		e.lastTrim = p.trimAt
	}
}

// remember adds, per alert, the members of add to its bounded set in sets.
func remember[T comparable](sets map[int64]*boundedSet[T], add map[int64][]T, bound int) {
	for id, ms := range add {
		s := sets[id]
		if s == nil {
			s = newBoundedSet[T](bound)
			sets[id] = s
		}
		for _, m := range ms {
			s.add(m)
		}
	}
}

// observation is one Observe call's view of the live alerts it touched:
// each is read from the store once and written back once at the end, so a
// batch of a thousand flows of one scan costs one read and one write.
type observation struct {
	tx    store.EventTx
	now   time.Time
	pend  *Pending
	live  map[string]*store.Alert // by dedup key; nil: known not live
	dirty map[string]bool
	// liveCount is, per rule, its live alerts (summary not counted), as
	// far as this call knows; read from the store at first need.
	liveCount map[string]int
	// tuples and keys counted in this call, not yet in Pending's
	// committed view (Pending has them too).
	counted map[int64]map[tuple]bool
	keys    map[int64]map[string]bool
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
	o := &observation{tx: tx, now: now, pend: pend, live: map[string]*store.Alert{}, dirty: map[string]bool{},
		liveCount: map[string]int{}, counted: map[int64]map[tuple]bool{}, keys: map[int64]map[string]bool{}}
	for i := range recs {
		f := &recs[i]
		if f.State.IsUpdate() {
			// Volume of a connection its new record already reported
			// (and counted): not a new attempt. Alerts match attempts.
			continue
		}
		src, dst := pol.ends(f)
		for ri := range pol.rules {
			r := &pol.rules[ri]
			if !r.matches(f, &src, &dst) {
				continue
			}
			if err := e.raise(o, r, f, &src, &dst); err != nil {
				return err
			}
		}
	}
	// Written in key order: the same batch always writes the same way.
	for _, k := range slices.Sorted(maps.Keys(o.dirty)) {
		if a := o.live[k]; a != nil {
			if err := tx.UpdateAlert(a); err != nil {
				return err
			}
		}
	}
	return nil
}

// liveAlert returns the live alert of key, reading the store at most once
// per Observe call; nil when there is none.
func (o *observation) liveAlert(key string) (*store.Alert, error) {
	if a, ok := o.live[key]; ok {
		return a, nil
	}
	a, err := o.tx.LiveAlert(key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		o.live[key] = nil
		return nil, nil
	case err != nil:
		return nil, err
	}
	o.live[key] = &a
	return &a, nil
}

// flowTimes are a flow's first and last seen, filled in from its time.
func flowTimes(f *flowrecord.Record) (first, last time.Time) {
	first, last = f.FirstSeen, f.LastSeen
	if first.IsZero() {
		first = f.Time
	}
	if last.IsZero() {
		last = first
	}
	return first, last
}

func (e *Engine) raise(o *observation, r *rule, f *flowrecord.Record, src, dst *end) error {
	source, destination := endName(src), endName(dst)
	key := dedupKey(r.name, source, destination, f.Protocol)
	first, _ := flowTimes(f)
	a, err := e.current(o, key, first)
	if err != nil {
		return err
	}
	if a != nil {
		e.fold(o, key, a, f)
		return nil
	}
	// A new run. Within the rule's cap it is an alert of its own; past
	// it, one more run of the rule's summary alert.
	n, ok := o.liveCount[r.name]
	if !ok {
		if n, err = o.tx.LiveAlertCount(r.name); err != nil {
			return err
		}
	}
	if n >= e.limits.MaxLivePerRule {
		o.liveCount[r.name] = n
		return e.foldSummary(o, r, key, f)
	}
	o.liveCount[r.name] = n + 1
	na := &store.Alert{
		Rule: r.name, Severity: r.severity, Key: key, State: store.AlertOpen,
		Source: source, Destination: destination,
		SrcWorkload: src.workload, DstWorkload: dst.workload,
		SrcAddr: src.addr, DstAddr: dst.addr,
		SrcLabels: src.labels, DstLabels: dst.labels,
		Port: f.DstPort, Protocol: f.Protocol,
		Window: r.window, Notify: r.notify, Created: o.now, RefreshedAt: o.now,
	}
	return e.open(o, key, na, f, r.name)
}

// current returns the live alert of key, closing it first (nil returned)
// when the flow starting at first comes more than a window after it.
func (e *Engine) current(o *observation, key string, first time.Time) (*store.Alert, error) {
	a, err := o.liveAlert(key)
	if err != nil || a == nil {
		return nil, err
	}
	if first.Sub(a.LastSeen) > a.Window {
		// The previous run ended a window ago (the sweeper had not got
		// to it yet): close it and open a new one.
		if err := e.resolve(o.tx, a, a.LastSeen.Add(a.Window), "window", o.now, o.pend); err != nil {
			return nil, err
		}
		o.live[key] = nil
		delete(o.dirty, key)
		if n, ok := o.liveCount[a.Rule]; ok && a.Folded == 0 {
			o.liveCount[a.Rule] = max(n-1, 0) // counted while it was live
		}
		return nil, nil
	}
	return a, nil
}

// open stores a new alert with the flow in it and queues its firing
// deliveries.
func (e *Engine) open(o *observation, key string, a *store.Alert, f *flowrecord.Record, rule string) error {
	first, last := flowTimes(f)
	a.FirstSeen, a.LastSeen = first, last
	a.Verdict, a.DecidingRule, a.Node = f.Verdict.String(), f.Rule, f.Node
	a.Count = 1
	addPort(a, f.DstPort)
	if err := o.tx.InsertAlert(a); err != nil {
		return err
	}
	o.live[key] = a
	e.count(o, a, tupleOf(f))
	o.pend.raised(rule)
	return e.queue(o.tx, a, store.EventFiring, a.Notify, o.now, o.pend)
}

// fold adds a flow to a live alert (written back at the end of Observe).
func (e *Engine) fold(o *observation, key string, a *store.Alert, f *flowrecord.Record) {
	first, last := flowTimes(f)
	if !e.counted(o, a.ID, tupleOf(f)) {
		a.Count++
		e.count(o, a, tupleOf(f))
	}
	if last.After(a.LastSeen) {
		a.LastSeen = last
	}
	if first.Before(a.FirstSeen) {
		a.FirstSeen = first
	}
	addPort(a, f.DstPort)
	a.Verdict, a.DecidingRule, a.Node = f.Verdict.String(), f.Rule, f.Node
	o.dirty[key] = true
}

// foldSummary adds a flow of run key to its rule's summary alert, opening
// it if the rule has none live.
func (e *Engine) foldSummary(o *observation, r *rule, key string, f *flowrecord.Record) error {
	skey := summaryKey(r.name)
	first, _ := flowTimes(f)
	s, err := e.current(o, skey, first)
	if err != nil {
		return err
	}
	if s == nil {
		s = &store.Alert{
			Rule: r.name, Severity: r.severity, Key: skey, State: store.AlertOpen,
			Source: SummaryEnd, Destination: SummaryEnd, Port: f.DstPort, Protocol: f.Protocol,
			Window: r.window, Notify: r.notify, Created: o.now, RefreshedAt: o.now, Folded: 1,
		}
		if err := e.open(o, skey, s, f, r.name); err != nil {
			return err
		}
		e.addFolded(o, s.ID, key)
		o.pend.folded(r.name)
		return nil
	}
	if !e.wasFolded(o, s.ID, key) {
		s.Folded++
		e.addFolded(o, s.ID, key)
		o.pend.folded(r.name)
	}
	e.fold(o, skey, s, f)
	return nil
}

// SummaryEnd is the source and destination of a summary alert.
const SummaryEnd = "*"

func summaryKey(rule string) string { return rule + "|" + SummaryEnd }

// counted reports whether alert id counted connection t already (in this
// Observe call, or in a committed one).
func (e *Engine) counted(o *observation, id int64, t tuple) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return known(o.counted, e.seen, id, t)
}

func (e *Engine) count(o *observation, a *store.Alert, t tuple) {
	note(o.counted, a.ID, t)
	o.pend.add(a.ID, t)
}

// wasFolded reports whether summary alert id counted run key already.
func (e *Engine) wasFolded(o *observation, id int64, key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return known(o.keys, e.folded, id, key)
}

func (e *Engine) addFolded(o *observation, id int64, key string) {
	note(o.keys, id, key)
	o.pend.addKey(id, key)
}

// known reports whether v is in alert id's set: this call's (local) or
// the committed one. Called with the engine's lock held.
func known[T comparable](local map[int64]map[T]bool, committed map[int64]*boundedSet[T], id int64, v T) bool {
	if local[id][v] {
		return true
	}
	s := committed[id]
	return s != nil && s.has(v)
}

func note[T comparable](local map[int64]map[T]bool, id int64, v T) {
	m := local[id]
	if m == nil {
		m = map[T]bool{}
		local[id] = m
	}
	m[v] = true
}

// addPort records a destination port on an alert: the first ones in the
// sample, every one in the count (and, past the sample, the bitmap).
func addPort(a *store.Alert, p uint16) {
	if a.PortCount == 0 {
		a.Ports, a.PortCount = []uint16{p}, 1
		return
	}
	if a.PortSet == nil {
		if slices.Contains(a.Ports, p) {
			return
		}
		if len(a.Ports) < MaxPortSample {
			a.Ports = append(a.Ports, p)
			a.PortCount++
			return
		}
		// The sample is full (and holds every port so far): from now
		// on the bitmap says which ports were seen.
		a.PortSet = make([]byte, 65536/8)
		for _, q := range a.Ports {
			a.PortSet[q/8] |= 1 << (q % 8)
		}
	}
	if a.PortSet[p/8]&(1<<(p%8)) != 0 {
		return
	}
	a.PortSet[p/8] |= 1 << (p % 8)
	a.PortCount++
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

// Sweep resolves live alerts whose window passed with no repeat, queues
// the periodic re-post of the others to Alertmanager webhooks, and (every
// trimEvery) keeps resolved alerts and finished deliveries within their
// budgets. It reads only the alerts it has work for: those whose window
// passed, and those not re-posted for a refresh interval (and those only
// when some webhook of the policy is an Alertmanager), at most sweepBatch
// of each per call.
func (e *Engine) Sweep(tx store.EventTx, now time.Time, pend *Pending) error {
	pol := e.Policy()
	expired, err := tx.ExpiredAlerts(now, sweepBatch)
	if err != nil {
		return err
	}
	for i := range expired {
		if err := e.resolve(tx, &expired[i], now, "window", now, pend); err != nil {
			return err
		}
	}
	if pol.hasAlertmanager() {
		due, err := tx.AlertsToRefresh(now.Add(-e.refresh), sweepBatch)
		if err != nil {
			return err
		}
		for i := range due {
			a := &due[i]
			var hooks []string
			for _, name := range a.Notify {
				if w, ok := pol.Webhook(name); ok && w.Format == policy.FormatAlertmanager {
					hooks = append(hooks, name)
				}
			}
			if err := e.queue(tx, a, store.EventRefresh, hooks, now, pend); err != nil {
				return err
			}
			a.RefreshedAt = now
			if err := tx.UpdateAlert(a); err != nil {
				return err
			}
		}
	}
	e.mu.Lock()
	trim := now.Sub(e.lastTrim) >= trimEvery || now.Before(e.lastTrim)
	e.mu.Unlock()
	if trim {
		a, d, err := tx.TrimFinished(e.limits.MaxResolved, e.limits.MaxFinishedDeliveries)
		if err != nil {
			return err
		}
		pend.TrimmedAlerts, pend.TrimmedDeliveries, pend.trimmed = a, d, true
		pend.trimAt = now
	}
	return nil
}

func endName(e *end) string {
	if e.workload != "" {
		return e.workload
	}
	return e.addr.String()
}

// dedupKey names a run: one rule, source, destination and protocol. The
// port is not part of it (a scan of every port is one alert listing
// them); the protocol is, so that the ports listed are of one protocol.
func dedupKey(rule, src, dst, proto string) string {
	return fmt.Sprintf("%s|%s|%s|%s", rule, src, dst, proto)
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

// boundedSet is a FIFO-bounded set: past its bound the oldest members
// are forgotten.
type boundedSet[T comparable] struct {
	max   int
	m     map[T]struct{}
	order []T
}

func newBoundedSet[T comparable](n int) *boundedSet[T] {
	return &boundedSet[T]{max: n, m: make(map[T]struct{})}
}

func (s *boundedSet[T]) has(t T) bool { _, ok := s.m[t]; return ok }

func (s *boundedSet[T]) add(t T) {
	if s.has(t) {
		return
	}
	if len(s.order) >= s.max {
		delete(s.m, s.order[0])
		s.order = s.order[1:]
	}
	s.m[t] = struct{}{}
	s.order = append(s.order, t)
}
