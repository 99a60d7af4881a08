package policy

import (
	"net/netip"

	"gopkg.in/yaml.v3"
)

func (d *decoder) workloadSpec(n *yaml.Node, w *Workload) {
	d.mapping(n, "",
		field{name: "node", required: true, decode: func(n *yaml.Node, p string) {
			if s, ok := d.str(n, p); ok {
				w.Node = s
				if why := checkName(s); why != "" {
					d.errorf(n, p, "node %s", why)
				}
			}
		}},
		field{name: "interface", decode: func(n *yaml.Node, p string) {
			if s, ok := d.str(n, p); ok {
				w.Interface = s
				if why := checkInterface(s); why != "" {
					d.errorf(n, p, "%s", why)
				}
			}
		}},
		field{name: "addresses", required: true, decode: func(n *yaml.Node, p string) {
			seen := make(map[netip.Addr]bool)
			d.list(n, p, func(_ int, item *yaml.Node, p string) {
				a, ok := d.address(item, p)
				if !ok {
					return
				}
				if seen[a] {
					d.errorf(item, p, "address %s is listed twice", a)
					return
				}
				seen[a] = true
				w.Addresses = append(w.Addresses, a)
			})
			if n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
				d.errorf(n, p, "a workload needs at least one address (the datapath identifies it by its addresses)")
			}
		}},
		field{name: "mode", decode: func(n *yaml.Node, p string) { w.Mode = d.mode(n, p) }},
	)
}

// address decodes one workload address.
func (d *decoder) address(n *yaml.Node, path string) (netip.Addr, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		d.errorf(n, path, "%q is not an IP address", s)
	case a.Zone() != "":
		d.errorf(n, path, "%q has a zone; addresses are global", s)
	case a.Is4In6():
		d.errorf(n, path, "%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	case a.IsUnspecified():
		d.errorf(n, path, "%q is the unspecified address", s)
	case a.IsMulticast():
		d.errorf(n, path, "%q is a multicast address", s)
	default:
		return a, true
	}
	return netip.Addr{}, false
}
