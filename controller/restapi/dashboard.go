package restapi

import (
	_ "embed"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/restapi/servicemap"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The dashboard's views over the policy and the flows: the service map,
// explain and a policy's detail; and the API's description.

//go:embed openapi.json
var openAPI []byte

// handleOpenAPI serves the API's description without a credential: it
// holds nothing but what the repository's documentation says.
func (s *API) handleOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPI)
}

// mapRangeDefault is the range of the map and of a policy's counts when
// the query gives no since.
const mapRangeDefault = time.Hour

// timeRange parses a view's since and until (400 if they are wrong).
func (s *API) timeRange(w http.ResponseWriter, r *http.Request) (since, until time.Time, ok bool) {
	v, ok := query(w, r)
	if !ok {
		return since, until, false
	}
	since, until, err := apiclient.ParseTimeRange(v, s.now(), mapRangeDefault)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return since, until, false
	}
	return since, until, true
}

func (s *API) handleMap(w http.ResponseWriter, r *http.Request) {
	since, until, ok := s.timeRange(w, r)
	if !ok {
		return
	}
	groups, err := s.st.FlowEdges(r.Context(), since, until, servicemap.MaxEdges+1)
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	m := apiclient.ServiceMap{Since: since.UTC(), Until: until.UTC()}
	if len(groups) > servicemap.MaxEdges {
		groups, m.Truncated = groups[:servicemap.MaxEdges], true
	}
	set := s.policy.Merged()
	m.Workloads, m.Edges = servicemap.Workloads(set), servicemap.Edges(groups)
	var cut bool
	m.PolicyEdges, cut = servicemap.PolicyBlocks(set)
	m.Truncated = m.Truncated || cut
	writeJSON(w, http.StatusOK, m)
}

var explainParams = []string{"src", "dst", "protocol", "port"}

// handleExplain answers as egctl explain -o json does, from the policy in
// force and each managed end's node's default mode.
func (s *API) handleExplain(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	var problems []string
	for name := range v {
		if !slices.Contains(explainParams, name) {
			problems = append(problems, fmt.Sprintf("%s: unknown parameter (known: %s)", name, strings.Join(explainParams, ", ")))
		}
	}
	get := func(name string) string {
		if len(v[name]) != 1 || strings.TrimSpace(v[name][0]) == "" {
			problems = append(problems, fmt.Sprintf("%s: give it once, not empty", name))
			return ""
		}
		return v[name][0]
	}
	src, dst, proto := get("src"), get("dst"), get("protocol")
	port := v.Get("port")
	if len(problems) > 0 {
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "), nil)
		return
	}
	service := strings.ToLower(proto)
	if port != "" {
		service = port + "/" + service
	}
	p, n, err := compile.ParseService(service)
	if err != nil {
		writeError(w, http.StatusBadRequest, "protocol and port: "+err.Error(), nil)
		return
	}
	set := s.policy.Merged()
	q := compile.Query{From: src, To: dst, Protocol: p, Port: n}
	_, monitor := s.nodes.CompileTargets()
	res, err := compile.Compile(set, compile.Options{Nodes: q.Nodes(set), DefaultMode: func(node string) ruleset.Mode {
		if monitor[node] {
			return ruleset.ModeMonitor
		}
		return ruleset.ModeEnforce
	}})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	x, err := compile.Explain(set, res, q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusOK, apiclient.NewExplanation(x, nil))
}

func (s *API) handlePolicyDetail(w http.ResponseWriter, r *http.Request) {
	since, until, ok := s.timeRange(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	var p *policy.Policy
	var text []byte
	for _, d := range s.policy.Documents(policy.KindPolicy) {
		if d.Key.Name == name && len(d.Set.Policies) == 1 {
			p, text = &d.Set.Policies[0], d.Text
		}
	}
	if p == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no policy %q", name), nil)
		return
	}
	counts, err := s.st.RuleCounts(r.Context(), since, until)
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	set := s.policy.Merged()
	out := apiclient.PolicyDetail{Name: p.Name, Mode: string(p.Mode), YAML: string(text), Rules: []apiclient.RuleDetail{},
		Since: since.UTC(), Until: until.UTC()}
	if out.Mode == "" {
		out.Mode = string(policy.ModeEnforce)
	}
	for i := range p.Rules {
		rule := &p.Rules[i]
		d := apiclient.RuleDetail{Name: rule.Name, Action: string(rule.Action), Selects: servicemap.RuleSelects(set, rule)}
		full := p.Name + "/" + rule.Name
		for _, c := range counts {
			if c.Rule != full {
				continue
			}
			d.Hits += c.Flows
			if c.Verdict == ruleset.VerdictWouldDeny {
				d.WouldDeny += c.Flows
			}
		}
		out.Rules = append(out.Rules, d)
	}
	writeJSON(w, http.StatusOK, out)
}
