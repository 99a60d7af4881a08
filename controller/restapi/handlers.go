package restapi

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/eastguard/eastguard/controller/dashboard"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
)

// Request body bounds: a whole policy directory for apply and delete, a
// few fields for everything else. Bodies are read only after the admin
// token is checked, so nobody without one can make the controller hold
// any.
const (
	maxRequestBody = 64 << 20
	maxSmallBody   = 64 << 10
)

// Handler serves the HTTP listener: /healthz and /metrics without
// credentials, the dashboard (GET / and /ui/), and /api/v1/..., every
// call of which needs the admin credential or a dashboard session (401
// without it) but login and the OpenAPI document.
func (s *API) Handler(metrics prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	if metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	}
	// The dashboard: its page at / (it logs in through /api/v1/login) and
	// its assets under /ui/, with their own security headers.
	dash := dashboard.Handler()
	mux.Handle("GET /{$}", dash)
	mux.Handle("GET /ui/", dash)

	api := http.NewServeMux()
	for _, rt := range routes {
		if rt.public {
			mux.HandleFunc(rt.pattern, s.bind(rt))
		} else {
			api.HandleFunc(rt.pattern, s.bind(rt))
		}
	}
	api.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no API %s %s", r.Method, r.URL.Path), nil)
	})
	mux.Handle("/api/v1/", s.requireAdmin(api))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string, diags []string) {
	writeJSON(w, code, apiclient.Error{Error: msg, Diagnostics: diags})
}

// fail answers an error from the server's methods with its status.
func (s *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var inv *policyrepo.InvalidError
	var nf *policyrepo.NotFoundError
	var owned *policyrepo.OwnedError
	switch {
	case errors.As(err, &inv):
		writeError(w, http.StatusUnprocessableEntity, inv.Summary, inv.Diagnostics)
	case errors.As(err, &nf):
		writeError(w, http.StatusNotFound, "not found, nothing changed", nf.Missing)
	case errors.As(err, &owned):
		writeError(w, http.StatusConflict, "owned by another system, nothing changed", owned.Owned)
	case errors.Is(err, agentapi.ErrInvalidArgument), errors.As(err, new(badRequest)):
		writeError(w, http.StatusBadRequest, err.Error(), nil)
	case errors.Is(err, nodes.ErrUnknownNode):
		writeError(w, http.StatusNotFound, err.Error(), nil)
	default:
		s.log.Error("API call failed", zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusInternalServerError, "internal error, nothing changed: "+err.Error(), nil)
	}
}

// decode reads a JSON request body of at most limit bytes strictly.
func decode(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "request body: "+err.Error(), nil)
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "request body: more than one JSON value", nil)
		return false
	}
	return true
}

func (s *API) handleApply(w http.ResponseWriter, r *http.Request) {
	var req apiclient.ApplyRequest
	if !decode(w, r, &req, maxRequestBody) {
		return
	}
	res, err := s.policy.Apply(r.Context(), req.Files, req.DryRun)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *API) handleDelete(w http.ResponseWriter, r *http.Request) {
	var req apiclient.DeleteRequest
	if !decode(w, r, &req, maxRequestBody) {
		return
	}
	var keys []store.ResourceKey
	for _, ref := range req.Resources {
		kind, err := apiclient.ParseKind(ref.Kind)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error(), nil)
			return
		}
		keys = append(keys, store.ResourceKey{Kind: kind, Name: ref.Name})
	}
	res, err := s.policy.Delete(r.Context(), keys, req.DryRun)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *API) handleDeleteOne(w http.ResponseWriter, r *http.Request) {
	kind, err := apiclient.ParseKind(r.PathValue("kind"))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error(), nil)
		return
	}
	res, err := s.policy.Delete(r.Context(), []store.ResourceKey{{Kind: kind, Name: r.PathValue("name")}}, r.URL.Query().Get("dryRun") == "true")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *API) handleRevoke(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	res, err := s.agents.Revoke(r.Context(), node)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *API) handleToken(w http.ResponseWriter, r *http.Request) {
	var req apiclient.TokenRequest
	if !decode(w, r, &req, maxSmallBody) {
		return
	}
	ttl, err := time.ParseDuration(req.TTL)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("ttl %q: %v", req.TTL, err), nil)
		return
	}
	tok, err := s.agents.CreateJoinToken(r.Context(), req.Node, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, tok)
}

func (s *API) handleAgents(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.nodes.Agents())
}

// handleControllers lists the controllers and which one leads.
func (s *API) handleControllers(w http.ResponseWriter, r *http.Request) {
	if s.controllers == nil {
		writeJSON(w, http.StatusOK, []apiclient.Controller{{Role: "leader"}})
		return
	}
	list, err := s.controllers(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if list == nil {
		list = []apiclient.Controller{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *API) handleRuleSet(w http.ResponseWriter, r *http.Request) {
	v := s.nodes.Latest(r.PathValue("node"))
	if v == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("node %q has no rule set", r.PathValue("node")), nil)
		return
	}
	writeJSON(w, http.StatusOK, v.RuleSet)
}

// handleList lists one kind of resource: JSON views, or with
// ?output=yaml the stored documents as one YAML stream.
func (s *API) handleList(w http.ResponseWriter, r *http.Request) {
	kind, err := apiclient.ParseKind(r.PathValue("kind"))
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error(), nil)
		return
	}
	list := s.policy.Documents(kind)
	if r.URL.Query().Get("output") == "yaml" {
		w.Header().Set("Content-Type", "application/yaml")
		for i, res := range list {
			if i > 0 {
				io.WriteString(w, "---\n")
			}
			w.Write(res.Text)
			io.WriteString(w, "\n")
		}
		return
	}
	var stats map[string]store.WebhookStats
	if kind == "Webhook" {
		ws, err := s.st.WebhookStats(r.Context())
		if err != nil {
			s.failEvents(w, r, err)
			return
		}
		stats = make(map[string]store.WebhookStats, len(ws))
		for _, st := range ws {
			stats[st.Webhook] = st
		}
	}
	views := make([]any, 0, len(list))
	for _, res := range list {
		v := view(res)
		if wv, ok := v.(apiclient.WebhookView); ok {
			st := stats[wv.Name]
			wv.LastDelivered, wv.LastError, wv.Pending, wv.GaveUp = st.LastDelivered, st.LastError, st.Pending, st.GaveUp
			v = wv
		}
		views = append(views, v)
	}
	writeJSON(w, http.StatusOK, views)
}

func view(r policyrepo.Document) any {
	set := r.Set
	source := cmp.Or(r.Source, apiclient.SourceAPI)
	switch {
	case len(set.Workloads) == 1:
		wl := set.Workloads[0]
		return apiclient.WorkloadView{Name: wl.Name, Node: wl.Node, Interface: wl.Interface, Addresses: wl.Addresses,
			Labels: wl.Labels, Mode: string(wl.Mode), Updated: r.Updated, Source: source}
	case len(set.Policies) == 1:
		p := set.Policies[0]
		v := apiclient.PolicyView{Name: p.Name, Mode: string(p.Mode), Rules: []string{}, Updated: r.Updated, Source: source}
		for _, rule := range p.Rules {
			v.Rules = append(v.Rules, rule.Name)
		}
		return v
	case len(set.AlertRules) == 1:
		a := set.AlertRules[0]
		v := apiclient.AlertRuleView{Name: a.Name, Severity: string(a.Severity), Updated: r.Updated, Source: source}
		for _, n := range a.Notify {
			v.Notify = append(v.Notify, n.Name)
		}
		return v
	case len(set.Webhooks) == 1:
		wh := set.Webhooks[0]
		return apiclient.WebhookView{Name: wh.Name, URL: wh.URL, Format: wh.Format, Updated: r.Updated, Source: source}
	}
	return map[string]string{"name": r.Key.Name, "kind": r.Key.Kind, "error": "stored document does not parse"}
}
