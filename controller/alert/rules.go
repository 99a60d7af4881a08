// Package alert is the controller's alert engine: it matches incoming flow
// records against AlertRules, folds repeats of the same (source,
// destination, protocol) within a rule's window into one alert with a
// count and the ports seen (a port scan is one alert), folds the runs
// beyond a rule's cap of live alerts into its summary alert, moves alerts
// through open -> acknowledged -> resolved, and queues their webhook
// deliveries in the store's outbox, in the same transaction as the flows
// that raised them; its sweep also keeps resolved alerts and finished
// deliveries within their budgets. Delivery itself is
// controller/alert/webhook's job.
//
// It must not import agent/ or the packages that serve (agentapi,
// restapi); it works on a store transaction it is given.
package alert

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// BuiltinDeniedRule is the name of the built-in rule that alerts on every
// denied flow, when the operator switches it on.
const BuiltinDeniedRule = "builtin-any-denied"

// Policy is what the engine knows of the policy: the alert rules, the
// webhooks they notify and the workloads (names, labels, addresses) that
// selectors match. It is immutable once built; a policy change builds a
// new one.
type Policy struct {
	rules     []rule
	webhooks  map[string]policy.Webhook
	workloads map[string]policy.Labels
	byAddr    map[netip.Addr]string
}

// Builtin configures the built-in "any denied flow" rule.
type Builtin struct {
	// Denied switches it on.
	Denied   bool
	Severity policy.AlertSeverity
	Window   time.Duration
	// Notify names webhooks to tell; unknown names are skipped at
	// delivery time (logged), not refused: the flag outlives policies.
	Notify []string
}

type rule struct {
	name     string
	severity string
	window   time.Duration
	notify   []string
	protocol ruleset.Protocol
	ports    []uint16 // empty: every port
	verdicts []ruleset.Verdict
	from, to []policy.Peer // nil: any peer
	except   []policy.AlertExcept
}

// NewPolicy builds the engine's view of a validated policy set.
func NewPolicy(set *policy.Set, b Builtin) *Policy {
	p := &Policy{
		webhooks:  make(map[string]policy.Webhook, len(set.Webhooks)),
		workloads: make(map[string]policy.Labels, len(set.Workloads)),
		byAddr:    make(map[netip.Addr]string),
	}
	for _, w := range set.Webhooks {
		p.webhooks[w.Name] = w
	}
	for _, w := range set.Workloads {
		p.workloads[w.Name] = w.Labels
		for _, a := range w.Addresses {
			p.byAddr[a.Unmap()] = w.Name
		}
	}
	for _, ar := range set.AlertRules {
		r := rule{
			name: ar.Name, severity: string(ar.Severity), window: ar.Window,
			protocol: ar.Match.Protocol, ports: ar.Match.Ports, verdicts: ar.Match.Verdicts,
			from: ar.Match.From, to: ar.Match.To, except: ar.Except,
		}
		for _, n := range ar.Notify {
			r.notify = append(r.notify, n.Name)
		}
		if len(r.verdicts) == 0 {
			r.verdicts = []ruleset.Verdict{ruleset.VerdictDenied, ruleset.VerdictWouldDeny}
		}
		if r.window <= 0 {
			r.window = policy.DefaultAlertWindow
		}
		p.rules = append(p.rules, r)
	}
	if b.Denied {
		r := rule{
			name: BuiltinDeniedRule, severity: string(b.Severity), window: b.Window,
			notify: b.Notify, verdicts: []ruleset.Verdict{ruleset.VerdictDenied},
		}
		if r.severity == "" {
			r.severity = "warning"
		}
		if r.window <= 0 {
			r.window = policy.DefaultAlertWindow
		}
		p.rules = append(p.rules, r)
	}
	return p
}

// Webhook returns a webhook of the policy by name.
func (p *Policy) Webhook(name string) (policy.Webhook, bool) {
	w, ok := p.webhooks[name]
	return w, ok
}

// WebhookNames returns the names of the policy's webhooks, sorted.
func (p *Policy) WebhookNames() []string {
	return slices.Sorted(maps.Keys(p.webhooks))
}

// hasAlertmanager reports whether a webhook of the policy is an
// Alertmanager (the only format open alerts are re-posted to).
func (p *Policy) hasAlertmanager() bool {
	for _, w := range p.webhooks {
		if w.Format == policy.FormatAlertmanager {
			return true
		}
	}
	return false
}

// Workload names the managed workload that owns addr ("" when none).
func (p *Policy) Workload(addr netip.Addr) string { return p.byAddr[addr.Unmap()] }

// Labels returns a workload's labels.
func (p *Policy) Labels(workload string) policy.Labels { return p.workloads[workload] }

// Rules returns the names of the alert rules in force.
func (p *Policy) Rules() []string {
	out := make([]string, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.name
	}
	return out
}

// end is one end of a flow as selectors see it.
type end struct {
	workload string
	labels   policy.Labels
	addr     netip.Addr
	identity ruleset.Identity
}

func (p *Policy) ends(r *flowrecord.Record) (src, dst end) {
	src = end{workload: r.SrcWorkload, addr: r.SrcAddr.Unmap(), identity: r.SrcIdentity}
	dst = end{workload: r.DstWorkload, addr: r.DstAddr.Unmap(), identity: r.DstIdentity}
	for _, e := range []*end{&src, &dst} {
		if e.workload == "" {
			e.workload = p.Workload(e.addr)
		}
		if e.workload != "" {
			e.labels = p.workloads[e.workload]
		}
	}
	return src, dst
}

// matches reports whether the flow is one the rule alerts on.
func (r *rule) matches(f *flowrecord.Record, src, dst *end) bool {
	if !slices.Contains(r.verdicts, f.Verdict) {
		return false
	}
	if !protocolMatches(r.protocol, f.Protocol) {
		return false
	}
	if len(r.ports) > 0 && !slices.Contains(r.ports, f.DstPort) {
		return false
	}
	if !peersMatch(r.from, src) || !peersMatch(r.to, dst) {
		return false
	}
	for _, ex := range r.except {
		// An except entry exempts flows matching all of what it names;
		// an omitted side matches any peer.
		if peersMatch(ex.From, src) && peersMatch(ex.To, dst) {
			return false
		}
	}
	return true
}

// protocolMatches: ProtocolAny matches every protocol; otherwise the flow
// record's protocol name must be the rule's.
func protocolMatches(p ruleset.Protocol, name string) bool {
	return p == ruleset.ProtocolAny || p.String() == name
}

// peersMatch: nil peers match any end; otherwise one peer must match.
func peersMatch(peers []policy.Peer, e *end) bool {
	if peers == nil {
		return true
	}
	for i := range peers {
		if peerMatches(&peers[i], e) {
			return true
		}
	}
	return false
}

// peerMatches follows the policy semantics: a selector matches managed
// workloads by label (the empty selector every managed workload), a CIDR
// matches addresses in it and not in an except, world matches ends that
// are not managed workloads (nor the host), host the node's own
// addresses.
func peerMatches(p *policy.Peer, e *end) bool {
	switch {
	case p.Selector != nil:
		return e.workload != "" && p.Selector.Matches(e.labels)
	case p.CIDR.IsValid():
		if !p.CIDR.Contains(e.addr) {
			return false
		}
		for _, x := range p.Except {
			if x.Contains(e.addr) {
				return false
			}
		}
		return true
	case p.World:
		return e.workload == "" && e.identity != ruleset.IdentityHost
	case p.Host:
		return e.identity == ruleset.IdentityHost
	}
	return false
}
