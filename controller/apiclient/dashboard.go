package apiclient

import (
	"time"

	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The JSON shapes of the dashboard's endpoints (docs/OPERATIONS.md,
// "Dashboard API"; controller/restapi/openapi.json).

// StoredFlow is a flow record as GET /api/v1/flows answers it: the record's
// keys (docs/ARCHITECTURE.md, "Flow record") and its id in the store, the
// cursor of the next page (?before=<id>).
type StoredFlow struct {
	ID int64 `json:"id"`
	flowrecord.Record
}

// ServiceMap is the answer of GET /api/v1/map.
type ServiceMap struct {
	Since     time.Time     `json:"since"`
	Until     time.Time     `json:"until"`
	Workloads []MapWorkload `json:"workloads"`
	Edges     []MapEdge     `json:"edges"`
	// PolicyEdges are what the allow rules admit, as blocks: every
	// source of a block to every destination of it.
	PolicyEdges []PolicyBlock `json:"policyEdges"`
	// Truncated says edges or policyEdges were cut at their bound (the
	// most used edges are kept).
	Truncated bool `json:"truncated"`
}

// MapWorkload is a node of the map.
type MapWorkload struct {
	Name   string            `json:"name"`
	Node   string            `json:"node"`
	Labels map[string]string `json:"labels"`
}

// MapEdge is observed traffic: flows of one source, destination,
// protocol, destination port and verdict. Src and Dst are workload names,
// or "world:<addr>" for an address no workload owns ("world" when there
// are too many such addresses to draw).
type MapEdge struct {
	Src      string          `json:"src"`
	Dst      string          `json:"dst"`
	Protocol string          `json:"protocol"`
	Port     uint16          `json:"port"`
	Verdict  ruleset.Verdict `json:"verdict"`
	Flows    uint64          `json:"flows"`
	Packets  uint64          `json:"packets"`
	Bytes    uint64          `json:"bytes"`
	LastSeen time.Time       `json:"lastSeen"`
}

// PolicyEdge is one (workload, workload, protocol, port) an allow rule
// admits. Port is the first port of the rule's range (0: every port),
// EndPort its last when it is a range.
type PolicyEdge struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
	EndPort  uint16 `json:"endPort,omitempty"`
	Policy   string `json:"policy"`
	Rule     string `json:"rule"`
}

// PolicyBlock is what an allow rule admits between workloads on one
// protocol and port range: every pair of Srcs x Dsts (workload names).
// Port is the range's first port (0: every port), EndPort its last when
// it is a range; Protocol "any" with Port 0: every protocol and port.
type PolicyBlock struct {
	Srcs     []string `json:"srcs"`
	Dsts     []string `json:"dsts"`
	Protocol string   `json:"protocol"`
	Port     uint16   `json:"port"`
	EndPort  uint16   `json:"endPort,omitempty"`
	Policy   string   `json:"policy"`
	Rule     string   `json:"rule"`
}

// PolicyDetail is the answer of GET /api/v1/policies/{name}/detail.
type PolicyDetail struct {
	Name  string       `json:"name"`
	Mode  string       `json:"mode"`
	YAML  string       `json:"yaml"`
	Rules []RuleDetail `json:"rules"`
	Since time.Time    `json:"since"`
	Until time.Time    `json:"until"`
}

// RuleDetail is one rule of a policy: the workloads its selectors select
// now, and the new flows it decided over the range (Hits in all,
// WouldDeny of them with verdict would-deny).
type RuleDetail struct {
	Name      string      `json:"name"`
	Action    string      `json:"action"`
	Selects   RuleSelects `json:"selects"`
	Hits      uint64      `json:"hits"`
	WouldDeny uint64      `json:"wouldDeny"`
}

// RuleSelects names the workloads a rule's from and to select; peers that
// are not selectors (cidr, world, host) are named as such ("cidr:10.0.0.0/8",
// "world", "host").
type RuleSelects struct {
	From []string `json:"from"`
	To   []string `json:"to"`
}

// ExplainEnd is what one managed end of an explained flow decides.
type ExplainEnd struct {
	Node      string            `json:"node"`
	Workload  string            `json:"workload"`
	Endpoint  uint32            `json:"endpoint"`
	Direction ruleset.Direction `json:"direction"`
	Mode      ruleset.Mode      `json:"mode"`
	Peer      uint32            `json:"peerIdentity"`
	PeerName  string            `json:"peer"`
	Verdict   ruleset.Verdict   `json:"verdict"`
	Rule      string            `json:"rule"`
}

// Explanation is egctl explain -o json's answer, and GET
// /api/v1/explain's.
type Explanation struct {
	From         string           `json:"from"`
	FromAddr     string           `json:"fromAddr"`
	To           string           `json:"to"`
	ToAddr       string           `json:"toAddr"`
	Protocol     ruleset.Protocol `json:"protocol"`
	Port         uint16           `json:"port"`
	Source       *ExplainEnd      `json:"source"`
	Destination  *ExplainEnd      `json:"destination"`
	Verdict      ruleset.Verdict  `json:"verdict"`
	DecidingRule string           `json:"rule"`
	Notes        []string         `json:"notes,omitempty"`
}

// NewExplanation is the JSON view of an explanation.
func NewExplanation(x *compile.Explanation, notes []string) Explanation {
	end := func(d *compile.EndDecision) *ExplainEnd {
		if d == nil {
			return nil
		}
		return &ExplainEnd{d.Node, d.Workload, uint32(d.Endpoint), d.Direction, d.Mode, uint32(d.Peer), d.PeerName, d.Verdict, d.RuleName}
	}
	name := func(p compile.Party) string {
		if p.Workload != nil {
			return p.Workload.Name
		}
		return ""
	}
	return Explanation{name(x.From), x.From.Addr.String(), name(x.To), x.To.Addr.String(), x.Protocol, x.Port,
		end(x.Source), end(x.Destination), x.Verdict, x.Rule, notes}
}
