package online

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/store"
)

// The keys of an alert scripts rely on (docs/ARCHITECTURE.md).
var alertKeys = []string{"id", "rule", "severity", "state", "count", "source", "destination", "port", "protocol", "firstSeen", "lastSeen"}

// insertAlerts stores an open, an acknowledged and a resolved alert, seen
// last in that order (newest first).
func insertAlerts(h *controllertest.Controller) (open, acked, resolved store.Alert) {
	h.T.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	alert := func(rule, state, src string, ago time.Duration) store.Alert {
		return store.Alert{Rule: rule, Severity: "critical", Key: rule + "|" + src + "|db-1|22|TCP", State: state, Count: 3,
			Source: src, Destination: "db-1", DstWorkload: "db-1", SrcAddr: netip.MustParseAddr(src),
			DstAddr: netip.MustParseAddr("10.0.0.2"), Port: 22, Protocol: "TCP", Verdict: "denied",
			DecidingRule: "default-deny", Node: "node-b", FirstSeen: now.Add(-ago - time.Minute), LastSeen: now.Add(-ago),
			Window: 5 * time.Minute, Created: now.Add(-ago - time.Minute)}
	}
	open = alert("ssh-attempts", store.AlertOpen, "10.9.9.1", time.Minute)
	acked = alert("ssh-attempts", store.AlertAcknowledged, "10.9.9.2", 10*time.Minute)
	acked.AcknowledgedAt = now.Add(-5 * time.Minute)
	resolved = alert("ssh-attempts", store.AlertResolved, "10.9.9.3", 2*time.Hour)
	resolved.ResolvedAt, resolved.ResolvedBy = now.Add(-time.Hour), "window"
	h.InsertAlerts(&resolved, &acked, &open)
	return open, acked, resolved
}

// alertIDs runs egctl alerts ... -o json and returns the ids listed.
func alertIDs(t *testing.T, args ...string) []int64 {
	t.Helper()
	code, out, errs := egctl(t, append(append([]string{"alerts"}, args...), "-o", "json")...)
	var list []apiclient.Alert
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || list == nil {
		t.Fatalf("alerts %q -o json: exit %d\n%s\n%s", args, code, out, errs)
	}
	ids := []int64{}
	for _, a := range list {
		ids = append(ids, a.ID)
	}
	return ids
}

func TestOnlineAlerts(t *testing.T) {
	st := eventController(t)
	if code, out, _ := egctl(t, "alerts", "-o", "json"); code != exitOK || out != "[]\n" {
		t.Errorf("alerts -o json with none: exit %d, %q", code, out)
	}
	open, acked, resolved := insertAlerts(st)

	code, out, errs := egctl(t, "alerts", "--open", "-o", "json")
	var raw []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &raw) != nil || len(raw) != 2 {
		t.Fatalf("alerts --open -o json: exit %d\n%s\n%s", code, out, errs)
	}
	for _, k := range alertKeys {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("alerts -o json: no key %q in %v", k, raw[0])
		}
	}
	if raw[0]["id"] != float64(open.ID) || raw[1]["id"] != float64(acked.ID) || raw[0]["state"] != "open" || raw[1]["state"] != "acknowledged" {
		t.Errorf("alerts --open: %v", raw)
	}
	if ids := alertIDs(t, "--state", "resolved,open"); !slices.Equal(ids, []int64{open.ID, resolved.ID}) {
		t.Errorf("--state resolved,open: %v", ids)
	}
	if ids := alertIDs(t, "--since", "1h", "--rule", "ssh-attempts", "--limit", "1"); !slices.Equal(ids, []int64{open.ID}) {
		t.Errorf("--since 1h --limit 1: %v", ids)
	}

	code, out, _ = egctl(t, "alerts")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID STATE SEVERITY RULE SOURCE DESTINATION PORT COUNT FIRST-SEEN LAST-SEEN" {
		t.Fatalf("alerts: exit %d\n%s", code, out)
	}
	if f := strings.Fields(lines[1]); len(f) != 12 || !slices.Equal(f[:8], []string{fmt.Sprint(open.ID), "open", "critical", "ssh-attempts", "10.9.9.1", "db-1", "22/TCP", "3"}) {
		t.Errorf("first row %q", lines[1])
	}

	// ack: open -> acknowledged, still live; again changes nothing.
	code, out, errs = egctl(t, "alert", "ack", fmt.Sprint(open.ID))
	if code != exitOK || !strings.HasPrefix(out, fmt.Sprintf("alert %d acknowledged at ", open.ID)) {
		t.Errorf("alert ack: exit %d, %s %s", code, out, errs)
	}
	if ids := alertIDs(t, "--state", "open"); len(ids) != 0 {
		t.Errorf("open alerts after ack: %v", ids)
	}
	if ids := alertIDs(t, "--open"); !slices.Equal(ids, []int64{open.ID, acked.ID}) {
		t.Errorf("live alerts after ack: %v", ids)
	}
	if code, again, _ := egctl(t, "alert", "ack", fmt.Sprint(open.ID)); code != exitOK || again != out {
		t.Errorf("alert ack again: exit %d, %q, want %q", code, again, out)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"alert", "ack", fmt.Sprint(resolved.ID)}, exitBadInput, "a resolved alert cannot be acknowledged"},
		{[]string{"alert", "ack", fmt.Sprint(resolved.ID)}, exitBadInput, "(HTTP 409)"},
		{[]string{"alert", "ack", "999"}, exitBadInput, "egctl: alert 999: no such alert (HTTP 404)"},
		{[]string{"alert", "ack", "abc"}, exitBadInput, `"abc" is not an alert id`},
		{[]string{"alert", "ack", "0"}, exitBadInput, `"0" is not an alert id`},
		{[]string{"alert", "ack"}, exitBadInput, "want: egctl alert ack ID"},
		{[]string{"alert", "close", "1"}, exitBadInput, "want: egctl alert ack ID"},
		{[]string{"alert", "ack", "1", "--token", "junk"}, exitRemote, "HTTP 401"},
		{[]string{"alerts", "--open", "--state", "resolved"}, exitBadInput, "give --open or --state, not both"},
		{[]string{"alerts", "--state", "closed"}, exitBadInput, `egctl alerts: --state: "closed" is not one of open, acknowledged, resolved`},
		{[]string{"alerts", "--since", "yesterday"}, exitBadInput, `egctl alerts: --since: "yesterday" is neither`},
		{[]string{"alerts", "--limit", "0"}, exitBadInput, `egctl alerts: --limit: "0" is not a number from 1 to 10000`},
		{[]string{"alerts", "42"}, exitBadInput, "unexpected arguments"},
	} {
		if code, _, errs := egctl(t, c.args...); code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%q: exit %d, stderr %s\nwant exit %d with %q", c.args, code, errs, c.code, c.want)
		}
	}
	if ids := alertIDs(t, "--state", "resolved"); !slices.Equal(ids, []int64{resolved.ID}) {
		t.Errorf("resolved alerts after refused acks: %v", ids)
	}
}
