package restapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// eventAPI is a controller's HTTP API with flows and alerts put straight
// into its store.
type eventAPI struct {
	h     *controllertest.Controller
	url   string
	token string
	now   time.Time // when the events were made; they are minutes to hours before it
}

func newEventAPI(t *testing.T) *eventAPI {
	t.Helper()
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	return &eventAPI{h: h, url: cfg.Server, token: cfg.Token, now: h.Clock.Now()}
}

// call sends a request with the admin credential (token "" sends none)
// and returns the status and body.
func (e *eventAPI) call(t *testing.T, method, path, token string) (int, []byte) {
	t.Helper()
	return controllertest.Call(t, method, e.url+path, token, "")
}

// flow makes a flow record told apart from the others by its source port.
func flow(at time.Time, srcPort uint16, node, proto string, src, dst string, dstPort uint16, v ruleset.Verdict, rule string) flowrecord.Record {
	r := flowrecord.Record{
		Time: at.UTC(), Node: node, Direction: ruleset.Ingress, Protocol: proto, SrcPort: srcPort, DstPort: dstPort,
		Verdict: v, Rule: rule, Packets: 3, Bytes: 180, FirstSeen: at.Add(-time.Second).UTC(), LastSeen: at.UTC(),
	}
	workloads := map[string]string{"10.0.0.1": "web-1", "10.0.0.2": "db-1", "10.0.0.3": "dns-1"}
	r.SrcAddr, r.DstAddr = netip.MustParseAddr(src), netip.MustParseAddr(dst)
	r.SrcWorkload, r.DstWorkload = workloads[src], workloads[dst]
	r.SrcIdentity, r.DstIdentity = 100, 200
	return r
}

func (e *eventAPI) insertFlows(t *testing.T) {
	t.Helper()
	icmp := flow(e.now.Add(-30*time.Minute), 5, "node-a", "ICMP", "10.0.0.1", "10.0.0.2", 0, ruleset.VerdictAllowed, "shop/ping")
	icmpType, icmpCode := uint8(8), uint8(0)
	icmp.ICMPType, icmp.ICMPCode = &icmpType, &icmpCode
	recs := []flowrecord.Record{
		flow(e.now.Add(-50*time.Minute), 1, "node-a", "TCP", "10.0.0.1", "10.0.0.2", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		flow(e.now.Add(-5*time.Minute), 2, "node-b", "TCP", "10.9.9.9", "10.0.0.2", 22, ruleset.VerdictDenied, "default-deny"),
		flow(e.now.Add(-2*time.Minute), 3, "node-a", "UDP", "10.0.0.1", "10.0.0.3", 53, ruleset.VerdictAllowed, "shop/dns"),
		flow(e.now.Add(-time.Minute), 4, "node-b", "TCP", "10.0.0.1", "10.0.0.2", 22, ruleset.VerdictWouldDeny, "shop/no-ssh"),
		icmp,
	}
	e.h.InsertFlows(recs...)
}

// TestFlowsAPI: every filter selects what it says, newest first, and the
// records have the keys docs/ARCHITECTURE.md lists.
func TestFlowsAPI(t *testing.T) {
	e := newEventAPI(t)
	if code, body := e.call(t, "GET", "/api/v1/flows", e.token); code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("no flows: %d %s, want an empty array", code, body)
	}
	e.insertFlows(t)
	rfc := func(d time.Duration) string { return url.QueryEscape(e.now.Add(d).Format(time.RFC3339Nano)) }
	cases := []struct {
		query string
		want  []uint16 // source ports
	}{
		{"", []uint16{4, 3, 2, 5, 1}},
		{"verdict=denied", []uint16{2}},
		{"verdict=would-deny", []uint16{4}},
		{"port=22", []uint16{4, 2}},
		{"protocol=udp", []uint16{3}},
		{"protocol=ICMP", []uint16{5}},
		{"protocol=proto-6", []uint16{4, 2, 1}},
		{"workload=db-1", []uint16{4, 2, 5, 1}},
		{"workload=dns-1", []uint16{3}},
		{"addr=10.9.9.9", []uint16{2}},
		{"addr=::ffff:10.9.9.9", []uint16{2}},
		{"rule=default-deny", []uint16{2}},
		{"node=node-b", []uint16{4, 2}},
		{"since=10m", []uint16{4, 3, 2}},
		{"since=" + rfc(-40*time.Minute) + "&until=" + rfc(-3*time.Minute), []uint16{2, 5}},
		{"until=1d", nil},
		{"limit=2", []uint16{4, 3}},
		{"verdict=allowed&port=53&workload=web-1&node=node-a", []uint16{3}},
	}
	for _, c := range cases {
		code, body := e.call(t, "GET", "/api/v1/flows?"+c.query, e.token)
		var recs []flowrecord.Record
		if code != 200 || json.Unmarshal(body, &recs) != nil {
			t.Errorf("?%s: %d %s", c.query, code, body)
			continue
		}
		var got []uint16
		for _, r := range recs {
			got = append(got, r.SrcPort)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("?%s: flows %v, want %v", c.query, got, c.want)
		}
	}

	_, body := e.call(t, "GET", "/api/v1/flows?limit=1", e.token)
	var raw []map[string]any
	if err := json.Unmarshal(body, &raw); err != nil || len(raw) != 1 {
		t.Fatalf("%v: %s", err, body)
	}
	// The API adds each flow's id (the dashboard's page cursor).
	want := append(slices.Clone(controllertest.FlowRecordKeys), "id")
	if got := slices.Sorted(maps.Keys(raw[0])); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("flow record keys %v, want %v", got, want)
	}
	if raw[0]["dstPort"] != 22.0 || raw[0]["verdict"] != "would-deny" || raw[0]["direction"] != "ingress" {
		t.Errorf("flow record %v", raw[0])
	}
}

// TestEventAPIRefusesBadParameters: every parameter mistake is a 400 whose
// message names the parameter and the value and says what is expected.
func TestEventAPIRefusesBadParameters(t *testing.T) {
	e := newEventAPI(t)
	cases := []struct {
		path string
		want string
	}{
		{"/api/v1/flows?verdict=deny", `verdict: "deny" is not one of allowed, denied, would-deny`},
		{"/api/v1/flows?port=70000", `port: "70000" is not a port (1-65535)`},
		{"/api/v1/flows?port=0", `port: "0" is not a port (1-65535)`},
		{"/api/v1/flows?port=ssh", `port: "ssh" is not a port (1-65535)`},
		{"/api/v1/flows?protocol=SCTPX", `protocol: "SCTPX" is not one of TCP, UDP, ICMP, ICMPv6, proto-N (N 0-255)`},
		{"/api/v1/flows?addr=10.0.0", `addr: "10.0.0" is not an IP address`},
		{"/api/v1/flows?since=10x", `since: "10x" is neither a duration like 10m nor an RFC 3339 time`},
		{"/api/v1/flows?since=-10m", `since: "-10m" is not a positive duration`},
		{"/api/v1/flows?until=2025-01-01T00:00:00+02:00", `until: "2025-01-01T00:00:00 02:00" is neither a duration like 10m nor an RFC 3339 time like 2006-01-02T15:04:05Z (a + in a URL must be written %2B)`},
		{"/api/v1/flows?since=5m&until=10m", `until: "10m"`},
		{"/api/v1/flows?limit=10001", `limit: "10001" is not a number from 1 to 10000`},
		{"/api/v1/flows?limit=0", `limit: "0" is not a number from 1 to 10000`},
		{"/api/v1/flows?limit=many", `limit: "many" is not a number from 1 to 10000`},
		{"/api/v1/flows?workload=", `workload: "" is empty`},
		{"/api/v1/flows?node=a&node=b", `node: given 2 times ("a", "b"); give it once`},
		{"/api/v1/flows?verdikt=denied", `verdikt: unknown parameter (known: verdict, port, protocol, workload, addr, rule, node, since, until, limit, before, label, format)`},
		{"/api/v1/flows?state=open", `state: unknown parameter`},
		{"/api/v1/flows?port=%zz", `query: invalid URL escape "%zz"`},
		{"/api/v1/flows?port=99999&verdict=x", `verdict: "x" is not one of allowed, denied, would-deny; port: "99999" is not a port`},
		{"/api/v1/alerts?state=opn", `state: "opn" is not one of open, acknowledged, resolved`},
		{"/api/v1/alerts?state=open,closed", `state: "closed" is not one of open, acknowledged, resolved`},
		{"/api/v1/alerts?since=yesterday", `since: "yesterday" is neither a duration like 10m nor an RFC 3339 time`},
		{"/api/v1/alerts?limit=-1", `limit: "-1" is not a number from 1 to 10000`},
		{"/api/v1/alerts?port=22", `port: unknown parameter (known: state, rule, since, limit)`},
		{"/api/v1/alerts?rule=", `rule: "" is empty`},
	}
	for _, c := range cases {
		code, body := e.call(t, "GET", c.path, e.token)
		var apiErr apiclient.Error
		if code != 400 || json.Unmarshal(body, &apiErr) != nil || !strings.Contains(apiErr.Error, c.want) {
			t.Errorf("GET %s: %d %s, want 400 with %q", c.path, code, body, c.want)
		}
	}
	for _, path := range []string{"/api/v1/alerts/abc/ack", "/api/v1/alerts/0/ack", "/api/v1/alerts/-3/ack"} {
		code, body := e.call(t, "POST", path, e.token)
		if code != 400 || !strings.Contains(string(body), "is not an alert id (a positive integer)") {
			t.Errorf("POST %s: %d %s", path, code, body)
		}
	}
}

// TestEventAPINeedsCredential: no credential, or a wrong one, is a 401 on
// every event route.
func TestEventAPINeedsCredential(t *testing.T) {
	e := newEventAPI(t)
	for _, token := range []string{"", "egadm1.000000000000.00000000000000000000000000000000"} {
		for _, c := range []struct{ method, path string }{
			{"GET", "/api/v1/flows"}, {"GET", "/api/v1/flows?verdict=bad"}, {"GET", "/api/v1/alerts"}, {"POST", "/api/v1/alerts/1/ack"},
		} {
			if code, body := e.call(t, c.method, c.path, token); code != 401 {
				t.Errorf("%s %s with token %q: %d %s", c.method, c.path, token, code, body)
			}
		}
	}
}

func (e *eventAPI) insertAlerts(t *testing.T) (open, acked, resolved store.Alert) {
	t.Helper()
	alert := func(rule, state string, lastSeen time.Duration) store.Alert {
		last := e.now.Add(lastSeen).UTC()
		return store.Alert{Rule: rule, Severity: "critical", Key: rule + "|web-1|db-1|22|TCP|" + state, State: state, Count: 2,
			Source: "web-1", Destination: "db-1", SrcWorkload: "web-1", DstWorkload: "db-1",
			SrcAddr: netip.MustParseAddr("10.0.0.1"), DstAddr: netip.MustParseAddr("10.0.0.2"),
			SrcLabels: map[string]string{"role": "web"}, Port: 22, Protocol: "TCP", Verdict: "denied",
			DecidingRule: "default-deny", Node: "node-b", FirstSeen: last.Add(-time.Minute), LastSeen: last,
			Window: 5 * time.Minute, Created: last.Add(-time.Minute)}
	}
	open = alert("ssh", store.AlertOpen, -time.Minute)
	acked = alert("ssh", store.AlertAcknowledged, -30*time.Minute)
	acked.AcknowledgedAt = e.now.Add(-20 * time.Minute).UTC()
	resolved = alert("db", store.AlertResolved, -2*time.Hour)
	resolved.ResolvedAt, resolved.ResolvedBy = e.now.Add(-time.Hour).UTC(), "window"
	e.h.InsertAlerts(&resolved, &acked, &open)
	return open, acked, resolved
}

// TestAlertsAPI: state, rule, since and limit select, most recently seen
// first, with the keys scripts rely on.
func TestAlertsAPI(t *testing.T) {
	e := newEventAPI(t)
	if code, body := e.call(t, "GET", "/api/v1/alerts", e.token); code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("no alerts: %d %s, want an empty array", code, body)
	}
	open, acked, resolved := e.insertAlerts(t)
	cases := []struct {
		query string
		want  []int64
	}{
		{"", []int64{open.ID, acked.ID, resolved.ID}},
		{"state=open", []int64{open.ID}},
		{"state=open,acknowledged", []int64{open.ID, acked.ID}},
		{"state=resolved&state=open", []int64{open.ID, resolved.ID}},
		{"state=open,open", []int64{open.ID}},
		{"rule=db", []int64{resolved.ID}},
		{"rule=nope", nil},
		{"since=1h", []int64{open.ID, acked.ID}},
		{"limit=1", []int64{open.ID}},
	}
	for _, c := range cases {
		code, body := e.call(t, "GET", "/api/v1/alerts?"+c.query, e.token)
		var list []apiclient.Alert
		if code != 200 || json.Unmarshal(body, &list) != nil {
			t.Errorf("?%s: %d %s", c.query, code, body)
			continue
		}
		var got []int64
		for _, a := range list {
			got = append(got, a.ID)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("?%s: alerts %v, want %v", c.query, got, c.want)
		}
	}

	_, body := e.call(t, "GET", "/api/v1/alerts?state=resolved", e.token)
	var raw []map[string]any
	if err := json.Unmarshal(body, &raw); err != nil || len(raw) != 1 {
		t.Fatalf("%v: %s", err, body)
	}
	for _, k := range []string{"id", "rule", "severity", "state", "count", "source", "destination", "port", "ports",
		"portCount", "protocol", "firstSeen", "lastSeen", "srcWorkload", "dstWorkload", "srcAddr", "dstAddr", "srcLabels", "verdict",
		"decidingRule", "node", "resolvedAt", "resolvedBy"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("resolved alert: no key %q in %v", k, raw[0])
		}
	}
	for _, k := range []string{"acknowledgedAt", "dstLabels", "key", "window", "notify", "folded", "portSet"} {
		if _, ok := raw[0][k]; ok {
			t.Errorf("resolved alert: key %q should be left out: %v", k, raw[0])
		}
	}
	if raw[0]["state"] != "resolved" || raw[0]["port"] != 22.0 || raw[0]["source"] != "web-1" || raw[0]["resolvedBy"] != "window" ||
		fmt.Sprint(raw[0]["ports"]) != "[22]" || raw[0]["portCount"] != 1.0 {
		t.Errorf("resolved alert: %v", raw[0])
	}
}

// TestAckAlert: open -> acknowledged at the server's clock; acknowledging
// again changes nothing; resolved is a conflict, unknown a 404.
func TestAckAlert(t *testing.T) {
	e := newEventAPI(t)
	open, acked, resolved := e.insertAlerts(t)
	ack := func(id int64) (int, apiclient.Alert, apiclient.Error) {
		t.Helper()
		code, body := e.call(t, "POST", fmt.Sprintf("/api/v1/alerts/%d/ack", id), e.token)
		var a apiclient.Alert
		var apiErr apiclient.Error
		if code == 200 {
			if err := json.Unmarshal(body, &a); err != nil {
				t.Fatalf("ack %d: %v: %s", id, err, body)
			}
		} else if err := json.Unmarshal(body, &apiErr); err != nil {
			t.Fatalf("ack %d: %d %v: %s", id, code, err, body)
		}
		return code, a, apiErr
	}

	e.h.Clock.Advance(time.Hour) // the ack time is the controller's clock, not the test's
	before := e.h.Clock.Now()
	code, a, _ := ack(open.ID)
	after := e.h.Clock.Now()
	if code != 200 || a.ID != open.ID || a.State != "acknowledged" || a.AcknowledgedAt.Before(before) || a.AcknowledgedAt.After(after) {
		t.Fatalf("ack open alert: %d %+v (want acknowledged between %v and %v)", code, a, before, after)
	}
	if a.Count != open.Count || a.Rule != open.Rule || !a.LastSeen.Equal(open.LastSeen) {
		t.Errorf("ack changed more than the state: %+v", a)
	}
	stored, err := e.h.Srv.API.Alerts(context.Background(), store.AlertQuery{States: []string{store.AlertAcknowledged}})
	if err != nil || len(stored) != 2 || stored[0].ID != open.ID || !stored[0].AcknowledgedAt.Equal(a.AcknowledgedAt) {
		t.Errorf("stored after ack: %+v, %v", stored, err)
	}

	e.h.Clock.Advance(time.Hour)
	if code, again, _ := ack(open.ID); code != 200 || again.State != "acknowledged" || !again.AcknowledgedAt.Equal(a.AcknowledgedAt) {
		t.Errorf("ack again: %d %+v, want the first ack time %v", code, again, a.AcknowledgedAt)
	}
	if code, again, _ := ack(acked.ID); code != 200 || !again.AcknowledgedAt.Equal(acked.AcknowledgedAt) {
		t.Errorf("ack an acknowledged alert: %d %+v, want ack time %v kept", code, again, acked.AcknowledgedAt)
	}
	if code, _, apiErr := ack(resolved.ID); code != 409 || !strings.Contains(apiErr.Error, fmt.Sprintf("alert %d was resolved by window", resolved.ID)) ||
		!strings.Contains(apiErr.Error, "a resolved alert cannot be acknowledged") {
		t.Errorf("ack a resolved alert: %d %+v", code, apiErr)
	}
	if code, _, apiErr := ack(999); code != 404 || apiErr.Error != "alert 999: no such alert" {
		t.Errorf("ack an unknown alert: %d %+v", code, apiErr)
	}
	if list, _ := e.h.Srv.API.Alerts(context.Background(), store.AlertQuery{States: []string{store.AlertResolved}}); len(list) != 1 || list[0].AcknowledgedAt != (time.Time{}) {
		t.Errorf("resolved alert changed: %+v", list)
	}
}

// failingStore is a store whose event reads fail as a full or broken disk
// makes them fail.
type failingStore struct {
	store.Store
	err error
}

func (f failingStore) Flows(context.Context, store.FlowQuery) ([]flowrecord.Record, error) {
	return nil, fmt.Errorf("read flows: %w: injected", f.err)
}

func (f failingStore) ScanFlows(context.Context, store.FlowQuery, func(int64, *flowrecord.Record) error) error {
	return fmt.Errorf("read flows: %w: injected", f.err)
}

func (f failingStore) Alerts(context.Context, store.AlertQuery) ([]store.Alert, error) {
	return nil, fmt.Errorf("read alerts: %w: injected", f.err)
}

func (f failingStore) EventTx(context.Context, func(store.EventTx) error) error {
	return fmt.Errorf("%w: injected", f.err)
}

// TestEventAPIStoreUnavailable: a store that cannot be read or written is
// a 503 with its message (the client may retry), not a 500.
func TestEventAPIStoreUnavailable(t *testing.T) {
	for _, storeErr := range []error{store.ErrIO, store.ErrFull} {
		h := controllertest.New(t)
		h.WrapStore = func(st store.Store) store.Store { return failingStore{st, storeErr} }
		h.Restart()
		cfg := h.ServeAPI()
		token := cfg.Token
		e := &eventAPI{url: cfg.Server, token: token}
		for _, c := range []struct{ method, path string }{
			{"GET", "/api/v1/flows"}, {"GET", "/api/v1/alerts"}, {"POST", "/api/v1/alerts/1/ack"},
		} {
			code, body := e.call(t, c.method, c.path, token)
			if code != 503 || !strings.Contains(string(body), storeErr.Error()) {
				t.Errorf("%v: %s %s: %d %s, want 503 with %q", storeErr, c.method, c.path, code, body, storeErr)
			}
		}
	}
}

// TestGetAlert: one alert by id, what a webhook's #/alerts/ID link opens.
func TestGetAlert(t *testing.T) {
	e := newEventAPI(t)
	open, _, resolved := e.insertAlerts(t)
	for _, want := range []store.Alert{open, resolved} {
		code, body := e.call(t, "GET", fmt.Sprintf("/api/v1/alerts/%d", want.ID), e.token)
		var a apiclient.Alert
		if code != 200 || json.Unmarshal(body, &a) != nil || a.ID != want.ID || a.Rule != want.Rule || a.State != want.State {
			t.Errorf("GET alert %d: %d %s", want.ID, code, body)
		}
	}
	if code, body := e.call(t, "GET", "/api/v1/alerts/999", e.token); code != 404 || !strings.Contains(string(body), "alert 999: no such alert") {
		t.Errorf("unknown alert: %d %s", code, body)
	}
	if code, body := e.call(t, "GET", "/api/v1/alerts/x", e.token); code != 400 || !strings.Contains(string(body), `is not an alert id (a positive integer)`) {
		t.Errorf("bad id: %d %s", code, body)
	}
	if code, _ := e.call(t, "GET", fmt.Sprintf("/api/v1/alerts/%d", open.ID), ""); code != 401 {
		t.Errorf("without a credential: %d, want 401", code)
	}
}
