package ruleset

import (
	"errors"
	"fmt"
)

// Lookup decides a new flow the way the eBPF program does (same probes, same
// order, same shape gating; see the comment at the top of encode.go). It
// returns false when no probe hits, which the datapath turns into the
// default deny. The BPF unit tests compare the kernel against this mirror.
func (t *Tables) Lookup(ep EndpointID, dir Direction, peer Identity, proto Protocol, port uint16) (PolicyValue, bool) {
	sh := t.Shapes[ShapeKey{ep, dir}]
	probe := func(bit Shape, p Identity, x Protocol, port uint16) (PolicyValue, bool) {
		if sh&bit == 0 {
			return PolicyValue{}, false
		}
		v, ok := t.Exact[PolicyKey{ep, p, dir, x, port}]
		return v, ok
	}
	scan := func(bit Shape, p Identity) (PolicyValue, bool) {
		if sh&bit == 0 {
			return PolicyValue{}, false
		}
		return findInterval(t.Ranges[RangeKey{ep, p, dir, proto}], port)
	}
	if v, ok := probe(ShapeExactPeer, peer, proto, port); ok {
		return v, true
	}
	if v, ok := scan(ShapeRangePeer, peer); ok {
		return v, true
	}
	if v, ok := probe(ShapeExactAny, IdentityAny, proto, port); ok {
		return v, true
	}
	if v, ok := scan(ShapeRangeAny, IdentityAny); ok {
		return v, true
	}
	if v, ok := probe(ShapeAnyProtoPeer, peer, ProtocolAny, 0); ok {
		return v, true
	}
	return probe(ShapeAnyProtoAny, IdentityAny, ProtocolAny, 0)
}

// findInterval binary-searches sorted disjoint intervals, as the kernel does.
func findInterval(ivs []Interval, port uint16) (PolicyValue, bool) {
	lo, hi := 0, len(ivs)
	for lo < hi {
		mid := (lo + hi) / 2
		switch {
		case port < ivs[mid].Lo:
			hi = mid
		case port > ivs[mid].Hi:
			lo = mid + 1
		default:
			return ivs[mid].PolicyValue, true
		}
	}
	return PolicyValue{}, false
}

// Decide is Lookup plus the endpoint's mode: it returns the verdict and
// deciding rule the datapath reports for a new flow, including the default
// deny and the monitor-mode downgrade of denied to would-deny.
func (t *Tables) Decide(ep Endpoint, dir Direction, peer Identity, proto Protocol, port uint16) PolicyValue {
	v, ok := t.Lookup(ep.ID, dir, peer, proto, port)
	if !ok {
		v = PolicyValue{VerdictDenied, RuleDefaultDeny}
	}
	if ep.Mode == ModeMonitor && v.Verdict == VerdictDenied {
		v.Verdict = VerdictWouldDeny
	}
	return v
}

// Map names, as in bpf/maps.h; limit errors name them.
const (
	MapEndpoints    = "eg_endpoints"
	MapIPCache      = "eg_ipcache"
	MapPolicy       = "eg_policy"
	MapPolicyRanges = "eg_policy_ranges"
)

// Limits are the capacities of the datapath's per-rule-set maps.
type Limits struct {
	Endpoints    int `json:"endpoints"`
	IPCache      int `json:"ipcache"`
	Policy       int `json:"policy"`
	PolicyRanges int `json:"policyRanges"`
}

// DefaultLimits are the capacities the agent uses unless configured.
func DefaultLimits() Limits {
	return Limits{Endpoints: 4096, IPCache: 131072, Policy: 262144, PolicyRanges: 16384}
}

// Size is how many entries of each map a rule set needs.
type Size struct {
	Endpoints    int `json:"endpoints"`
	IPCache      int `json:"ipcache"`
	Policy       int `json:"policy"`
	PolicyRanges int `json:"policyRanges"`
}

// Size reports the map entries the encoded rule set needs. Endpoints count
// one entry per endpoint; a host-mode endpoint takes one entry per host
// interface at run time, which only the agent knows.
func (t *Tables) Size(rs *RuleSet) Size {
	return Size{
		Endpoints:    len(rs.Endpoints),
		IPCache:      len(rs.IPCache),
		Policy:       len(t.Exact),
		PolicyRanges: len(t.Ranges),
	}
}

// ErrMapFull is matched (errors.Is) by every *MapFullError.
var ErrMapFull = errors.New("map full")

// MapFullError says which map a rule set does not fit in.
type MapFullError struct {
	Map   string
	Need  int
	Limit int
}

func (e *MapFullError) Error() string {
	return fmt.Sprintf("map %s is full: the rule set needs %d entries, the limit is %d", e.Map, e.Need, e.Limit)
}

func (e *MapFullError) Is(target error) bool { return target == ErrMapFull }

// Check returns a *MapFullError for every map the size exceeds.
func (s Size) Check(l Limits) error {
	var errs []error
	for _, c := range []struct {
		name        string
		need, limit int
	}{
		{MapEndpoints, s.Endpoints, l.Endpoints},
		{MapIPCache, s.IPCache, l.IPCache},
		{MapPolicy, s.Policy, l.Policy},
		{MapPolicyRanges, s.PolicyRanges, l.PolicyRanges},
	} {
		if c.need > c.limit {
			errs = append(errs, &MapFullError{c.name, c.need, c.limit})
		}
	}
	return errors.Join(errs...)
}
