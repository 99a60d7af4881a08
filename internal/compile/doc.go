// Package compile turns a validated policy (internal/policy) into one
// ruleset.RuleSet per node: the endpoints the node's agent enforces, its
// ipcache, and policy entries with verdicts and rule ids. It is a pure
// library (no server, store or kernel) so the controller, egctl and the
// agent's standalone mode compile identically. Output is deterministic:
// identical input gives identical rule sets and hashes, whatever the order
// of files and documents.
//
// # Identities and ids
//
// Every distinct label set of managed workloads gets a label identity
// derived from its canonical form ("k1=v1,k2=v2") by hashing into
// [256, 2^31); every distinct prefix written in a cidr or except gets a CIDR
// identity hashed into [2^31, 2^32). Endpoint ids are hashed from workload
// names (per node) and rule ids from "policy/rule", both never 0. Nothing is
// stored: the same label set has the same identity in every run, on every
// controller replica and in standalone agents, and unrelated edits renumber
// nothing. Collisions are resolved by probing to the next free value with
// keys in sorted order (see ids.go). Reserved: 1 world, 2 host, < 256
// (128-255: the agent's failsafe); rule id 2^32-1 is the failsafe's too.
//
// # Edges and ends
//
// A rule is an edge: every managed workload its from side covers gets
// egress entries (peers: the identities its to side covers), every managed
// workload its to side covers gets ingress entries (peers: the from side),
// so allowed traffic between managed workloads passes at both ends
// (docs/POLICY.md, semantics 3 of docs/POLICY.md). Peers are identities as the end's own node resolves them:
//
//   - selector: the label identities of matching workloads ({} = every
//     managed workload).
//   - world: every address that is not a managed workload: identity world
//     plus every CIDR identity in the node's ipcache (those prefixes only
//     ever resolve unmanaged addresses, because workloads have /32 and /128
//     entries that are longer).
//   - cidr with except: the CIDR identities of the prefixes in the node's
//     ipcache that lie inside the cidr and inside none of its excepts (exact,
//     because each except is in the ipcache too), plus the managed
//     workloads whose addresses lie inside: a cidr also selects managed
//     workloads, so "deny from 0.0.0.0/0 and ::/0" stops telnet from managed
//     workloads as well. A label set with only some addresses inside counts
//     as inside for a deny and outside for an allow (neither then grants
//     more than written), with a warning.
//   - host: identity host, the node's own addresses as its workloads see
//     them (docs/POLICY.md, semantics 5 of docs/POLICY.md). A host-mode Workload (no interface) is the node
//     itself: on its own node its endpoint and addresses have identity host;
//     on other nodes it has its label identity like any workload. Its end of
//     a rule through a `host` peer is limited to the other side's workloads
//     on the same node (host is node-relative). To write rules for a node
//     towards other nodes or the world, select its host-mode Workload by
//     label. When a node declares no host-mode Workload, the compiler does
//     not know its addresses: the agent must put them in the ipcache as
//     identity host.
//   - A side whose cidrs hold every IPv4 and every IPv6 address (or that
//     has world, host and every label set) becomes the any-peer wildcard:
//     one entry instead of one per identity.
//
// Ports: none = every protocol (ProtocolAny); ANY with a port = TCP and UDP;
// a missing protocol = TCP; ranges stay one entry (Encode stores
// intervals). Verdicts: allow = allowed; deny = denied, or would-deny in a
// monitor policy; monitor workloads get endpoint mode monitor.
//
// # Where denies are stored
//
// The datapath resolves overlaps (denied > would-deny > allowed), so a deny
// entry that overlaps no allow only changes which rule a default-denied flow
// is named after. Two consequences:
//
//   - A would-deny entry on an enforcing endpoint is stored only where it
//     overlaps an allow of the same endpoint and direction (same peer or a
//     wildcard, intersected ports): stored elsewhere it would turn a default
//     deny into a pass, and a monitor policy must never open anything.
//   - A deny whose peers at an end expand to more than DenyExpansionLimit
//     identities (e.g. "to: selector {}" at the sources) is stored there the
//     same way, bounding its cost by the allows it overrides; the verdict is
//     unchanged, but a flow it would have named is named default-deny at
//     that end (the other end, where the peers are few, still names it).
//
// # Ipcache and sizes
//
// A node's ipcache holds the managed addresses its policy needs and the
// CIDR prefixes of rules that have an end on the node. Needed are: its own
// workloads' addresses (the datapath checks a workload's own traffic
// against them), those of every identity its entries name as a peer, every
// managed address inside one of its prefixes (so that CIDR peers never
// match a managed workload by mistake), and every managed address when an
// entry names world (so that world never does). Any other managed address
// resolves to world on the node, which no entry there names, exactly as
// its own identity is named by none: the verdicts are those of a
// cluster-wide ipcache, and the ipcache grows with what the node's policy
// names rather than with the cluster (the controller names the peers of
// flow records by address). Worst case per node: ipcache = managed
// addresses + distinct prefixes written in policy; policy entries = sum over rule ends
// on the node of (peer identities x port items, ANY-with-port counting
// twice), where peer identities <= label sets + prefixes + 2, and a deny's
// share at an end is bounded by DenyExpansionLimit or by the allows it
// overrides. Port ranges cost one interval, never one entry per port. Each
// rule set is encoded and checked against the datapath limits before it is
// returned: a node that does not fit fails with the map, the need and the
// limit (ruleset.MapFullError).
//
// # Warnings
//
// Besides policy's (selectors matching nothing): label sets partly inside a
// rule's CIDRs, allow rules fully shadowed by denies, rules with no
// managed end, and a rule named like the agent's failsafe. Apart from
// Compile, ControlPlaneWarnings warns about host-mode workloads whose
// policy does not let their node reach the controller (egctl validate and
// apply); Result.WithFailsafe adds the agent's failsafe for explain.
//
// It must not import anything under agent/ or controller/.
package compile
