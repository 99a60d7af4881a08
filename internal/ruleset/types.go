// Package ruleset defines the per-node rule set: the contract between the
// policy compiler (internal/compile), which produces it, and the datapath
// (agent/datapath), which enforces it.
//
// A RuleSet is plain data in the vocabulary of the datapath (endpoints,
// numeric identities, directional entries with verdicts and rule ids), plus
// the pure-Go encoding of that data into the lookup tables the eBPF programs
// probe (Encode) and a Go mirror of the kernel lookup (Tables.Lookup). Both
// sides use the same code, so the compiler can size a rule set and explain a
// verdict exactly as the kernel will decide it.
//
// This package must not touch the kernel, the network or the policy YAML.
package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
)

// Identity is the numeric security identity of a set of addresses: a
// workload label set, a CIDR, or one of the reserved identities.
type Identity uint32

const (
	// IdentityAny is the wildcard peer in an Entry. It never appears in the
	// ipcache: an address that matches no prefix resolves to IdentityWorld.
	IdentityAny Identity = 0
	// IdentityWorld is every address that is not managed and not covered by
	// a more specific ipcache prefix.
	IdentityWorld Identity = 1
	// IdentityHost is the local node's own addresses as seen by its
	// workloads (health checks, node-local agents).
	IdentityHost Identity = 2
	// IdentityFailsafeFirst to IdentityFailsafeLast are the identities
	// the agent gives the addresses of its own control plane (the
	// controller, the DNS resolvers it finds it with) in the rule set it
	// enforces (WithFailsafe). A compiled rule set never holds them.
	IdentityFailsafeFirst Identity = 128
	IdentityFailsafeLast  Identity = 255
	// IdentityFirstAllocated is the first identity the compiler may
	// allocate; everything below is reserved.
	IdentityFirstAllocated Identity = 256
)

// EndpointID names one enforced workload on a node. 0 is reserved for "no
// endpoint" (an interface the datapath still has programs on but no
// endpoint for).
type EndpointID uint32

// RuleID names the rule that decided a verdict. 0 is the default deny.
type RuleID uint32

// RuleDefaultDeny is the rule id of the implicit default deny.
const RuleDefaultDeny RuleID = 0

// DefaultDenyName is how the default deny is named wherever rule names are
// shown (flow records, explain, alerts).
const DefaultDenyName = "default-deny"

// RuleFailsafe is the rule id of the agent's failsafe entries, which keep
// its own control traffic open whatever the policy (WithFailsafe). The
// compiler never allocates it, and its allows beat every deny (Encode).
const RuleFailsafe RuleID = 1<<32 - 1

// FailsafeName is how RuleFailsafe is named wherever rule names are shown,
// also by those (the controller, egctl) whose rule sets lack the entry.
const FailsafeName = "failsafe/control-plane"

// Direction is relative to the workload: Ingress is traffic to it, Egress is
// traffic from it. The datapath maps tc hooks onto these (on a container's
// host-side veth, tc ingress is the workload's egress).
type Direction uint8

const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// MarshalText implements encoding.TextMarshaler.
func (d Direction) MarshalText() ([]byte, error) {
	if d > Egress {
		return nil, fmt.Errorf("invalid direction %d", uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Direction) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ingress":
		*d = Ingress
	case "egress":
		*d = Egress
	default:
		return fmt.Errorf("invalid direction %q (want ingress or egress)", b)
	}
	return nil
}

// Protocol is an IANA IP protocol number. ProtocolAny in an Entry matches
// every protocol and every port.
type Protocol uint8

const (
	ProtocolAny    Protocol = 0
	ProtocolICMP   Protocol = 1
	ProtocolTCP    Protocol = 6
	ProtocolUDP    Protocol = 17
	ProtocolICMPv6 Protocol = 58
)

var protocolNames = map[Protocol]string{
	ProtocolAny:    "ANY",
	ProtocolICMP:   "ICMP",
	ProtocolTCP:    "TCP",
	ProtocolUDP:    "UDP",
	ProtocolICMPv6: "ICMPv6",
}

func (p Protocol) String() string {
	if s, ok := protocolNames[p]; ok {
		return s
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// HasPorts reports whether the protocol's entries carry a port range.
func (p Protocol) HasPorts() bool { return p == ProtocolTCP || p == ProtocolUDP }

// IsICMP reports whether the protocol's entries carry ICMP type and code.
func (p Protocol) IsICMP() bool { return p == ProtocolICMP || p == ProtocolICMPv6 }

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) {
	if _, ok := protocolNames[p]; !ok {
		return nil, fmt.Errorf("unsupported protocol %d", uint8(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) error {
	for k, v := range protocolNames {
		if v == string(b) {
			*p = k
			return nil
		}
	}
	return fmt.Errorf("invalid protocol %q (want TCP, UDP, ICMP, ICMPv6 or ANY)", b)
}

// Verdict is the outcome for a new flow. The numeric values are the ones
// the datapath uses in maps and events.
type Verdict uint8

const (
	VerdictNone Verdict = 0
	// VerdictAllowed: the flow passes.
	VerdictAllowed Verdict = 1
	// VerdictDenied: the flow is dropped.
	VerdictDenied Verdict = 2
	// VerdictWouldDeny: a monitor-mode policy or workload would have
	// dropped the flow; it passes and is reported.
	VerdictWouldDeny Verdict = 3
)

func (v Verdict) String() string {
	switch v {
	case VerdictAllowed:
		return "allowed"
	case VerdictDenied:
		return "denied"
	case VerdictWouldDeny:
		return "would-deny"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// MarshalText implements encoding.TextMarshaler.
func (v Verdict) MarshalText() ([]byte, error) {
	if v < VerdictAllowed || v > VerdictWouldDeny {
		return nil, fmt.Errorf("invalid verdict %d", uint8(v))
	}
	return []byte(v.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (v *Verdict) UnmarshalText(b []byte) error {
	switch string(b) {
	case "allowed":
		*v = VerdictAllowed
	case "denied":
		*v = VerdictDenied
	case "would-deny":
		*v = VerdictWouldDeny
	default:
		return fmt.Errorf("invalid verdict %q (want allowed, denied or would-deny)", b)
	}
	return nil
}

// precedence orders verdicts for conflict resolution: an enforced deny beats
// a monitor-mode deny, which beats an allow (semantics 2 and 6 of
// docs/POLICY.md: a would-deny is reported even where an allow also matches,
// because in enforce mode the deny would win).
func (v Verdict) precedence() int {
	switch v {
	case VerdictDenied:
		return 3
	case VerdictWouldDeny:
		return 2
	case VerdictAllowed:
		return 1
	}
	return 0
}

// Mode is an endpoint's enforcement mode.
type Mode uint8

const (
	// ModeEnforce drops what no rule allows.
	ModeEnforce Mode = 0
	// ModeMonitor never drops: would-be drops are reported as would-deny.
	ModeMonitor Mode = 1
)

func (m Mode) String() string {
	switch m {
	case ModeEnforce:
		return "enforce"
	case ModeMonitor:
		return "monitor"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) {
	if m > ModeMonitor {
		return nil, fmt.Errorf("invalid mode %d", uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	switch string(b) {
	case "enforce":
		*m = ModeEnforce
	case "monitor":
		*m = ModeMonitor
	default:
		return fmt.Errorf("invalid mode %q (want enforce or monitor)", b)
	}
	return nil
}

// Endpoint is one workload the node's agent enforces.
type Endpoint struct {
	ID       EndpointID `json:"id"`
	Workload string     `json:"workload"`
	// Interface is the host-side interface of a container or network
	// namespace. Empty means host mode: the programs go on the node's own
	// interfaces and protect the node's own addresses. At most one endpoint
	// per rule set is in host mode. InterfaceAuto means the agent finds the
	// interface from Addresses (docs/POLICY.md, "interface: auto").
	Interface string `json:"interface,omitempty"`
	// Addresses are the workload's own addresses, sorted and unique. Only
	// an endpoint with InterfaceAuto carries them (and must): they are how
	// the agent finds its interface. Left empty otherwise, so the hashes of
	// rule sets without auto endpoints are those of earlier versions.
	Addresses []netip.Addr `json:"addresses,omitempty"`
	Identity  Identity     `json:"identity"`
	Mode      Mode         `json:"mode"`
}

// InterfaceAuto is the Interface of an endpoint whose host-side interface
// the agent resolves from the endpoint's addresses (the route to them, or
// a bridge's neighbour and forwarding entries). It is reserved: an
// interface literally named "auto" cannot be named by a rule set.
const InterfaceAuto = "auto"

// HostMode reports whether the endpoint is the node itself.
func (e Endpoint) HostMode() bool { return e.Interface == "" }

// Auto reports whether the agent resolves the endpoint's interface from
// its addresses.
func (e Endpoint) Auto() bool { return e.Interface == InterfaceAuto }

// Equal reports whether two endpoints are the same in every field.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.ID == o.ID && e.Workload == o.Workload && e.Interface == o.Interface &&
		e.Identity == o.Identity && e.Mode == o.Mode && slices.Equal(e.Addresses, o.Addresses)
}

// IPCacheEntry maps a prefix to the identity of the addresses in it. The
// longest prefix wins. An endpoint's own addresses must be present with the
// endpoint's identity: the datapath uses them to tell a workload's own
// traffic from spoofed (container mode) or forwarded (host mode) packets.
type IPCacheEntry struct {
	Prefix   netip.Prefix `json:"prefix"`
	Identity Identity     `json:"identity"`
}

// Entry is one directional policy entry on one endpoint. Entries may
// overlap; Encode resolves overlaps so that, for every packet, the verdict is
// the strongest among all matching entries (denied > would-deny > allowed)
// and the deciding rule is the lowest rule id among the entries with that
// verdict.
type Entry struct {
	Endpoint  EndpointID `json:"endpoint"`
	Direction Direction  `json:"direction"`
	// Peer is the identity at the other end; IdentityAny matches every peer.
	Peer Identity `json:"peer"`
	// Protocol; ProtocolAny matches every protocol, port and ICMP type, and
	// then Port, EndPort, ICMPType and ICMPCode must be unset.
	Protocol Protocol `json:"protocol"`
	// Port and EndPort (inclusive) for TCP and UDP; Port 0 means every
	// port, EndPort 0 means just Port.
	Port    uint16 `json:"port,omitempty"`
	EndPort uint16 `json:"endPort,omitempty"`
	// ICMPType and ICMPCode for ICMP and ICMPv6; nil type means every type,
	// nil code every code of the type.
	ICMPType *uint8  `json:"icmpType,omitempty"`
	ICMPCode *uint8  `json:"icmpCode,omitempty"`
	Verdict  Verdict `json:"verdict"`
	Rule     RuleID  `json:"rule"`
}

// PortRange returns the inclusive range of the entry in the datapath's
// 16-bit port space: the destination port for TCP and UDP, type<<8|code for
// ICMP and ICMPv6. Entries with ProtocolAny, and protocols without ports,
// cover the whole space.
func (e Entry) PortRange() (lo, hi uint16) {
	switch {
	case e.Protocol.HasPorts():
		if e.Port == 0 {
			return 0, 0xffff
		}
		if e.EndPort == 0 {
			return e.Port, e.Port
		}
		return e.Port, e.EndPort
	case e.Protocol.IsICMP():
		if e.ICMPType == nil {
			return 0, 0xffff
		}
		t := uint16(*e.ICMPType) << 8
		if e.ICMPCode == nil {
			return t, t | 0xff
		}
		return t | uint16(*e.ICMPCode), t | uint16(*e.ICMPCode)
	}
	return 0, 0xffff
}

// ICMPPort encodes an ICMP type and code the way the datapath puts them in
// the port field of a policy lookup.
func ICMPPort(typ, code uint8) uint16 { return uint16(typ)<<8 | uint16(code) }

// RuleName gives the human name of a rule id: "policy/rule".
type RuleName struct {
	ID   RuleID `json:"id"`
	Name string `json:"name"`
}

// RuleSet is everything one node enforces. The compiler produces it
// deterministically (Canonicalize orders every slice); the datapath applies
// it as a whole, atomically.
type RuleSet struct {
	Node string `json:"node"`
	// Version is assigned by the controller and increases monotonically per
	// node. It is 0 for rule sets compiled offline. It is not part of Hash.
	Version   uint64         `json:"version,omitempty"`
	Endpoints []Endpoint     `json:"endpoints"`
	IPCache   []IPCacheEntry `json:"ipcache"`
	Entries   []Entry        `json:"entries"`
	Rules     []RuleName     `json:"rules"`
}

// RuleName returns the name of a rule id, DefaultDenyName for 0,
// FailsafeName for RuleFailsafe, and "rule-<id>" for an id the table does
// not know.
func (rs *RuleSet) RuleName(id RuleID) string {
	switch id {
	case RuleDefaultDeny:
		return DefaultDenyName
	case RuleFailsafe:
		return FailsafeName
	}
	for _, r := range rs.Rules {
		if r.ID == id {
			return r.Name
		}
	}
	return fmt.Sprintf("rule-%d", id)
}

// Endpoint returns the endpoint with the given id.
func (rs *RuleSet) Endpoint(id EndpointID) (Endpoint, bool) {
	for _, e := range rs.Endpoints {
		if e.ID == id {
			return e, true
		}
	}
	return Endpoint{}, false
}
