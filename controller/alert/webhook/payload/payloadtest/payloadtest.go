// Package payloadtest holds the checks tests make of what a delivery
// sends: a body against the documented json schema, a Slack message's
// shape, an Alertmanager body against its API v2; and the alert the
// payload and delivery tests send. Tests only: no package but a test
// imports it. It imports controller/store and test-only dependencies
// (Alertmanager's models), never the webhook packages it checks, so the
// checks stay independent of the code under test.
package payloadtest

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-openapi/strfmt"
	amalert "github.com/prometheus/alertmanager/alert"
	"github.com/prometheus/alertmanager/api/v2/models"
	"github.com/prometheus/common/model"

	"github.com/eastguard/eastguard/controller/store"
)

// T0 is the alerts' clock in payload tests.
var T0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// Dashboard is the --external-url of payload tests.
const Dashboard = "https://eastguard.example.com/"

// SSHAlert is an open alert from an unmanaged address to a managed
// workload.
func SSHAlert() store.Alert {
	return store.Alert{
		ID: 42, Rule: "unexpected-ssh", Severity: "critical", State: store.AlertOpen, Count: 3,
		Key:    "unexpected-ssh|203.0.113.7|web-1|22/TCP",
		Source: "203.0.113.7", Destination: "web-1",
		SrcAddr:     netip.MustParseAddr("203.0.113.7"),
		DstWorkload: "web-1", DstAddr: netip.MustParseAddr("10.10.0.11"),
		DstLabels: map[string]string{"role": "web", "env": "prod"},
		Port:      22, Protocol: "TCP", Verdict: "denied", DecidingRule: "default-deny", Node: "node-a",
		FirstSeen: T0, LastSeen: T0.Add(90*time.Second + 500*time.Millisecond),
		Window: 5 * time.Minute, Notify: []string{"security-team"}, Created: T0.Add(time.Second),
	}
}

// The documented json schema: every field name and its JSON type.
var (
	jsonTopFields = map[string]string{
		"version": "string", "event": "string", "deliveryId": "integer", "sentAt": "time", "alert": "object",
	}
	jsonAlertFields = map[string]string{
		"id": "integer", "rule": "string", "severity": "string", "state": "string", "count": "integer",
		"source": "endpoint", "destination": "endpoint", "port": "integer", "ports": "integers",
		"portCount": "integer", "folded": "integer", "protocol": "string",
		"verdict": "string", "decidingRule": "string", "node": "string", "firstSeen": "time", "lastSeen": "time",
		"url": "string",
	}
	jsonEndpointFields = map[string]string{
		"name": "string", "workload": "string", "address": "string", "labels": "labels",
	}
)

// CheckJSON decodes a json delivery's body and checks it against
// the documented schema: exactly the documented fields, each of its type
// (labels an object of strings, never null; times RFC 3339). It returns
// the decoded body.
func CheckJSON(t testing.TB, body []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var top map[string]any
	if err := dec.Decode(&top); err != nil {
		t.Fatalf("json payload %s: %v", body, err)
	}
	checkFields(t, "", top, jsonTopFields)
	if v, _ := top["version"].(string); v != "eastguard.dev/v1" {
		t.Errorf("version = %v", top["version"])
	}
	if e, _ := top["event"].(string); e != store.EventFiring && e != store.EventResolved {
		t.Errorf("event = %v, want firing or resolved", top["event"])
	}
	a, _ := top["alert"].(map[string]any)
	checkFields(t, "alert.", a, jsonAlertFields)
	for _, end := range []string{"source", "destination"} {
		e, _ := a[end].(map[string]any)
		checkFields(t, "alert."+end+".", e, jsonEndpointFields)
	}
	return top
}

func checkFields(t testing.TB, prefix string, obj map[string]any, want map[string]string) {
	t.Helper()
	if obj == nil {
		t.Fatalf("%s is not an object", strings.TrimSuffix(prefix, "."))
	}
	if got, wantKeys := slices.Sorted(maps.Keys(obj)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, wantKeys) {
		t.Errorf("%sfields %v, want exactly %v", prefix, got, wantKeys)
	}
	for name, typ := range want {
		v, ok := obj[name]
		if !ok {
			continue
		}
		field := prefix + name
		switch typ {
		case "string":
			if _, ok := v.(string); !ok {
				t.Errorf("%s = %#v, want a string", field, v)
			}
		case "time":
			s, ok := v.(string)
			if _, err := time.Parse(time.RFC3339Nano, s); !ok || err != nil || !strings.HasSuffix(s, "Z") {
				t.Errorf("%s = %#v, want an RFC 3339 UTC time", field, v)
			}
		case "integer":
			if n, ok := v.(json.Number); !ok || !digits.MatchString(string(n)) {
				t.Errorf("%s = %#v, want a non-negative integer", field, v)
			}
		case "integers":
			l, ok := v.([]any)
			if !ok || len(l) == 0 {
				t.Errorf("%s = %#v, want a non-empty list of integers", field, v)
			}
			for _, e := range l {
				if n, ok := e.(json.Number); !ok || !digits.MatchString(string(n)) {
					t.Errorf("%s has %#v, want a non-negative integer", field, e)
				}
			}
		case "object", "endpoint":
			if _, ok := v.(map[string]any); !ok {
				t.Errorf("%s = %#v, want an object", field, v)
			}
		case "labels":
			m, ok := v.(map[string]any)
			if !ok {
				t.Errorf("%s = %#v, want an object (never null)", field, v)
			}
			for k, lv := range m {
				if _, ok := lv.(string); !ok {
					t.Errorf("%s[%s] = %#v, want a string", field, k, lv)
				}
			}
		}
	}
}

var digits = regexp.MustCompile(`^(0|[1-9][0-9]*)$`)

// Get walks a decoded payload: Get(p, "alert", "source", "name").
func Get(v any, path ...string) any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	if n, ok := v.(json.Number); ok {
		return string(n)
	}
	return v
}

// SlackBody decodes a slack delivery and checks its shape: {text,
// blocks: [{type: section, text: {type: mrkdwn, text}}...]}. It returns
// the fallback text and the sections' texts.
func SlackBody(t testing.TB, body []byte) (string, []string) {
	t.Helper()
	var msg map[string]any
	if err := json.Unmarshal(body, &msg); err != nil {
		t.Fatalf("slack payload %s: %v", body, err)
	}
	if keys := slices.Sorted(maps.Keys(msg)); !slices.Equal(keys, []string{"blocks", "text"}) {
		t.Errorf("slack message fields %v, want blocks and text", keys)
	}
	text, ok := msg["text"].(string)
	if !ok || text == "" {
		t.Errorf("text = %#v, want the fallback text", msg["text"])
	}
	blocks, _ := msg["blocks"].([]any)
	if len(blocks) == 0 {
		t.Fatalf("blocks = %#v, want sections", msg["blocks"])
	}
	var sections []string
	for i, b := range blocks {
		bm, _ := b.(map[string]any)
		tm, _ := bm["text"].(map[string]any)
		s, ok := tm["text"].(string)
		if bm["type"] != "section" || tm["type"] != "mrkdwn" || !ok || len(bm) != 2 || len(tm) != 2 {
			t.Errorf("blocks[%d] = %#v, want {type: section, text: {type: mrkdwn, text}}", i, b)
		}
		sections = append(sections, s)
	}
	return text, sections
}

// CheckAlertmanager validates a body against Alertmanager's API v2:
// the OpenAPI schema of POST /api/v2/alerts, then the checks Alertmanager
// makes before accepting an alert (alert.Validate: start time set, not
// after the end, label names and values valid).
func CheckAlertmanager(t testing.TB, body []byte) models.PostableAlerts {
	t.Helper()
	var alerts models.PostableAlerts
	if err := json.Unmarshal(body, &alerts); err != nil {
		t.Fatalf("alertmanager payload %s: %v", body, err)
	}
	if err := alerts.Validate(strfmt.Default); err != nil {
		t.Fatalf("alertmanager payload %s does not validate against the API v2 schema: %v", body, err)
	}
	for i, a := range alerts {
		ma := model.Alert{
			Labels: model.LabelSet{}, Annotations: model.LabelSet{},
			StartsAt: time.Time(a.StartsAt), EndsAt: time.Time(a.EndsAt), GeneratorURL: string(a.GeneratorURL),
		}
		for k, v := range a.Labels {
			ma.Labels[model.LabelName(k)] = model.LabelValue(v)
		}
		for k, v := range a.Annotations {
			ma.Annotations[model.LabelName(k)] = model.LabelValue(v)
		}
		if err := amalert.Validate(&ma); err != nil {
			t.Errorf("alerts[%d] refused by Alertmanager: %v", i, err)
		}
	}
	return alerts
}
