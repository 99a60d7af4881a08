package restapi

import (
	"net/http"
	"strconv"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/store"
)

// The audit trail is read-only here: GET /api/v1/audit is its one route.
// No handler changes or deletes a record (the store has no method that
// could; TestAuditRoutesCannotModify walks the route table to show it).

func (s *API) handleAudit(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	f, err := apiclient.ParseAuditFilter(v, s.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	q := store.AuditQuery{Since: f.Since, Until: f.Until, Actor: f.Actor, ActorKind: f.ActorKind, Action: f.Action, Object: f.Object,
		BeforeID: f.Before, AfterID: f.After, OldestFirst: f.Oldest, Limit: f.Limit + 1}
	recs, err := s.st.AuditRecords(r.Context(), q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := apiclient.AuditList{Records: make([]apiclient.AuditRecord, 0, min(len(recs), f.Limit))}
	for i, rec := range recs {
		if i == f.Limit {
			// One more than asked: there is a next page, after the last
			// one answered.
			last := strconv.FormatUint(recs[i-1].ID, 10)
			if f.Oldest {
				out.Next = "after=" + last
			} else {
				out.Next = "before=" + last
			}
			break
		}
		out.Records = append(out.Records, audit.View(rec))
	}
	writeJSON(w, http.StatusOK, out)
}
