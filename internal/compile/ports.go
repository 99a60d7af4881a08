package compile

import (
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// templates turns a rule's ports into entry templates (protocol, ports and
// ICMP fields only). No ports means every protocol; ANY with a port means
// TCP and UDP on it. A port range stays one entry: Encode stores ranges as
// intervals, so there is no per-port expansion.
func templates(ports []policy.PortRule) []ruleset.Entry {
	if len(ports) == 0 {
		return []ruleset.Entry{{Protocol: ruleset.ProtocolAny}}
	}
	var out []ruleset.Entry
	for _, p := range ports {
		switch {
		case p.Protocol == ruleset.ProtocolAny && p.Port == 0:
			out = append(out, ruleset.Entry{Protocol: ruleset.ProtocolAny})
		case p.Protocol == ruleset.ProtocolAny:
			for _, x := range []ruleset.Protocol{ruleset.ProtocolTCP, ruleset.ProtocolUDP} {
				out = append(out, ruleset.Entry{Protocol: x, Port: p.Port, EndPort: p.EndPort})
			}
		case p.Protocol.IsICMP():
			out = append(out, ruleset.Entry{Protocol: p.Protocol, ICMPType: p.ICMPType, ICMPCode: p.ICMPCode})
		default:
			out = append(out, ruleset.Entry{Protocol: p.Protocol, Port: p.Port, EndPort: p.EndPort})
		}
	}
	return out
}

// intersectPorts returns the protocol and port part both entries match.
// The result of two entries whose ICMP parts are each "every type", "one
// type" or "one type and code" is again of one of those shapes.
func intersectPorts(t, a ruleset.Entry) (ruleset.Entry, bool) {
	switch {
	case t.Protocol == ruleset.ProtocolAny:
		return portsOf(a), true
	case a.Protocol == ruleset.ProtocolAny:
		return portsOf(t), true
	case t.Protocol != a.Protocol:
		return ruleset.Entry{}, false
	}
	tlo, thi := t.PortRange()
	alo, ahi := a.PortRange()
	lo, hi := max(tlo, alo), min(thi, ahi)
	if lo > hi {
		return ruleset.Entry{}, false
	}
	return withRange(t.Protocol, lo, hi), true
}

func portsOf(e ruleset.Entry) ruleset.Entry {
	return ruleset.Entry{Protocol: e.Protocol, Port: e.Port, EndPort: e.EndPort, ICMPType: e.ICMPType, ICMPCode: e.ICMPCode}
}

// withRange builds the port part of an entry from a range of the 16-bit
// port space (see ruleset.Entry.PortRange).
func withRange(proto ruleset.Protocol, lo, hi uint16) ruleset.Entry {
	e := ruleset.Entry{Protocol: proto}
	full := lo == 0 && hi == 0xffff
	switch {
	case proto.HasPorts() && !full:
		e.Port = lo
		if hi > lo {
			e.EndPort = hi
		}
	case proto.IsICMP() && !full:
		t := uint8(lo >> 8)
		e.ICMPType = &t
		if lo == hi {
			c := uint8(lo)
			e.ICMPCode = &c
		}
	}
	return e
}
