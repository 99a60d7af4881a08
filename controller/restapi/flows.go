package restapi

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/restapi/flowstream"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
)

// Flows for the dashboard: pages (newest first, ?before=<id>), exports
// of a whole filter (CSV or JSON lines, streamed, at most
// apiclient.MaxExportRows), and live flows (server-sent events).

// Streaming bounds: a streamed answer moves its write deadline at every
// write (the listener's WriteTimeout would cut it) by streamWriteWindow;
// a live stream ends after maxStreamLife (the browser's EventSource
// reconnects, and its credential is checked again) and says it is alive
// every heartbeat.
const (
	streamWriteWindow = 30 * time.Second
	maxStreamLife     = time.Hour
	heartbeat         = 15 * time.Second
)

// flowQuery parses the flow filters of a request into a store query; the
// label filter becomes the workloads that have the label now.
func (s *API) flowQuery(v url.Values) (apiclient.FlowFilter, store.FlowQuery, error) {
	f, err := apiclient.ParseFlowFilter(v, s.now())
	if err != nil {
		return f, store.FlowQuery{}, err
	}
	q := store.FlowQuery{
		Since: f.Since, Until: f.Until, Verdict: f.Verdict, Port: f.Port, HasPort: f.Port != 0,
		Protocol: f.Protocol, Workload: f.Workload, Addr: f.Addr, Rule: f.Rule, Node: f.Node, Limit: f.Limit, Before: f.Before,
	}
	if f.LabelKey != "" {
		q.ByWorkloads, q.Workloads = true, labelled(s.policy.Merged(), f.LabelKey, f.LabelValue)
	}
	return f, q, nil
}

// labelled names the workloads with label k=v.
func labelled(set *policy.Set, k, v string) []string {
	names := []string{}
	for _, w := range set.Workloads {
		if got, ok := w.Labels[k]; ok && got == v {
			names = append(names, w.Name)
		}
	}
	return names
}

func (s *API) handleFlows(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	f, q, err := s.flowQuery(v)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	if f.Format != "" {
		s.exportFlows(w, r, f.Format, q)
		return
	}
	out := []apiclient.StoredFlow{}
	err = s.st.ScanFlows(r.Context(), q, func(id int64, rec *flowrecord.Record) error {
		out = append(out, apiclient.StoredFlow{ID: id, Record: *rec})
		return nil
	})
	if err != nil {
		s.failEvents(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// exportFlows streams the whole filtered result, up to MaxExportRows (the
// limit parameter does not apply). An error after the first row can only
// end the download early: the status is sent.
func (s *API) exportFlows(w http.ResponseWriter, r *http.Request, format string, q store.FlowQuery) {
	q.Limit = apiclient.MaxExportRows
	rc := http.NewResponseController(w)
	name := "flows-" + s.now().UTC().Format("20060102T150405Z")
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		name += ".csv"
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
		name += ".jsonl"
	}
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.Header().Set("Cache-Control", "no-store")
	cw := csv.NewWriter(w)
	enc := json.NewEncoder(w)
	started := false
	n := 0
	err := s.st.ScanFlows(r.Context(), q, func(id int64, rec *flowrecord.Record) error {
		if !started {
			started = true
			if format == "csv" {
				if err := cw.Write(apiclient.FlowCSVHeader); err != nil {
					return err
				}
			}
		}
		n++
		if n%1000 == 1 {
			_ = rc.SetWriteDeadline(time.Now().Add(streamWriteWindow))
		}
		if format == "csv" {
			return cw.Write(apiclient.FlowCSVRow(id, rec))
		}
		return enc.Encode(apiclient.StoredFlow{ID: id, Record: *rec})
	})
	if err == nil && !started && format == "csv" {
		err = cw.Write(apiclient.FlowCSVHeader)
	}
	cw.Flush()
	if err != nil {
		if !started {
			s.failEvents(w, r, err)
			return
		}
		s.log.Warn("flow export ended early", zap.String("remote", r.RemoteAddr), zap.Int("rows", n), zap.Error(err))
	}
}

// streamRefused are the flow parameters that make no sense for live flows.
var streamRefused = []string{"before", "format", "limit", "since", "until"}

func (s *API) handleFlowStream(w http.ResponseWriter, r *http.Request) {
	v, ok := query(w, r)
	if !ok {
		return
	}
	for _, p := range streamRefused {
		if v.Has(p) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: not a filter of live flows (they are the flows stored from now on)", p), nil)
			return
		}
	}
	_, q, err := s.flowQuery(v)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	sub, err := s.stream.Subscribe(flowstream.Matcher(q))
	if errors.Is(err, flowstream.ErrTooMany) {
		writeError(w, http.StatusServiceUnavailable, err.Error()+"; retry later", nil)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.stream.Unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteWindow))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send([]byte(": live flows\n\n")) {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	end := time.NewTimer(maxStreamLife)
	defer end.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-end.C:
			return
		case <-sub.Gone:
			send([]byte("event: dropped\ndata: {\"error\":\"the stream fell behind; reload the page of flows\"}\n\n"))
			return
		case <-tick.C:
			// The credential may have been revoked since: check it again.
			if !s.stillAuthorized(r) || !send([]byte(": heartbeat\n\n")) {
				return
			}
		case rec := <-sub.C:
			b, err := json.Marshal(&rec)
			if err != nil {
				continue
			}
			if !send(append(append([]byte("event: flow\ndata: "), b...), '\n', '\n')) {
				return
			}
		}
	}
}

// stillAuthorized checks a long request's credential again.
func (s *API) stillAuthorized(r *http.Request) bool {
	if bearer, ok := cutBearer(r); ok {
		_, err := s.authenticate(r.Context(), bearer)
		return err == nil
	}
	_, _, err := s.sessionOf(r)
	return err == nil
}
