package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// APIVersion is the only apiVersion this package reads.
const APIVersion = "eastguard.dev/v1"

// Resource kinds.
const (
	KindWorkload  = "Workload"
	KindPolicy    = "Policy"
	KindAlertRule = "AlertRule"
	KindWebhook   = "Webhook"
)

// Mode is a workload's or a policy's enforcement mode. ModeUnset is kept
// apart from ModeEnforce because an agent started with --default-mode
// monitor changes the default for the workloads on its node; a policy
// without a mode is enforce.
type Mode string

const (
	ModeUnset   Mode = ""
	ModeEnforce Mode = "enforce"
	ModeMonitor Mode = "monitor"
)

// Action is what a rule does with the traffic it matches.
type Action string

const (
	ActionAllow Action = "allow"
	ActionDeny  Action = "deny"
)

// Meta is the metadata every resource has, with the positions diagnostics
// point at.
type Meta struct {
	Name   string
	Labels Labels
	// Pos is the start of the resource's document; NamePos the name value.
	Pos     Pos
	NamePos Pos
}

// Labels are a resource's labels.
type Labels map[string]string

// String is the canonical form "k1=v1,k2=v2" with keys sorted. Label keys
// and values cannot contain ',' or '=' (validation refuses them), so the
// form is unambiguous and serves as the key of a label set.
func (l Labels) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(l[k])
	}
	return b.String()
}

// Workload is a thing with addresses and labels that one agent enforces.
type Workload struct {
	Meta
	Node string
	// Interface is the host-side interface; empty means host mode: the
	// workload is the node itself; ruleset.InterfaceAuto ("auto") means the
	// agent finds it from the workload's addresses.
	Interface string
	Addresses []netip.Addr
	Mode      Mode
}

// HostMode reports whether the workload is its node's own interfaces.
func (w *Workload) HostMode() bool { return w.Interface == "" }

// Auto reports whether the agent finds the workload's interface from its
// addresses (interface: auto).
func (w *Workload) Auto() bool { return w.Interface == ruleset.InterfaceAuto }

// Policy is a set of rules, each an edge of the data-flow diagram.
type Policy struct {
	Meta
	Mode  Mode
	Rules []Rule
}

// Monitor reports whether the policy is a dry run.
func (p *Policy) Monitor() bool { return p.Mode == ModeMonitor }

// Rule is one edge: traffic from From to To on Ports.
type Rule struct {
	Name   string
	Action Action
	From   []Peer
	To     []Peer
	// Ports nil means every protocol and port.
	Ports []PortRule
	// Pos is the rule's position, Path its field path ("rules[1]").
	Pos  Pos
	Path string
}

// Selector selects managed workloads by label equality; all pairs must
// match, and an empty selector selects every managed workload.
type Selector map[string]string

// Matches reports whether labels has every pair of the selector.
func (s Selector) Matches(labels Labels) bool {
	for k, v := range s {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Peer is one end of a rule. Exactly one of Selector (non-nil), CIDR
// (valid), World and Host is set.
type Peer struct {
	Selector Selector
	CIDR     netip.Prefix
	Except   []netip.Prefix
	// World is every address that is not a managed workload.
	World bool
	// Host is the node's own addresses, from the point of view of the
	// workloads on that node.
	Host bool
	Pos  Pos
	Path string
}

// PortRule is one protocol and port range. For TCP and UDP, Port 0 means
// every port and EndPort 0 means Port alone; for ICMP and ICMPv6, a nil Type
// means every type and a nil Code every code of the type. ProtocolAny with a
// port means TCP and UDP on that port; ProtocolAny without one means every
// protocol.
type PortRule struct {
	Protocol ruleset.Protocol
	Port     uint16
	EndPort  uint16
	ICMPType *uint8
	ICMPCode *uint8
	Pos      Pos
}

// Severity of an alert.
type AlertSeverity string

const (
	SeverityInfo     AlertSeverity = "info"
	SeverityWarn     AlertSeverity = "warning"
	SeverityCritical AlertSeverity = "critical"
)

// DefaultAlertWindow is an AlertRule's window when it gives none.
const DefaultAlertWindow = 5 * time.Minute

// AlertRule turns matching flows into alerts (the alert engine comes later;
// this package parses and validates it).
type AlertRule struct {
	Meta
	Severity AlertSeverity
	Match    AlertMatch
	Except   []AlertExcept
	Window   time.Duration
	Notify   []WebhookRef
}

// BuiltinAlertRules are the rule names of the alerts the controller
// raises itself about a node (datapath-tampered, agent-silent): no
// AlertRule may take them, or a policy author could make a flow alert
// pass for one, or hide one among look-alikes.
var BuiltinAlertRules = []string{"datapath-tampered", "agent-silent"}

// AlertMatch says which flows an AlertRule matches. Protocol ProtocolAny
// matches every protocol; empty Ports every port; nil From or To any peer.
type AlertMatch struct {
	Protocol ruleset.Protocol
	Ports    []uint16
	// Verdicts defaults to denied and would-deny.
	Verdicts []ruleset.Verdict
	From     []Peer
	To       []Peer
}

// AlertExcept exempts flows from an AlertRule.
type AlertExcept struct {
	From []Peer
	To   []Peer
}

// WebhookRef names a Webhook, with the position of the reference.
type WebhookRef struct {
	Name string
	Pos  Pos
	Path string
}

// Webhook formats.
const (
	FormatJSON         = "json"
	FormatSlack        = "slack"
	FormatAlertmanager = "alertmanager"
)

// Webhook is where alerts are delivered.
type Webhook struct {
	Meta
	URL    string
	Format string
	// SecretFrom is nil when deliveries are not signed.
	SecretFrom *SecretRef
}

// SecretRef names where a webhook's HMAC secret comes from: exactly one of
// an environment variable (named EASTGUARD_...) or a file (a name
// relative to the controller's --secrets-dir).
type SecretRef struct {
	Env  string
	File string
	// Pos and Path locate the env or file value, for diagnostics the
	// controller adds (a variable that is not set, a file that is not
	// there).
	Pos  Pos
	Path string
}

// Set is a validated collection of resources.
type Set struct {
	Workloads  []Workload
	Policies   []Policy
	AlertRules []AlertRule
	Webhooks   []Webhook
}

// Merge appends other's resources to s.
func (s *Set) Merge(other *Set) {
	s.Workloads = append(s.Workloads, other.Workloads...)
	s.Policies = append(s.Policies, other.Policies...)
	s.AlertRules = append(s.AlertRules, other.AlertRules...)
	s.Webhooks = append(s.Webhooks, other.Webhooks...)
}

// Sort orders every resource list by name, so that results do not depend on
// file or document order.
func (s *Set) Sort() {
	byName := func(a, b Meta) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortStableFunc(s.Workloads, func(a, b Workload) int { return byName(a.Meta, b.Meta) })
	slices.SortStableFunc(s.Policies, func(a, b Policy) int { return byName(a.Meta, b.Meta) })
	slices.SortStableFunc(s.AlertRules, func(a, b AlertRule) int { return byName(a.Meta, b.Meta) })
	slices.SortStableFunc(s.Webhooks, func(a, b Webhook) int { return byName(a.Meta, b.Meta) })
}

// Workload returns the workload with the given name.
func (s *Set) Workload(name string) (*Workload, bool) {
	for i := range s.Workloads {
		if s.Workloads[i].Name == name {
			return &s.Workloads[i], true
		}
	}
	return nil, false
}
