package datapath

import (
	"slices"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// EndpointState says whether an endpoint is enforced.
type EndpointState string

const (
	EndpointEnforcing EndpointState = "enforcing"
	EndpointPending   EndpointState = "pending"
)

// EndpointStatus is one endpoint of the rule set in force.
type EndpointStatus struct {
	ID         ruleset.EndpointID `json:"id"`
	Workload   string             `json:"workload"`
	Mode       ruleset.Mode       `json:"mode"`
	State      EndpointState      `json:"state"`
	Interfaces []string           `json:"interfaces"`
}

// MapUsage is how full one of the rule set's maps is.
type MapUsage struct {
	Name string `json:"name"`
	// Entries is what the rule set in force uses.
	Entries int `json:"entries"`
	// Capacity is what the active generation's map was created with: the
	// rule set's need plus room for incremental updates. Every rule set
	// gets maps sized anew, so it is no bound on the next one.
	Capacity int `json:"capacity"`
	// Limit is the most the map can be grown to (the configured limit, as
	// egctl validate --sizes reports it); a rule set that needs more is
	// refused. eg_ipcache_hosts and eg_ipcache share one limit: their
	// entries together count against it.
	Limit int `json:"limit"`
}

// Status describes what the datapath enforces.
type Status struct {
	Generation uint32 `json:"generation"`
	Version    uint64 `json:"version"`
	// EffectiveHash is of the rule set as enforced: the node's own
	// addresses added to the one received (whose hash is "hash").
	EffectiveHash string           `json:"effectiveHash,omitempty"`
	Endpoints     []EndpointStatus `json:"endpoints"`
	Pending       []string         `json:"pending,omitempty"`
	Attached      int              `json:"attachedInterfaces"`
	// Guarded counts the interfaces guarded now (Config.GuardInterfaces):
	// veths no endpoint claims, denied both ways; GuardedInterfaces names
	// them.
	Guarded           int      `json:"guardedInterfaces"`
	GuardedInterfaces []string `json:"guarded,omitempty"`
	// Maps are the active generation's maps: entries used, capacity (what
	// incremental updates may grow into before a rebuild) and limit.
	Maps []MapUsage `json:"maps,omitempty"`
	// Conntrack: its fill, quota, GC, and the new flows refused for want
	// of room.
	Conntrack *ConntrackStatus `json:"conntrack,omitempty"`
}

// ConntrackStatus is the conntrack's fill and GC, and the new flows it
// refused: RefusedTableFull when a map was full, RefusedEndpointQuota
// when the flow's endpoint held its whole share (counters ct_full and
// ct_endpoint_full, since the maps were created). Full says a map held
// more than 95% of its capacity at the last sweep.
type ConntrackStatus struct {
	GCStats
	Full                 [2]bool `json:"full"`
	RefusedTableFull     uint64  `json:"refusedTableFull"`
	RefusedEndpointQuota uint64  `json:"refusedEndpointQuota"`
}

// Status reports the rule set in force and where it is enforced.
func (d *Datapath) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{Generation: d.word >> 1, Attached: len(d.links) / 2}
	if !d.closed {
		st.Conntrack = d.conntrackStatus()
	}
	cur := d.current
	if cur == nil {
		return st
	}
	st.Version = cur.rs.Version
	st.EffectiveHash = cur.rs.Hash()
	need := needOf(cur.rs, cur.tables, cur.bindings)
	limit := limitsOf(d.cfg.Limits)
	for i, name := range innerNames {
		st.Maps = append(st.Maps, MapUsage{Name: name, Entries: need[i], Capacity: cur.capacity[i], Limit: limit[i]})
	}
	st.Pending = slices.Clone(cur.pending)
	st.GuardedInterfaces = guardedNames(cur.bindings)
	st.Guarded = len(st.GuardedInterfaces)
	ifaces := make(map[ruleset.EndpointID][]string)
	for _, b := range cur.bindings {
		ifaces[b.endpoint] = append(ifaces[b.endpoint], b.ifname)
	}
	for _, e := range cur.rs.Endpoints {
		es := EndpointStatus{ID: e.ID, Workload: e.Workload, Mode: e.Mode, State: EndpointPending, Interfaces: ifaces[e.ID]}
		slices.Sort(es.Interfaces)
		if len(es.Interfaces) > 0 {
			es.State = EndpointEnforcing
		}
		st.Endpoints = append(st.Endpoints, es)
	}
	return st
}
