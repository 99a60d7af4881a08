package policy

import (
	"net/netip"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func (d *decoder) policySpec(n *yaml.Node, pol *Policy) {
	d.mapping(n, "",
		field{name: "mode", decode: func(n *yaml.Node, p string) { pol.Mode = d.mode(n, p) }},
		field{name: "rules", decode: func(n *yaml.Node, p string) {
			names := make(map[string]Pos)
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				r := d.rule(item, p)
				if r.Name != "" {
					if first, dup := names[r.Name]; dup {
						d.errorf(item, join(p, "name"), "duplicate rule name %q (first at %s)", r.Name, first)
					}
					names[r.Name] = r.Pos
				}
				pol.Rules = append(pol.Rules, r)
			})
		}},
	)
}

func (d *decoder) rule(n *yaml.Node, path string) Rule {
	r := Rule{Action: ActionAllow, Pos: d.pos(n), Path: path}
	d.mapping(n, path,
		field{name: "name", required: true, decode: func(n *yaml.Node, p string) {
			if s, ok := d.str(n, p); ok {
				if why := checkName(s); why != "" {
					d.errorf(n, p, "%s", why)
					return
				}
				r.Name = s
			}
		}},
		field{name: "action", decode: func(n *yaml.Node, p string) {
			s, _ := d.oneOf(n, p, string(ActionAllow), string(ActionDeny))
			r.Action = Action(s)
		}},
		field{name: "from", required: true, decode: func(n *yaml.Node, p string) { r.From = d.peers(n, p, true) }},
		field{name: "to", required: true, decode: func(n *yaml.Node, p string) { r.To = d.peers(n, p, true) }},
		field{name: "ports", decode: func(n *yaml.Node, p string) {
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				if pr, ok := d.portRule(item, p); ok {
					r.Ports = append(r.Ports, pr)
				}
			})
			if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
				d.errorf(n, p, "an empty ports list matches nothing; omit ports for every protocol and port")
			}
		}},
	)
	return r
}

// peers decodes a peer list; required lists must not be empty (an empty
// "from" must not be read as "from anywhere").
func (d *decoder) peers(n *yaml.Node, path string, required bool) []Peer {
	var out []Peer
	d.list(n, path, func(_ int, item *yaml.Node, p string) {
		if peer, ok := d.peer(item, p); ok {
			out = append(out, peer)
		}
	})
	if required && n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		d.errorf(n, path, "at least one peer is needed (selector: {} is every managed workload, world: true every other address)")
	}
	return out
}

func (d *decoder) peer(n *yaml.Node, path string) (Peer, bool) {
	p := Peer{Pos: d.pos(n), Path: path}
	var exceptNode *yaml.Node
	kinds, hasCIDR := 0, false
	before := len(d.diags)
	d.mapping(n, path,
		field{name: "selector", decode: func(n *yaml.Node, path string) {
			kinds++
			p.Selector = d.labels(n, path)
			if p.Selector == nil {
				p.Selector = Selector{}
			}
		}},
		field{name: "cidr", decode: func(n *yaml.Node, path string) {
			kinds++
			hasCIDR = true
			p.CIDR, _ = d.prefix(n, path)
		}},
		field{name: "except", decode: func(n *yaml.Node, path string) {
			exceptNode = n
			d.list(n, path, func(_ int, item *yaml.Node, path string) {
				if e, ok := d.prefix(item, path); ok {
					p.Except = append(p.Except, e)
				}
			})
		}},
		field{name: "world", decode: func(n *yaml.Node, path string) {
			kinds++
			if v, ok := d.boolean(n, path); ok && !v {
				d.errorf(n, path, "world: false selects nothing; remove the peer")
			}
			p.World = true
		}},
		field{name: "host", decode: func(n *yaml.Node, path string) {
			kinds++
			if v, ok := d.boolean(n, path); ok && !v {
				d.errorf(n, path, "host: false selects nothing; remove the peer")
			}
			p.Host = true
		}},
	)
	if n.Kind != yaml.MappingNode {
		return p, false
	}
	switch {
	case kinds == 0:
		d.errorf(n, path, "a peer needs one of selector, cidr, world or host")
	case kinds > 1:
		d.errorf(n, path, "a peer has exactly one of selector, cidr, world or host; write several peers instead")
	}
	if exceptNode != nil && !(hasCIDR && !p.CIDR.IsValid()) { // a bad cidr is reported already
		d.checkExcept(exceptNode, join(path, "except"), p)
	}
	return p, len(d.diags) == before
}

// checkExcept requires every except prefix to lie strictly inside the cidr:
// an except outside it would be a silent no-op, one equal to it an empty peer.
func (d *decoder) checkExcept(n *yaml.Node, path string, p Peer) {
	if !p.CIDR.IsValid() {
		d.errorf(n, path, "except is only valid with cidr")
		return
	}
	for i, e := range p.Except {
		item := n.Content[i]
		switch {
		case e.Addr().Is4() != p.CIDR.Addr().Is4():
			d.errorf(item, index(path, i), "%s is not in the same address family as %s", e, p.CIDR)
		case e.Bits() <= p.CIDR.Bits() || !p.CIDR.Contains(e.Addr()):
			d.errorf(item, index(path, i), "%s is not strictly inside %s", e, p.CIDR)
		}
	}
}

// prefix decodes a CIDR. Host bits are an error, not silently masked: a
// typo like 10.0.0.1/8 must not widen a rule unnoticed.
func (d *decoder) prefix(n *yaml.Node, path string) (netip.Prefix, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		d.errorf(n, path, "%q is not a CIDR", s)
	case p.Addr().Is4In6():
		d.errorf(n, path, "%q is an IPv4-mapped IPv6 prefix; write it as IPv4", s)
	case p != p.Masked():
		d.errorf(n, path, "%q has host bits set (did you mean %s?)", s, p.Masked())
	default:
		return p, true
	}
	return netip.Prefix{}, false
}

// protocol decodes a protocol name, case-insensitively.
func (d *decoder) protocol(n *yaml.Node, path string) (ruleset.Protocol, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	for _, p := range []ruleset.Protocol{ruleset.ProtocolTCP, ruleset.ProtocolUDP, ruleset.ProtocolICMP, ruleset.ProtocolICMPv6, ruleset.ProtocolAny} {
		if strings.EqualFold(s, p.String()) {
			return p, true
		}
	}
	d.errorf(n, path, "%q is not one of TCP, UDP, ICMP, ICMPv6, ANY", s)
	return 0, false
}

// portRule decodes one ports item. A missing protocol is TCP, as in
// Kubernetes NetworkPolicy.
func (d *decoder) portRule(n *yaml.Node, path string) (PortRule, bool) {
	pr := PortRule{Protocol: ruleset.ProtocolTCP, Pos: d.pos(n)}
	var portNode, endNode, typeNode, codeNode *yaml.Node
	before := len(d.diags)
	d.mapping(n, path,
		field{name: "protocol", decode: func(n *yaml.Node, p string) { pr.Protocol, _ = d.protocol(n, p) }},
		field{name: "port", decode: func(n *yaml.Node, p string) {
			portNode = n
			v, _ := d.integer(n, p, 1, 65535)
			pr.Port = uint16(v)
		}},
		field{name: "endPort", decode: func(n *yaml.Node, p string) {
			endNode = n
			v, _ := d.integer(n, p, 1, 65535)
			pr.EndPort = uint16(v)
		}},
		field{name: "type", decode: func(n *yaml.Node, p string) {
			typeNode = n
			if v, ok := d.integer(n, p, 0, 255); ok {
				t := uint8(v)
				pr.ICMPType = &t
			}
		}},
		field{name: "code", decode: func(n *yaml.Node, p string) {
			codeNode = n
			if v, ok := d.integer(n, p, 0, 255); ok {
				c := uint8(v)
				pr.ICMPCode = &c
			}
		}},
	)
	if n.Kind != yaml.MappingNode || len(d.diags) != before {
		return pr, false
	}
	reject := func(format string, fields map[string]*yaml.Node) {
		for _, name := range []string{"port", "endPort", "type", "code"} {
			if f := fields[name]; f != nil {
				d.errorf(f, join(path, name), format, name, pr.Protocol)
			}
		}
	}
	if pr.Protocol.IsICMP() {
		reject("%s is not valid with %s; ICMP takes type and code", map[string]*yaml.Node{"port": portNode, "endPort": endNode})
		if codeNode != nil && typeNode == nil {
			d.errorf(codeNode, join(path, "code"), "code needs a type")
		}
	} else {
		reject("ICMP %s is not valid with %s (only with ICMP or ICMPv6)", map[string]*yaml.Node{"type": typeNode, "code": codeNode})
		switch {
		case endNode != nil && portNode == nil:
			d.errorf(endNode, join(path, "endPort"), "endPort needs a port")
		case endNode != nil && pr.EndPort < pr.Port:
			d.errorf(endNode, join(path, "endPort"), "endPort %d is less than port %d", pr.EndPort, pr.Port)
		case endNode != nil && pr.EndPort == pr.Port:
			pr.EndPort = 0
		}
	}
	return pr, len(d.diags) == before
}
