package payload_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
	"github.com/eastguard/eastguard/controller/alert/webhook/payload/payloadtest"
	"github.com/eastguard/eastguard/controller/store"
)

func message(event string, a store.Alert) payload.Message {
	return payload.Message{DeliveryID: 9007199254740993, Event: event, Alert: a, SentAt: payloadtest.T0.Add(2 * time.Minute),
		Link: payload.AlertLink(payloadtest.Dashboard, a.ID)}
}

func TestJSONPayload(t *testing.T) {
	v6 := payloadtest.SSHAlert()
	v6.SrcAddr, v6.Source = netip.MustParseAddr("2001:db8::7"), "2001:db8::7"
	managed := payloadtest.SSHAlert()
	managed.SrcWorkload, managed.Source, managed.SrcAddr = "client", "client", netip.MustParseAddr("10.10.0.30")
	managed.SrcLabels = map[string]string{"role": "client"}
	resolved := payloadtest.SSHAlert()
	resolved.State, resolved.ResolvedAt, resolved.ResolvedBy = store.AlertResolved, payloadtest.T0.Add(7*time.Minute), "window"
	scanned := payloadtest.SSHAlert()
	scanned.Port, scanned.Ports, scanned.PortCount = 1, []uint16{1, 2, 3}, 2000
	summary := payloadtest.SSHAlert()
	summary.Source, summary.Destination, summary.Folded = "*", "*", 12
	summary.SrcAddr, summary.DstAddr, summary.SrcWorkload, summary.DstWorkload = netip.Addr{}, netip.Addr{}, "", ""
	summary.DstLabels = nil
	noLink := message(store.EventFiring, payloadtest.SSHAlert())
	noLink.Link = ""
	otherZone := message(store.EventFiring, payloadtest.SSHAlert())
	otherZone.SentAt = otherZone.SentAt.In(time.FixedZone("UTC+9", 9*3600))

	tests := []struct {
		name string
		msg  payload.Message
		want map[string]any // path "a.b.c" -> value (strings; numbers as their text)
	}{
		{"unmanaged source, managed destination", message(store.EventFiring, payloadtest.SSHAlert()), map[string]any{
			"version": "eastguard.dev/v1", "event": "firing", "deliveryId": "9007199254740993",
			"sentAt":   "2026-05-01T12:02:00Z",
			"alert.id": "42", "alert.rule": "unexpected-ssh", "alert.severity": "critical", "alert.state": "open",
			"alert.count": "3", "alert.port": "22", "alert.protocol": "TCP", "alert.verdict": "denied",
			"alert.decidingRule": "default-deny", "alert.node": "node-a",
			"alert.firstSeen": "2026-05-01T12:00:00Z", "alert.lastSeen": "2026-05-01T12:01:30.5Z",
			"alert.url":         "https://eastguard.example.com/#/alerts/42",
			"alert.source.name": "203.0.113.7", "alert.source.workload": "", "alert.source.address": "203.0.113.7",
			"alert.source.labels":    map[string]any{},
			"alert.destination.name": "web-1", "alert.destination.workload": "web-1", "alert.destination.address": "10.10.0.11",
			"alert.destination.labels": map[string]any{"role": "web", "env": "prod"},
		}},
		{"IPv6 unmanaged source", message(store.EventFiring, v6), map[string]any{
			"alert.source.name": "2001:db8::7", "alert.source.workload": "", "alert.source.address": "2001:db8::7",
			"alert.source.labels": map[string]any{},
		}},
		{"both managed", message(store.EventFiring, managed), map[string]any{
			"alert.source.name": "client", "alert.source.workload": "client", "alert.source.address": "10.10.0.30",
			"alert.source.labels": map[string]any{"role": "client"},
		}},
		{"resolved", message(store.EventResolved, resolved), map[string]any{
			"event": "resolved", "alert.state": "resolved",
		}},
		{"no dashboard", noLink, map[string]any{"alert.url": ""}},
		{"one port", message(store.EventFiring, payloadtest.SSHAlert()), map[string]any{
			"alert.port": "22", "alert.ports": []any{22}, "alert.portCount": "1", "alert.folded": "0",
		}},
		{"a scan", message(store.EventFiring, scanned), map[string]any{
			"alert.port": "1", "alert.ports": []any{1, 2, 3}, "alert.portCount": "2000", "alert.folded": "0",
		}},
		{"a summary alert", message(store.EventFiring, summary), map[string]any{
			"alert.source.name": "*", "alert.source.address": "", "alert.destination.name": "*", "alert.folded": "12",
		}},
		{"times in UTC", otherZone, map[string]any{"sentAt": "2026-05-01T12:02:00Z"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, err := payload.EncodeJSON(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(body, []byte("null")) {
				t.Errorf("payload contains null: %s", body)
			}
			p := payloadtest.CheckJSON(t, body)
			for path, want := range tc.want {
				got := payloadtest.Get(p, strings.Split(path, ".")...)
				gotJSON, _ := json.Marshal(got)
				wantJSON, _ := json.Marshal(want)
				if !bytes.Equal(gotJSON, wantJSON) {
					t.Errorf("%s = %s, want %s", path, gotJSON, wantJSON)
				}
			}
			// Go receivers may decode into Payload.
			var typed payload.Payload
			if err := json.Unmarshal(body, &typed); err != nil || typed.DeliveryID != tc.msg.DeliveryID || typed.Alert.ID != tc.msg.Alert.ID {
				t.Errorf("decode into Payload: %+v, %v", typed, err)
			}
		})
	}
	for _, ev := range []string{store.EventRefresh, "bogus"} {
		if _, err := payload.EncodeJSON(message(ev, payloadtest.SSHAlert())); err == nil {
			t.Errorf("EncodeJSON of a %q event: no error", ev)
		}
	}
}

func TestSlackPayload(t *testing.T) {
	const evil = "<!channel> <http://evil|x> & co"
	hostile := payloadtest.SSHAlert()
	hostile.SrcWorkload, hostile.Source = evil, evil
	hostile.DstWorkload, hostile.Destination = "<@U123>", "<@U123>"
	hostile.DecidingRule, hostile.Node = "shop/<!here>", "node-<b>"
	hostile.Rule = "ssh&<rule>"

	long := payloadtest.SSHAlert()
	long.SrcWorkload, long.Source = strings.Repeat("a", 5000), strings.Repeat("a", 5000)
	wide := payloadtest.SSHAlert()
	wide.DstWorkload, wide.Destination = strings.Repeat("é", 4000), strings.Repeat("é", 4000)
	wide.Rule = strings.Repeat("ü", 4000)
	resolved := payloadtest.SSHAlert()
	resolved.State, resolved.ResolvedAt = store.AlertResolved, payloadtest.T0.Add(7*time.Minute)

	// The only links and mentions a section may hold are the ones the
	// format writes: dates and the payloadtest.Dashboard link.
	allowed := regexp.MustCompile(`^<(!date\^\d+\^\{date_short_pretty\} \{time_secs\}\|[0-9TZ:.-]+|https://eastguard\.example\.com/#/alerts/\d+\|Open alert \d+ in Eastguard)>$`)
	tag := regexp.MustCompile(`<[^>]*>?`)

	tests := []struct {
		name     string
		msg      payload.Message
		contains []string // in some section
		absent   []string // in no section and not in text
	}{
		{"plain", message(store.EventFiring, payloadtest.SSHAlert()),
			[]string{":red_circle: *CRITICAL* unexpected-ssh", "*203.0.113.7* → *web-1* `22/TCP`", "Verdict: *denied* by `default-deny` on node node-a",
				"Count: 3", "<https://eastguard.example.com/#/alerts/42|Open alert 42 in Eastguard>"}, nil},
		{"attacker-controlled names are escaped", message(store.EventFiring, hostile),
			[]string{"&lt;!channel&gt; &lt;http://evil|x&gt; &amp; co", "&lt;@U123&gt;", "shop/&lt;!here&gt;", "node-&lt;b&gt;", "ssh&amp;&lt;rule&gt;"},
			[]string{"<!channel>", "<http://evil", "<@U123>", "<!here>", "<b>", "& co", "<rule>"}},
		{"resolved", message(store.EventResolved, resolved), []string{":white_check_mark: *RESOLVED* unexpected-ssh (critical)", ", resolved <!date^"}, nil},
		{"long name", message(store.EventFiring, long), []string{"aaaa"}, nil},
		{"long multibyte names", message(store.EventFiring, wide), []string{"éééé", "üüüü"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, err := payload.EncodeSlack(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			text, sections := payloadtest.SlackBody(t, body)
			all := strings.Join(sections, "\n")
			for _, s := range tc.contains {
				if !strings.Contains(all, s) {
					t.Errorf("sections do not contain %q:\n%s", s, all)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(all, s) || strings.Contains(text, s) {
					t.Errorf("%q not escaped:\ntext: %s\nsections: %s", s, text, all)
				}
			}
			if strings.Contains(text, "<") {
				t.Errorf("fallback text holds a '<': %s", text)
			}
			for i, s := range sections {
				if n := utf8.RuneCountInString(s); n > 3000 {
					t.Errorf("section %d is %d characters, over Slack's 3000", i, n)
				}
				if !utf8.ValidString(s) {
					t.Errorf("section %d is not valid UTF-8", i)
				}
				for _, m := range tag.FindAllString(s, -1) {
					if !allowed.MatchString(m) {
						t.Errorf("section %d holds %q, not a date or the payloadtest.Dashboard link", i, m)
					}
				}
			}
		})
	}
	if _, err := payload.EncodeSlack(message(store.EventRefresh, payloadtest.SSHAlert())); err == nil {
		t.Error("EncodeSlack of a refresh: no error")
	}
}

func TestAlertmanagerPayload(t *testing.T) {
	const resolveAfter = 5 * time.Minute
	now := time.Now().UTC().Truncate(time.Millisecond)
	open := payloadtest.SSHAlert()
	open.FirstSeen, open.LastSeen = now.Add(-time.Minute), now.Add(-time.Second)
	resolved := open
	resolved.State, resolved.ResolvedAt = store.AlertResolved, now.Add(-10*time.Second)
	resolvedNoTime := resolved
	resolvedNoTime.ResolvedAt = time.Time{}
	skewed := resolved // resolved before its first flow (agent clock ahead)
	skewed.ResolvedAt = open.FirstSeen.Add(-time.Hour)
	noFirstSeen := open
	noFirstSeen.FirstSeen = time.Time{}
	managedSrc := open
	managedSrc.SrcWorkload, managedSrc.Source = "client", "client"
	icmp := open
	icmp.Port, icmp.Protocol = 0, "ICMP"

	msg := func(event string, a store.Alert) payload.Message {
		m := message(event, a)
		m.SentAt = now
		return m
	}
	tests := []struct {
		name           string
		msg            payload.Message
		startsAt       time.Time
		endsAt         time.Time
		src, dst, port string
	}{
		{"firing", msg(store.EventFiring, open), open.FirstSeen, now.Add(resolveAfter), "203.0.113.7", "web-1", "22"},
		{"refresh", msg(store.EventRefresh, open), open.FirstSeen, now.Add(resolveAfter), "203.0.113.7", "web-1", "22"},
		{"resolved", msg(store.EventResolved, resolved), open.FirstSeen, resolved.ResolvedAt, "203.0.113.7", "web-1", "22"},
		{"firing sent after the alert resolved", msg(store.EventFiring, resolved), open.FirstSeen, resolved.ResolvedAt, "203.0.113.7", "web-1", "22"},
		{"refresh sent after the alert resolved", msg(store.EventRefresh, resolved), open.FirstSeen, resolved.ResolvedAt, "203.0.113.7", "web-1", "22"},
		{"resolved without a time", msg(store.EventResolved, resolvedNoTime), open.FirstSeen, now, "203.0.113.7", "web-1", "22"},
		{"resolved before the first flow", msg(store.EventResolved, skewed), open.FirstSeen, open.FirstSeen, "203.0.113.7", "web-1", "22"},
		{"no first seen: created", msg(store.EventFiring, noFirstSeen), open.Created, now.Add(resolveAfter), "203.0.113.7", "web-1", "22"},
		{"managed source", msg(store.EventFiring, managedSrc), open.FirstSeen, now.Add(resolveAfter), "client", "web-1", "22"},
		{"ICMP", msg(store.EventFiring, icmp), open.FirstSeen, now.Add(resolveAfter), "203.0.113.7", "web-1", "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body, err := payload.EncodeAlertmanager(tc.msg, resolveAfter)
			if err != nil {
				t.Fatal(err)
			}
			alerts := payloadtest.CheckAlertmanager(t, body)
			if len(alerts) != 1 {
				t.Fatalf("%d alerts posted, want 1", len(alerts))
			}
			a := alerts[0]
			wantLabels := map[string]string{
				"alertname": "unexpected-ssh", "severity": "critical", "source": tc.src, "destination": tc.dst,
				"port": tc.port, "protocol": tc.msg.Alert.Protocol, "eastguard_alert_id": "42",
			}
			if !maps.Equal(map[string]string(a.Labels), wantLabels) {
				t.Errorf("labels %v, want %v", a.Labels, wantLabels)
			}
			for _, k := range []string{"summary", "description", "verdict", "decidingRule", "count", "node", "firstSeen", "lastSeen"} {
				if a.Annotations[k] == "" && !(k == "firstSeen" && tc.msg.Alert.FirstSeen.IsZero()) {
					t.Errorf("annotation %s missing: %v", k, a.Annotations)
				}
			}
			starts, ends := time.Time(a.StartsAt), time.Time(a.EndsAt)
			if !starts.Equal(tc.startsAt) || !ends.Equal(tc.endsAt) {
				t.Errorf("startsAt %v endsAt %v, want %v and %v", starts, ends, tc.startsAt, tc.endsAt)
			}
			if ends.Before(starts) {
				t.Errorf("endsAt %v before startsAt %v", ends, starts)
			}
			live := tc.msg.Alert.State != store.AlertResolved && tc.msg.Event != store.EventResolved
			if live && !ends.After(time.Now()) {
				t.Errorf("open alert's endsAt %v is not in the future: Alertmanager would resolve it", ends)
			}
			if string(a.GeneratorURL) != "https://eastguard.example.com/#/alerts/42" {
				t.Errorf("generatorURL %q", a.GeneratorURL)
			}
		})
	}
	if _, err := payload.EncodeAlertmanager(msg("bogus", open), resolveAfter); err == nil {
		t.Error("unknown event: no error")
	}
}

func TestAlertmanagerURL(t *testing.T) {
	tests := []struct{ base, want string }{
		{"http://am:9093", "http://am:9093/api/v2/alerts"},
		{"http://am:9093/", "http://am:9093/api/v2/alerts"},
		{"https://example.com/alertmanager", "https://example.com/alertmanager/api/v2/alerts"},
		{"https://example.com/alertmanager/", "https://example.com/alertmanager/api/v2/alerts"},
		{"https://example.com/a/b", "https://example.com/a/b/api/v2/alerts"},
		{"http://am:9093/api/v2/alerts", "http://am:9093/api/v2/alerts"},
		{"http://am:9093/api/v2/alerts/", "http://am:9093/api/v2/alerts"},
		{"https://example.com/alertmanager/api/v2/alerts", "https://example.com/alertmanager/api/v2/alerts"},
		{"https://user:pw@example.com/am?tenant=a", "https://user:pw@example.com/am/api/v2/alerts?tenant=a"},
	}
	for _, tc := range tests {
		got, err := payload.AlertmanagerURL(tc.base)
		if err != nil || got != tc.want {
			t.Errorf("AlertmanagerURL(%q) = %q, %v; want %q", tc.base, got, err, tc.want)
		}
	}
	const bad = "http://am:9093/s3cr3t-token/%zz"
	if _, err := payload.AlertmanagerURL(bad); err == nil || strings.Contains(err.Error(), "s3cr3t-token") {
		t.Errorf("AlertmanagerURL(%q) = %v, want an error without the URL", bad, err)
	}
}

// tamperedAlert is a built-in datapath-tampered alert as the engine
// stores it: the node as source, the drift kind as destination, no port
// or protocol.
func tamperedAlert() store.Alert {
	return store.Alert{ID: 7, Rule: "datapath-tampered", Severity: "critical", State: store.AlertOpen, Count: 3,
		Source: "node-a", Destination: "link-detached", Node: "node-a", Verdict: "repaired",
		DecidingRule: "tcx-7-ingress (eth0): our tcx link is no longer attached to the interface",
		FirstSeen:    payloadtest.T0, LastSeen: payloadtest.T0.Add(time.Minute), Created: payloadtest.T0}
}

// TestNodeAlertPayloads: node alerts read as what happened on which node,
// not as a flow "node-a -> link-detached 0/": in Slack's text and
// section, and in Alertmanager's summary and description (no port label
// or port count); the JSON payload carries the fields as stored.
func TestNodeAlertPayloads(t *testing.T) {
	a := tamperedAlert()
	want := "node node-a: link-detached, repaired: tcx-7-ingress (eth0): our tcx link is no longer attached to the interface"
	b, err := payload.EncodeSlack(message(store.EventFiring, a))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, want) || strings.Contains(s, "0/") {
		t.Errorf("slack payload %s", s)
	}
	b, err = payload.EncodeAlertmanager(message(store.EventFiring, a), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var am []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(b, &am); err != nil {
		t.Fatal(err)
	}
	if len(am) != 1 || am[0].Annotations["summary"] != "datapath-tampered: "+want || am[0].Labels["port"] != "" ||
		am[0].Annotations["portCount"] != "" || am[0].Labels["severity"] != "critical" || am[0].Labels["source"] != "node-a" {
		t.Errorf("alertmanager payload %s", b)
	}
	b, err = payload.EncodeJSON(message(store.EventFiring, a))
	if err != nil {
		t.Fatal(err)
	}
	var p payload.Payload
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if p.Alert.Rule != "datapath-tampered" || p.Alert.Source.Name != "node-a" || p.Alert.Destination.Name != "link-detached" ||
		p.Alert.Verdict != "repaired" || p.Alert.Node != "node-a" || p.Alert.Count != 3 {
		t.Errorf("json payload %s", b)
	}
}
