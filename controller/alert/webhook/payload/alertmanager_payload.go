package payload

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

// amAlert is one postableAlert of Alertmanager's API v2.
type amAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// AlertmanagerURL returns where alerts are posted for a webhook URL: the
// URL's path plus /api/v2/alerts (an Alertmanager under a route prefix
// keeps it). A URL that already ends in /api/v2/alerts is used as is,
// less a trailing slash (Alertmanager has no route for /api/v2/alerts/).
// Errors do not contain the URL.
func AlertmanagerURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("alertmanager url: %w", Redact(err))
	}
	if p := strings.TrimRight(u.Path, "/"); strings.HasSuffix(p, "/api/v2/alerts") {
		u.Path, u.RawPath = p, strings.TrimRight(u.RawPath, "/")
		return u.String(), nil
	}
	return u.JoinPath("api", "v2", "alerts").String(), nil
}

// EncodeAlertmanager returns the body of an alertmanager delivery: a JSON
// array of one postableAlert.
//
// Alertmanager identifies an alert by its label set, so labels hold only
// what never changes during an alert's life (rule, severity, the two
// ends, port, protocol, alert id); what changes (count, verdict, deciding
// rule, node, times) is in annotations. endsAt is resolveAfter from now
// while the alert is open, so Alertmanager resolves it by itself if the
// controller stops re-posting; once the alert is resolved it is the
// resolution time (a firing or refresh delivery sent late for an alert
// resolved meanwhile must not reopen it for resolveAfter).
func EncodeAlertmanager(m Message, resolveAfter time.Duration) ([]byte, error) {
	a := m.Alert
	startsAt := a.FirstSeen
	if startsAt.IsZero() {
		startsAt = a.Created
	}
	if startsAt.IsZero() {
		startsAt = m.SentAt
	}
	var endsAt time.Time
	switch {
	case m.Event == store.EventResolved || a.State == store.AlertResolved:
		endsAt = a.ResolvedAt
		if endsAt.IsZero() {
			endsAt = m.SentAt
		}
	case m.Event == store.EventFiring || m.Event == store.EventRefresh:
		endsAt = m.SentAt.Add(resolveAfter)
	default:
		return nil, fmt.Errorf("alertmanager payload: unknown event %q", m.Event)
	}
	// Alertmanager refuses an alert that ends before it starts (HTTP 400,
	// which would be retried until given up).
	if endsAt.Before(startsAt) {
		endsAt = startsAt
	}
	labels := map[string]string{
		"alertname":          a.Rule,
		"severity":           a.Severity,
		"source":             srcName(a),
		"destination":        dstName(a),
		"port":               strconv.Itoa(int(a.Port)),
		"protocol":           a.Protocol,
		"eastguard_alert_id": strconv.FormatInt(a.ID, 10),
	}
	// Alertmanager drops empty labels; dropping them here keeps what is
	// sent equal to what it stores.
	for k, v := range labels {
		if v == "" {
			delete(labels, k)
		}
	}
	annotations := map[string]string{
		"summary": fmt.Sprintf("%s: %s → %s %s %s", a.Rule, srcName(a), dstName(a), portProto(a), a.Verdict),
		"description": fmt.Sprintf("%d connection attempt(s) from %s to %s on %s, %s by %s (last seen on node %s)%s.",
			a.Count, srcName(a), dstName(a), portProto(a), a.Verdict, a.DecidingRule, a.Node, foldedNote(a)),
		"portCount":    strconv.Itoa(max(a.PortCount, 1)),
		"decidingRule": a.DecidingRule,
		"verdict":      a.Verdict,
		"count":        strconv.FormatUint(a.Count, 10),
		"firstSeen":    timestamp(a.FirstSeen),
		"lastSeen":     timestamp(a.LastSeen),
		"node":         a.Node,
	}
	if nodeAlert(a) {
		annotations["summary"] = fmt.Sprintf("%s: %s", a.Rule, nodeSummary(a))
		annotations["description"] = fmt.Sprintf("%s on node %s, %d time(s): %s (%s).", a.Destination, a.Node, a.Count, a.DecidingRule, a.Verdict)
		delete(annotations, "portCount")
		delete(labels, "port")
	}
	if a.Folded > 0 {
		annotations["folded"] = strconv.FormatUint(a.Folded, 10)
	}
	for k, v := range annotations {
		if v == "" {
			delete(annotations, k)
		}
	}
	b, err := json.Marshal([]amAlert{{
		Labels: labels, Annotations: annotations,
		StartsAt: timestamp(startsAt), EndsAt: timestamp(endsAt), GeneratorURL: m.Link,
	}})
	if err != nil {
		return nil, fmt.Errorf("alertmanager payload of alert %d: %w", a.ID, err)
	}
	return b, nil
}

// Redact drops the URL from a *url.Error, keeping what went wrong: a
// webhook URL may be its own secret (a Slack URL is), so no error about a
// delivery may carry it.
func Redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
