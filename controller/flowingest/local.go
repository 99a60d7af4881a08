package flowingest

import (
	"net/netip"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// reasonNoEndpoint is the datapath's reason for a packet on an interface
// the agent has programs on but no endpoint for (agent/datapath names it
// so): the datapath treats the interface as the node's own, so the
// record's direction does not say which end is the node's.
const reasonNoEndpoint = "no-endpoint"

// addrOwner is the managed workload an address belongs to, and its node.
type addrOwner struct{ workload, node string }

// owners maps the address of every managed workload to its owner. Built
// from one policy, read-only afterwards (shared by every stream).
type owners map[netip.Addr]addrOwner

func newOwners(set *policy.Set) owners {
	o := make(owners)
	for _, w := range set.Workloads {
		for _, a := range w.Addresses {
			o[a.Unmap()] = addrOwner{workload: w.Name, node: w.Node}
		}
	}
	return o
}

// workload names the managed workload that owns addr ("" when none).
func (o owners) workload(addr netip.Addr) string { return o[addr.Unmap()].workload }

// ours reports whether addr may be an address on node: one of its
// workloads' addresses, or an address no workload owns. The controller does
// not know every address a node has (the agent adds the node's own
// addresses to its rule set itself, and broadcast and multicast arrive on
// workloads' interfaces), so an address nobody owns is taken for the
// node's; an address a workload of another node owns never is.
func (o owners) ours(node string, addr netip.Addr) bool {
	w, ok := o[addr.Unmap()]
	return !ok || w.node == node
}

// local reports whether r has its local end on node: the end on the
// reporting workload's side (ingress: the destination; egress: the
// source), or either end for a no-endpoint record. A node can see only
// traffic of its own workloads and its own addresses; a record about two
// other nodes' workloads is a forgery (or a bug), and storing it would let
// a compromised node raise alerts about workloads it does not run.
func (o owners) local(node string, r *flowrecord.Record) bool {
	if r.Reason == reasonNoEndpoint {
		return o.ours(node, r.SrcAddr) || o.ours(node, r.DstAddr)
	}
	if r.Direction == ruleset.Ingress {
		return o.ours(node, r.DstAddr)
	}
	return o.ours(node, r.SrcAddr)
}

// keepLocal returns the records of recs that are local to node (see
// local), in order, reusing recs' array, and how many it dropped with the
// first of them (for the log).
func (o owners) keepLocal(node string, recs []flowrecord.Record) (kept []flowrecord.Record, dropped int, first flowrecord.Record) {
	kept = recs[:0]
	for i := range recs {
		if o.local(node, &recs[i]) {
			kept = append(kept, recs[i])
			continue
		}
		if dropped == 0 {
			first = recs[i]
		}
		dropped++
	}
	return kept, dropped, first
}
