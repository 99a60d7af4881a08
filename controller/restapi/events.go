package restapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// The read side of what agents report: flows and alerts, and the one
// change an operator makes to an alert, acknowledging it. The alert
// engine raises and resolves alerts; this file only reads them and moves
// open ones to acknowledged.

// Errors of AckAlert callers branch on.
var (
	ErrNoSuchAlert   = errors.New("no such alert")
	ErrAlertResolved = errors.New("a resolved alert cannot be acknowledged")
)

// Flows returns the flow records q selects, newest first (never nil).
// q.Limit 0 means apiclient.DefaultListLimit; more than
// apiclient.MaxListLimit is refused.
func (s *API) Flows(ctx context.Context, q store.FlowQuery) ([]flowrecord.Record, error) {
	var err error
	if q.Limit, err = listLimit(q.Limit); err != nil {
		return nil, err
	}
	recs, err := s.st.Flows(ctx, q)
	if err != nil {
		return nil, err
	}
	if recs == nil {
		recs = []flowrecord.Record{}
	}
	return recs, nil
}

// Alerts returns the alerts q selects, most recently seen first (never
// nil). Limits are as for Flows.
func (s *API) Alerts(ctx context.Context, q store.AlertQuery) ([]apiclient.Alert, error) {
	var err error
	if q.Limit, err = listLimit(q.Limit); err != nil {
		return nil, err
	}
	list, err := s.st.Alerts(ctx, q)
	if err != nil {
		return nil, err
	}
	out := make([]apiclient.Alert, len(list))
	for i := range list {
		out[i] = alertView(&list[i])
	}
	return out, nil
}

// AckAlert acknowledges an open alert: the security team has seen it. It
// stays live (it keeps counting repeats and is resolved by the alert
// engine like an open one); AcknowledgedAt is set to now, AcknowledgedBy
// to by (who acknowledged it). Acknowledging
// an acknowledged alert changes nothing; a resolved one is refused
// (ErrAlertResolved), an unknown id is ErrNoSuchAlert.
func (s *API) AckAlert(ctx context.Context, id int64, by string) (apiclient.Alert, error) {
	var a store.Alert
	var changed bool
	err := s.st.EventTx(ctx, func(tx store.EventTx) error {
		var err error
		a, err = tx.Alert(id)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("alert %d: %w", id, ErrNoSuchAlert)
		}
		if err != nil {
			return err
		}
		switch a.State {
		case store.AlertAcknowledged:
			return nil
		case store.AlertResolved:
			by := ""
			if a.ResolvedBy != "" {
				by = " by " + a.ResolvedBy
			}
			return fmt.Errorf("alert %d was resolved%s at %s: %w (it opens again as a new alert if the traffic repeats)",
				id, by, a.ResolvedAt.Format(time.RFC3339), ErrAlertResolved)
		}
		a.State, a.AcknowledgedAt, a.AcknowledgedBy, changed = store.AlertAcknowledged, s.now().UTC(), by, true
		return tx.UpdateAlert(&a)
	})
	if err != nil {
		return apiclient.Alert{}, err
	}
	if changed {
		s.log.Info("alert acknowledged", zap.Int64("alert-id", id), zap.String("alert-rule", a.Rule), zap.String("by", by))
		// The alert lives in the event data, the trail in the control
		// data (two SQLite files): the record follows the commit, and a
		// failure to write it is logged, the acknowledgement stands.
		ar := audit.Record(ctx, a.AcknowledgedAt, audit.AlertAcknowledge, audit.AlertObject(id),
			fmt.Sprintf("rule %s, %s -> %s", a.Rule, a.Source, a.Destination))
		if err := s.audit.Append(ctx, ar); err != nil {
			s.log.Error("alert acknowledgement not recorded in the audit trail", zap.Int64("alert-id", id), zap.Error(err))
		}
	}
	return alertView(&a), nil
}

// badRequest is a query the API refuses as malformed; its text is the
// reason alone.
type badRequest struct{ error }

// listLimit applies the default and the bound of a listing's limit.
func listLimit(n int) (int, error) {
	switch {
	case n == 0:
		return apiclient.DefaultListLimit, nil
	case n < 0 || n > apiclient.MaxListLimit:
		return 0, badRequest{fmt.Errorf("limit %d: want 1 to %d", n, apiclient.MaxListLimit)}
	}
	return n, nil
}

func alertView(a *store.Alert) apiclient.Alert {
	if len(a.Ports) == 0 {
		a.Ports = []uint16{a.Port}
	}
	return apiclient.Alert{
		ID: a.ID, Rule: a.Rule, Severity: a.Severity, State: a.State, Count: a.Count,
		Source: a.Source, Destination: a.Destination, Port: a.Port, Ports: a.Ports, PortCount: max(a.PortCount, 1),
		Protocol: a.Protocol, FirstSeen: a.FirstSeen, LastSeen: a.LastSeen, Folded: a.Folded,
		SrcWorkload: a.SrcWorkload, DstWorkload: a.DstWorkload, SrcAddr: a.SrcAddr, DstAddr: a.DstAddr,
		SrcLabels: a.SrcLabels, DstLabels: a.DstLabels, Verdict: a.Verdict, DecidingRule: a.DecidingRule,
		Node: a.Node, AcknowledgedAt: a.AcknowledgedAt, AcknowledgedBy: a.AcknowledgedBy, ResolvedAt: a.ResolvedAt, ResolvedBy: a.ResolvedBy,
	}
}

// query parses a request's query string, refusing malformed escapes that
// r.URL.Query() would silently drop.
func query(w http.ResponseWriter, r *http.Request) (url.Values, bool) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, "query: "+err.Error(), nil)
		return nil, false
	}
	return v, true
}

func (s *API) handleAlerts(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	f, err := apiclient.ParseAlertFilter(v, s.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	list, err := s.Alerts(r.Context(), store.AlertQuery{States: f.States, Rule: f.Rule, Since: f.Since, Limit: f.Limit})
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// alertID is the {id} of an alert route; false when it answered 400.
func alertID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("id: %q is not an alert id (a positive integer)", r.PathValue("id")), nil)
		return 0, false
	}
	return id, true
}

// handleAlert answers one alert: what a webhook's link (#/alerts/ID)
// opens.
func (s *API) handleAlert(w http.ResponseWriter, r *http.Request) {
	id, ok := alertID(w, r)
	if !ok {
		return
	}
	list, err := s.Alerts(r.Context(), store.AlertQuery{ID: id, Limit: 1})
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	if len(list) == 0 {
		writeError(w, http.StatusNotFound, fmt.Sprintf("alert %d: %v", id, ErrNoSuchAlert), nil)
		return
	}
	writeJSON(w, http.StatusOK, list[0])
}

func (s *API) handleAckAlert(w http.ResponseWriter, r *http.Request) {
	id, ok := alertID(w, r)
	if !ok {
		return
	}
	a, err := s.AckAlert(r.Context(), id, callerName(r))
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// failEvents answers an error of the event methods: 503 when the store
// cannot be read or written (retry later), 404 and 409 for alerts that do
// not exist or are resolved, and the other errors as fail does.
func (s *API) failEvents(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, store.ErrFull), errors.Is(err, store.ErrIO):
		s.log.Warn("API call failed: store unavailable", zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, err.Error(), nil)
	case errors.Is(err, ErrNoSuchAlert):
		writeError(w, http.StatusNotFound, err.Error(), nil)
	case errors.Is(err, ErrAlertResolved):
		writeError(w, http.StatusConflict, err.Error(), nil)
	default:
		s.fail(w, r, err)
	}
}
