package apiclient

import (
	"net/url"
	"time"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// GET /api/v1/recommend: a policy recommended from the stored flows
// (egctl recommend; controller/recommend computes it).

// Defaults of a recommendation's query.
const (
	// RecommendRangeDefault is how far back the flows are read when the
	// query gives no since.
	RecommendRangeDefault = 24 * time.Hour
	// RecommendGroupByDefault is the label workloads are grouped by.
	RecommendGroupByDefault = "app"
	// RecommendNameDefault is the recommended Policy's name.
	RecommendNameDefault = "recommended"
)

var recommendParams = []string{"since", "until", "groupBy", "workload", "includeDenied", "diff", "name"}

// RecommendQuery is GET /api/v1/recommend's query, parsed.
type RecommendQuery struct {
	Since, Until time.Time
	// GroupBy is the label key workloads are grouped by.
	GroupBy string
	// Workload, when set, keeps only the flows from or to it.
	Workload string
	// IncludeDenied also recommends flows the datapath denied (enforced);
	// by default only allowed and would-deny (monitor mode) flows count.
	IncludeDenied bool
	// Diff adds the comparison with the policy in force.
	Diff bool
	// Name is the recommended Policy's name.
	Name string
}

// ParseRecommendQuery parses GET /api/v1/recommend's query; durations in
// since and until count back from now. The error, if any, is ParamErrors.
func ParseRecommendQuery(v url.Values, now time.Time) (RecommendQuery, error) {
	q := &query{v: v}
	q.unknown(recommendParams)
	r := RecommendQuery{GroupBy: RecommendGroupByDefault, Name: RecommendNameDefault}
	r.Since, r.Until = q.time("since", now), q.time("until", now)
	if r.Since.IsZero() {
		r.Since = now.Add(-RecommendRangeDefault)
	}
	if r.Until.IsZero() {
		r.Until = now
	}
	if !r.Until.After(r.Since) {
		q.fail("until", "%s is not after since %s", r.Until.Format(time.RFC3339), r.Since.Format(time.RFC3339))
	}
	if s, ok := q.single("groupBy"); ok {
		if err := policy.CheckLabel(s, ""); err != nil {
			q.fail("groupBy", "%v", err)
		}
		r.GroupBy = s
	}
	r.Workload = q.name("workload")
	r.IncludeDenied, r.Diff = q.bool("includeDenied"), q.bool("diff")
	if s, ok := q.single("name"); ok {
		if err := policy.CheckName(s); err != nil {
			q.fail("name", "%v", err)
		}
		r.Name = s
	}
	return r, q.err()
}

// bool reads true or false (absent: false).
func (q *query) bool(name string) bool {
	s, ok := q.single(name)
	switch {
	case !ok || s == "false":
		return false
	case s == "true":
		return true
	}
	q.fail(name, "%q is neither true nor false", s)
	return false
}

// Recommendation is GET /api/v1/recommend's answer.
type Recommendation struct {
	Since         time.Time `json:"since"`
	Until         time.Time `json:"until"`
	GroupBy       string    `json:"groupBy"`
	Workload      string    `json:"workload,omitempty"`
	IncludeDenied bool      `json:"includeDenied"`
	// Truncated: the range held more observed edges than the controller
	// reads (MaxEdges); the recommendation is made from the ones with the
	// most flows, and the rarest are missing from it.
	Truncated bool `json:"truncated"`
	// YAML is the Policy document, ready for egctl apply, with a comment
	// per rule carrying its evidence; empty when no flow was observed.
	YAML string `json:"yaml"`
	// Rules is the same policy's rules with their evidence.
	Rules []RecommendedRule `json:"rules"`
	// Notes say what was left out and why (a protocol the language cannot
	// name, a workload no longer defined, a label it refuses).
	Notes []string `json:"notes"`
	// Diff is set when the query asked for it.
	Diff *RecommendDiff `json:"diff,omitempty"`
}

// RecommendedRule is one allow rule: one observed edge between groups.
type RecommendedRule struct {
	Name     string            `json:"name"`
	From     []RecommendedPeer `json:"from"`
	To       []RecommendedPeer `json:"to"`
	Ports    []RecommendedPort `json:"ports"`
	Evidence Evidence          `json:"evidence"`
}

// RecommendedPeer is a selector or a cidr.
type RecommendedPeer struct {
	Selector map[string]string `json:"selector,omitempty"`
	CIDR     string            `json:"cidr,omitempty"`
}

// RecommendedPort is a protocol and a port or port range (Port 0: ICMP,
// every type).
type RecommendedPort struct {
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port,omitempty"`
	EndPort  uint16 `json:"endPort,omitempty"`
}

// Evidence is what a rule was recommended from: the stored flow records
// it covers (records of new flows; a connection between two managed
// workloads is reported by both ends' nodes, so it counts twice), by
// verdict, and the first and last of them.
type Evidence struct {
	Flows     uint64    `json:"flows"`
	Allowed   uint64    `json:"allowed"`
	WouldDeny uint64    `json:"wouldDeny"`
	Denied    uint64    `json:"denied"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

// RecommendDiff compares the observed traffic with the policy in force.
type RecommendDiff struct {
	// NotAllowed are observed edges the policy in force does not allow
	// (decided as every workload in enforce mode): they would break
	// under enforce.
	NotAllowed []DiffEdge `json:"notAllowed"`
	// Unused are edges the allow rules admit between workloads that no
	// observed flow used: candidates to remove.
	Unused []PolicyEdge `json:"unused"`
	// Truncated: the policy's edges were cut at their bound.
	Truncated bool `json:"truncated"`
}

// DiffEdge is an observed edge and what the policy in force decides for
// it. Src and Dst are workload names, or addresses no workload owns.
type DiffEdge struct {
	Src       string          `json:"src"`
	Dst       string          `json:"dst"`
	Protocol  string          `json:"protocol"`
	Port      uint16          `json:"port"`
	Flows     uint64          `json:"flows"`
	FirstSeen time.Time       `json:"firstSeen"`
	LastSeen  time.Time       `json:"lastSeen"`
	Verdict   ruleset.Verdict `json:"verdict"`
	Rule      string          `json:"rule"`
}
