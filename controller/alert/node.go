package alert

import (
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// Built-in node alerts: raised by what an agent reports about its own
// node, or by its silence, not by flows. Both are critical: either way
// the controller can no longer vouch for what the node enforces.
const (
	// BuiltinTamperedRule: an agent found its datapath changed by
	// someone else (a detached program, a rewritten map, ...).
	BuiltinTamperedRule = "datapath-tampered"
	// BuiltinSilentRule: an agent's stream stayed open but the agent
	// sent nothing (no heartbeat, no report) for several of its
	// heartbeat intervals; the controller closed the stream.
	BuiltinSilentRule = "agent-silent"
	// nodeAlertSeverity is the built-in node alerts' severity.
	nodeAlertSeverity = string(policy.SeverityCritical)
)

// NodeEvent is one finding about a node itself.
type NodeEvent struct {
	// Rule is BuiltinTamperedRule or BuiltinSilentRule.
	Rule string
	Node string
	// Kind says what happened (a drift kind: link-detached, ...; or
	// "silent"); node, rule and kind are the alert's dedup key.
	Kind string
	// Detail is the latest finding's text; Outcome what came of it
	// ("repaired", "repair failed: ...", "not repaired (--repair=false)",
	// "stream closed").
	Detail  string
	Outcome string
	// Count is how many findings this event stands for (at least 1).
	Count uint64
	At    time.Time
}

// ObserveNode records a node event in tx: a new alert of its rule, with
// a firing delivery to every webhook of the policy, or a higher count on
// the live alert of the same node and kind (no new delivery), within the
// default alert window. Its source is the node, its destination the
// kind, its verdict the outcome and its deciding rule the detail: the
// flow alerts' fields, so the webhook payloads, egctl alerts and the
// dashboard show node alerts as they are.
func (e *Engine) ObserveNode(tx store.EventTx, ev NodeEvent, now time.Time, pend *Pending) error {
	pol := e.Policy()
	if ev.Count == 0 {
		ev.Count = 1
	}
	at := ev.At
	if at.IsZero() || at.After(now) {
		at = now // an agent's clock is not trusted to be ahead
	}
	o := &observation{tx: tx, now: now, pend: pend, live: map[string]*store.Alert{}, dirty: map[string]bool{},
		liveCount: map[string]int{}, counted: map[int64]map[tuple]bool{}, keys: map[int64]map[string]bool{}}
	key := dedupKey(ev.Rule, ev.Node, ev.Kind, "")
	a, err := e.current(o, key, at)
	if err != nil {
		return err
	}
	if a != nil {
		a.Count += ev.Count
		if at.After(a.LastSeen) {
			a.LastSeen = at
		}
		a.Verdict, a.DecidingRule = ev.Outcome, ev.Detail
		return tx.UpdateAlert(a)
	}
	na := &store.Alert{
		Rule: ev.Rule, Severity: nodeAlertSeverity, Key: key, State: store.AlertOpen,
		Source: ev.Node, Destination: ev.Kind, Node: ev.Node,
		Verdict: ev.Outcome, DecidingRule: ev.Detail, Count: ev.Count,
		FirstSeen: at, LastSeen: at, Window: policy.DefaultAlertWindow,
		Notify: pol.WebhookNames(), Created: now, RefreshedAt: now,
	}
	if err := tx.InsertAlert(na); err != nil {
		return err
	}
	pend.raised(ev.Rule)
	return e.queue(tx, na, store.EventFiring, na.Notify, now, pend)
}
