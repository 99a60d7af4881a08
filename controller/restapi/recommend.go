package restapi

import (
	"fmt"
	"net/http"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/recommend"
)

// handleRecommend answers egctl recommend: a policy recommended from the
// stored flows (controller/recommend), from at most recommend.MaxEdges of
// the store's aggregated edges (of the workload's flows with workload=),
// the ones with the most flows (beyond: truncated), and with diff=true its
// comparison with the policy in force.
func (s *API) handleRecommend(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	q, err := apiclient.ParseRecommendQuery(v, s.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	set := s.policy.Merged()
	if q.Workload != "" {
		if _, ok := set.Workload(q.Workload); !ok {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("workload: no workload %q in the policy", q.Workload), nil)
			return
		}
	}
	groups, err := s.st.FlowEdgesOf(r.Context(), q.Since, q.Until, q.Workload, recommend.MaxEdges+1)
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	truncated := len(groups) > recommend.MaxEdges
	if truncated {
		groups = groups[:recommend.MaxEdges]
	}
	opts := recommend.Options{GroupBy: q.GroupBy, Workload: q.Workload, IncludeDenied: q.IncludeDenied, Name: q.Name,
		Since: q.Since, Until: q.Until}
	rec, err := recommend.Recommend(set.Workloads, groups, opts)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rec.Truncated = truncated
	if q.Diff {
		d, notes, err := recommend.Diff(set, groups, opts)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		rec.Diff = d
		rec.Notes = append(rec.Notes, notes...)
	}
	writeJSON(w, http.StatusOK, rec)
}
