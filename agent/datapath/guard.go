package datapath

import (
	"errors"
	"fmt"
	"math"
	"path"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Guarded interfaces (docs/POLICY.md, "interface: auto"; Config.GuardInterfaces).
//
// Between the moment a CNI creates a pod's veth and the moment the pod's
// workload reaches the agent, the veth would carry traffic with no program:
// a new pod would not be enforced. Every veth whose name matches one of
// the guard patterns and that no endpoint of the rule set in force claims
// is guarded: our programs are attached to it with the guard endpoint,
// which denies everything both ways (default deny, reported as denied
// flow events under the default-deny rule). An endpoint resolving to a
// guarded interface (auto, or by name) takes it over in the same swap
// that installs the endpoint's policy: the interface keeps its programs
// throughout and one store of eg_state moves it from the guard's entry to
// the endpoint's. This is the one exception to "an interface is never
// taken from its endpoint": the guard is not an endpoint.
//
// Why a datapath-level binding and not a synthetic endpoint the enforcer
// adds to every rule set: only the datapath knows which interfaces exist,
// which are veths and which are claimed, and it sees new links within
// milliseconds (the link watch); an endpoint in the rule set would need a
// glob-valued interface in the rule-set format (its validation, its hash,
// the controller's view of it) and a round trip through the enforcer for
// every new veth. The guard is still an ordinary endpoint entry in the
// generation's endpoint table (reserved id GuardEndpoint, no identity,
// enforce mode, no policy entries), so the programs need no change and
// the takeover is the generation flip every rule-set change already is.
//
// Only veths are guarded: loopback, uplinks, bridges and tunnels never
// are, whatever their names, so a pattern cannot lock the node out.

// GuardEndpoint is the reserved endpoint id of guarded interfaces. A rule
// set that uses it is refused while guards are configured.
const GuardEndpoint ruleset.EndpointID = math.MaxUint32

// guardEndpoint is the endpoint a guarded interface is bound to: enforce
// mode whatever --default-mode says (guarded means denied), no entries,
// so every packet meets the default deny. Its identity is world, which no
// workload's endpoint may have (Validate): a pod not known yet is
// anybody, and what it sends from an address the ipcache does not know
// (world) is decided by the default deny (reason policy); from an address
// the ipcache gives another identity it is denied as spoofed. Either way
// it is denied under rule 0, default-deny. Policy lookups are keyed by
// the endpoint id, never by the local identity, so no rule can match it.
//
// Its Interface is a marker, never resolved: it must not be empty, which
// would make it a host-mode endpoint (directions the node's, and traffic
// from the pod's address taken for forwarded traffic and passed).
var guardEndpoint = ruleset.Endpoint{ID: GuardEndpoint, Workload: "(guarded interface)", Interface: "(guarded)",
	Mode: ruleset.ModeEnforce, Identity: ruleset.IdentityWorld}

// ErrBadGuardPattern: a guard pattern is not a valid shell glob.
var ErrBadGuardPattern = errors.New("bad guard interface pattern")

// CheckGuardPatterns says what is wrong with guard patterns: each must be
// a non-empty shell glob (path.Match syntax: *, ?, [...]).
func CheckGuardPatterns(patterns []string) error {
	for i, p := range patterns {
		if p == "" {
			return fmt.Errorf("pattern %d is empty: %w", i+1, ErrBadGuardPattern)
		}
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("pattern %d %q: %w: %v", i+1, p, ErrBadGuardPattern, err)
		}
	}
	return nil
}

// guardMatch says whether name matches a guard pattern.
func (d *Datapath) guardMatch(name string) bool {
	for _, p := range d.cfg.GuardInterfaces {
		if ok, _ := path.Match(p, name); ok { // patterns checked by Open
			return true
		}
	}
	return false
}

// guards says whether l is to be guarded when no endpoint claims it: a
// veth whose name matches a pattern.
func (d *Datapath) guards(l netlink.Link) bool {
	a := l.Attrs()
	return len(d.cfg.GuardInterfaces) > 0 && l.Type() == "veth" && !isLoopback(a) && d.guardMatch(a.Name)
}

// guardUnclaimed binds every interface of links that guards says to guard
// and bindings does not bind yet. Called last by resolve, so any endpoint
// takes precedence.
func (d *Datapath) guardUnclaimed(links []netlink.Link, bindings map[uint32]binding) {
	for _, l := range links {
		if _, bound := bindings[uint32(l.Attrs().Index)]; bound || !d.guards(l) {
			continue
		}
		b, err := bindingOf(l.Attrs(), GuardEndpoint)
		if err != nil {
			d.log.Warn("cannot guard an interface", zap.Error(err))
			continue
		}
		bindings[b.ifindex] = b
	}
}

// isGuard says whether b is a guard binding.
func (b binding) isGuard() bool { return b.endpoint == GuardEndpoint }

// guardedNames lists the guarded interfaces of bindings, sorted.
func guardedNames(bindings map[uint32]binding) []string {
	var out []string
	for _, b := range bindings {
		if b.isGuard() {
			out = append(out, b.ifname)
		}
	}
	slices.Sort(out)
	return out
}

// logGuardChanges logs interfaces guarded and released between two
// binding sets at debug, and the count at info when it changed.
func (d *Datapath) logGuardChanges(before, after map[uint32]binding) {
	if len(d.cfg.GuardInterfaces) == 0 {
		return
	}
	// guardsIn counts the guards of from and logs msg for each one that is
	// not a guard in to.
	guardsIn := func(from, to map[uint32]binding, msg string) int {
		n := 0
		for i, b := range from {
			if !b.isGuard() {
				continue
			}
			n++
			if o, ok := to[i]; !ok || !o.isGuard() {
				d.log.Debug(msg, zap.String("interface", b.ifname), zap.Uint32("ifindex", i))
			}
		}
		return n
	}
	n0 := guardsIn(before, after, "interface no longer guarded")
	n1 := guardsIn(after, before, "interface guarded: denied until an endpoint claims it")
	if n0 != n1 {
		d.log.Info("guarded interfaces", zap.Int("guarded-interfaces", n1))
	}
}

// guardOnlyRuleSet is what a datapath with guards enforces on a machine
// where nothing was ever applied (a fresh node, no rule set from any
// source yet): no endpoints, so every matching veth is guarded, denied
// whatever --default-mode says. It is the datapath's own and version 0;
// the first rule set of a source replaces it.
func guardOnlyRuleSet() *ruleset.RuleSet {
	return &ruleset.RuleSet{Node: "(guard only: no rule set yet)"}
}
