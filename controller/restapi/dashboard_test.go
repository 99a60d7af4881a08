package restapi_test

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// dashPolicy: web talks to db on 5432 (allowed), bastion may SSH to db
// (an edge no traffic uses), a monitor policy would deny web -> db SSH,
// and a deny rule takes back the allow of web -> cache 6379.
const dashPolicy = `
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: shop, role: web}}
spec: {node: node-a, interface: veth-web1, addresses: [10.0.0.1]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: shop, role: db}}
spec: {node: node-b, interface: veth-db1, addresses: [10.0.0.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: bastion, labels: {role: bastion}}
spec: {node: node-b, interface: veth-b, addresses: [10.0.0.3]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: cache-1, labels: {app: shop, role: cache}}
spec: {node: node-b, interface: veth-c, addresses: [10.0.0.4]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - name: web-to-db
      from: [{selector: {role: web}}]
      to: [{selector: {role: db}}]
      ports: [{protocol: TCP, port: 5432}]
    - name: bastion-ssh
      from: [{selector: {role: bastion}}]
      to: [{selector: {role: db}}]
      ports: [{protocol: TCP, port: 22}]
    - name: web-to-cache
      from: [{selector: {role: web}}]
      to: [{selector: {role: cache}}]
      ports: [{protocol: TCP, port: 6379}]
    - name: no-cache
      action: deny
      from: [{selector: {role: web}}]
      to: [{selector: {role: cache}}]
      ports: [{protocol: TCP, port: 6379}]
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: audit}
spec:
  mode: monitor
  rules:
    - name: no-ssh
      action: deny
      from: [{selector: {}}]
      to: [{selector: {role: db}}]
      ports: [{protocol: TCP, port: 22}]
`

type dashAPI struct {
	h   *controllertest.Controller
	cfg *apiclient.Config
	now time.Time
	ids []int64 // stored flows' ids, newest first
}

func newDashAPI(t *testing.T) *dashAPI {
	t.Helper()
	h := controllertest.New(t)
	h.Apply(dashPolicy)
	d := &dashAPI{h: h, cfg: h.ServeAPI(), now: h.Clock.Now()}
	rec := func(ago time.Duration, srcPort uint16, src, dst string, port uint16, v ruleset.Verdict, rule string) flowrecord.Record {
		r := flow(d.now.Add(-ago), srcPort, "node-b", "TCP", src, dst, port, v, rule)
		names := map[string]string{"10.0.0.1": "web-1", "10.0.0.2": "db-1", "10.0.0.3": "bastion", "10.0.0.4": "cache-1"}
		r.SrcWorkload, r.DstWorkload, r.State = names[src], names[dst], flowrecord.StateNew
		return r
	}
	// A node name a spreadsheet would run, for the CSV export.
	formula := rec(10*time.Minute, 5, "198.51.100.7", "10.0.0.2", 22, ruleset.VerdictDenied, "default-deny")
	formula.Node = "=cmd|' /C calc'!A0"
	h.InsertFlows(
		rec(50*time.Minute, 1, "10.0.0.1", "10.0.0.2", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		rec(40*time.Minute, 2, "10.0.0.1", "10.0.0.2", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		rec(30*time.Minute, 3, "203.0.113.9", "10.0.0.2", 22, ruleset.VerdictDenied, "default-deny"),
		rec(20*time.Minute, 4, "10.0.0.1", "10.0.0.2", 22, ruleset.VerdictWouldDeny, "audit/no-ssh"),
		formula,
		rec(3*time.Hour, 6, "10.0.0.1", "10.0.0.2", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
	)
	return d
}

func (d *dashAPI) get(t *testing.T, path string, out any) []byte {
	t.Helper()
	code, body := controllertest.Call(t, "GET", d.cfg.Server+path, d.cfg.Token, "")
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
	return body
}

func srcPorts(fs []apiclient.StoredFlow) []uint16 {
	var out []uint16
	for _, f := range fs {
		out = append(out, f.SrcPort)
	}
	return out
}

// TestFlowPages: pages of limit flows follow each other with before=<the
// last id>, newest first, filters included; a cursor no longer stored
// answers nothing.
func TestFlowPages(t *testing.T) {
	d := newDashAPI(t)
	var all []apiclient.StoredFlow
	d.get(t, "/api/v1/flows", &all)
	if got := srcPorts(all); !slices.Equal(got, []uint16{5, 4, 3, 2, 1, 6}) {
		t.Fatalf("all flows: source ports %v", got)
	}
	var seen []uint16
	before := int64(0)
	for range 4 {
		var page []apiclient.StoredFlow
		path := "/api/v1/flows?limit=2"
		if before != 0 {
			path += "&before=" + itoa(before)
		}
		d.get(t, path, &page)
		if len(page) == 0 {
			break
		}
		seen = append(seen, srcPorts(page)...)
		before = page[len(page)-1].ID
	}
	if !slices.Equal(seen, srcPorts(all)) {
		t.Errorf("pages %v, want %v", seen, srcPorts(all))
	}
	var page []apiclient.StoredFlow
	d.get(t, "/api/v1/flows?port=22&limit=1&before="+itoa(all[1].ID), &page)
	if got := srcPorts(page); !slices.Equal(got, []uint16{3}) {
		t.Errorf("port 22 after the second flow: %v, want [3]", got)
	}
	d.get(t, "/api/v1/flows?before=999999", &page)
	if len(page) != 0 {
		t.Errorf("before an unknown id: %v, want none", srcPorts(page))
	}
	// label=k=v: flows with either end labelled so, now.
	d.get(t, "/api/v1/flows?label=role=web", &page)
	if got := srcPorts(page); !slices.Equal(got, []uint16{4, 2, 1, 6}) {
		t.Errorf("label=role=web: %v, want [4 2 1 6]", got)
	}
	d.get(t, "/api/v1/flows?label=role=nobody", &page)
	if len(page) != 0 {
		t.Errorf("a label no workload has: %v, want none", srcPorts(page))
	}
	for _, bad := range []string{"before=x", "before=0", "label=novalue", "format=xml"} {
		if code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/flows?"+bad, d.cfg.Token, ""); code != 400 {
			t.Errorf("?%s: %d %s, want 400", bad, code, body)
		}
	}
}

func itoa(n int64) string { return strings.TrimSpace(string(must(json.Marshal(n)))) }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestFlowExport: CSV and JSON lines carry the whole filtered result (not
// one page), as a download; a cell a spreadsheet would run is defused.
func TestFlowExport(t *testing.T) {
	d := newDashAPI(t)
	req, _ := http.NewRequest("GET", d.cfg.Server+"/api/v1/flows?format=csv&port=22&limit=1", nil)
	req.Header.Set("Authorization", "Bearer "+d.cfg.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(resp.Body).ReadAll()
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("csv: %d %v", resp.StatusCode, err)
	}
	if !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
		t.Errorf("csv headers %v", resp.Header)
	}
	if len(rows) != 4 || rows[0][0] != "id" || rows[1][2] != "'=cmd|' /C calc'!A0" || rows[0][5] != "srcAddr" {
		t.Fatalf("csv rows %q, want a header and the 3 port-22 flows (limit does not apply)", rows)
	}
	for _, row := range rows[1:] {
		for _, cell := range row {
			if strings.HasPrefix(cell, "=") {
				t.Errorf("csv cell %q starts a formula", cell)
			}
		}
	}
	code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/flows?format=jsonl&verdict=denied", d.cfg.Token, "")
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	n := 0
	for sc.Scan() {
		var f apiclient.StoredFlow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil || f.ID == 0 || f.Verdict != ruleset.VerdictDenied {
			t.Errorf("jsonl line %s: %v", sc.Bytes(), err)
		}
		n++
	}
	if code != 200 || n != 2 {
		t.Errorf("jsonl: %d, %d lines, want 2: %s", code, n, body)
	}
	if code, _ := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/flows?format=csv", "", ""); code != 401 {
		t.Errorf("export without a credential: %d, want 401", code)
	}
}

// TestServiceMap: workloads, observed edges (the denied SSH from an
// unmanaged address among them) and the edges the policy admits
// (bastion -> db SSH, which no traffic used; web -> cache is taken back
// by a deny); flows older than the range are left out.
func TestServiceMap(t *testing.T) {
	d := newDashAPI(t)
	var m apiclient.ServiceMap
	d.get(t, "/api/v1/map?since=1h", &m)
	var names []string
	for _, w := range m.Workloads {
		names = append(names, w.Name)
	}
	if !slices.Equal(names, []string{"bastion", "cache-1", "db-1", "web-1"}) || m.Workloads[3].Labels["role"] != "web" {
		t.Errorf("workloads %+v", m.Workloads)
	}
	type edge struct {
		src, dst string
		port     uint16
		verdict  ruleset.Verdict
		flows    uint64
	}
	var edges []edge
	for _, e := range m.Edges {
		edges = append(edges, edge{e.Src, e.Dst, e.Port, e.Verdict, e.Flows})
	}
	want := []edge{
		{"web-1", "db-1", 5432, ruleset.VerdictAllowed, 2},
		{"web-1", "db-1", 22, ruleset.VerdictWouldDeny, 1},
		{"world:203.0.113.9", "db-1", 22, ruleset.VerdictDenied, 1},
	}
	for _, w := range want {
		if !slices.Contains(edges, w) {
			t.Errorf("edges %+v lack %+v", edges, w)
		}
	}
	type pedge struct {
		src, dst, proto string
		port            uint16
		rule            string
	}
	var pedges []pedge
	for _, b := range m.PolicyEdges {
		for _, src := range b.Srcs {
			for _, dst := range b.Dsts {
				pedges = append(pedges, pedge{src, dst, b.Protocol, b.Port, b.Policy + "/" + b.Rule})
			}
		}
	}
	for _, w := range []pedge{{"web-1", "db-1", "TCP", 5432, "shop/web-to-db"}, {"bastion", "db-1", "TCP", 22, "shop/bastion-ssh"}} {
		if !slices.Contains(pedges, w) {
			t.Errorf("policy edges %+v lack %+v", pedges, w)
		}
	}
	for _, e := range pedges {
		if e.dst == "cache-1" {
			t.Errorf("policy edge %+v: a deny rule takes it back", e)
		}
	}
	if m.Truncated {
		t.Error("truncated")
	}
	var wide apiclient.ServiceMap
	d.get(t, "/api/v1/map?since=4h", &wide)
	for _, e := range wide.Edges {
		if e.Port == 5432 && e.Flows != 3 {
			t.Errorf("4h: web -> db 5432 has %d flows, want 3", e.Flows)
		}
	}
	for _, bad := range []string{"since=x", "since=1h&until=2h", "nope=1"} {
		if code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/map?"+bad, d.cfg.Token, ""); code != 400 {
			t.Errorf("?%s: %d %s, want 400", bad, code, body)
		}
	}
}

// TestExplainAPI: the API explains a flow as egctl explain does.
func TestExplainAPI(t *testing.T) {
	d := newDashAPI(t)
	var x apiclient.Explanation
	d.get(t, "/api/v1/explain?src=web-1&dst=db-1&protocol=TCP&port=5432", &x)
	if x.Verdict != ruleset.VerdictAllowed || x.DecidingRule != "shop/web-to-db" || x.Source == nil || x.Destination == nil {
		t.Errorf("web-1 -> db-1 5432: %+v", x)
	}
	// Allowed by shop/bastion-ssh, but the monitor policy's deny would
	// drop it.
	d.get(t, "/api/v1/explain?src=bastion&dst=10.0.0.2&protocol=tcp&port=22", &x)
	if x.Verdict != ruleset.VerdictWouldDeny || x.DecidingRule != "audit/no-ssh" {
		t.Errorf("bastion -> db-1 22: %+v", x)
	}
	// A monitor deny never opens anything: nothing allows web -> db SSH.
	d.get(t, "/api/v1/explain?src=web-1&dst=db-1&protocol=TCP&port=22", &x)
	if x.Verdict != ruleset.VerdictDenied || x.DecidingRule != "default-deny" {
		t.Errorf("web-1 -> db-1 22: %+v", x)
	}
	d.get(t, "/api/v1/explain?src=203.0.113.9&dst=db-1&protocol=TCP&port=22", &x)
	if x.Verdict != ruleset.VerdictDenied || x.Source != nil {
		t.Errorf("unmanaged -> db-1 22: %+v", x)
	}
	for _, bad := range []string{"src=web-1&dst=db-1&protocol=TCP", "src=web-1&dst=db-1&protocol=SCTP&port=1",
		"src=nobody&dst=db-1&protocol=TCP&port=1", "src=web-1&dst=db-1&protocol=TCP&port=1&x=1"} {
		if code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/explain?"+bad, d.cfg.Token, ""); code != 400 {
			t.Errorf("?%s: %d %s, want 400", bad, code, body)
		}
	}
}

// TestPolicyDetail: the YAML, the workloads each rule selects and its
// hits and would-deny flows over the range.
func TestPolicyDetail(t *testing.T) {
	d := newDashAPI(t)
	var p apiclient.PolicyDetail
	d.get(t, "/api/v1/policies/audit/detail?since=1h", &p)
	if p.Name != "audit" || p.Mode != "monitor" || !strings.Contains(p.YAML, "no-ssh") || len(p.Rules) != 1 {
		t.Fatalf("audit: %+v", p)
	}
	r := p.Rules[0]
	if r.Hits != 1 || r.WouldDeny != 1 || r.Action != "deny" || !slices.Equal(r.Selects.To, []string{"db-1"}) || len(r.Selects.From) != 4 {
		t.Errorf("audit/no-ssh: %+v", r)
	}
	d.get(t, "/api/v1/policies/shop/detail?since=4h", &p)
	if p.Mode != "enforce" || p.Rules[0].Name != "web-to-db" || p.Rules[0].Hits != 3 || p.Rules[0].WouldDeny != 0 ||
		!slices.Equal(p.Rules[0].Selects.From, []string{"web-1"}) {
		t.Errorf("shop: %+v", p.Rules)
	}
	if code, _ := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/policies/nope/detail", d.cfg.Token, ""); code != 404 {
		t.Errorf("unknown policy: %d, want 404", code)
	}
}

// TestAgentsDashboardFields: the agents' list has the fields the
// dashboard shows.
func TestAgentsDashboardFields(t *testing.T) {
	d := newDashAPI(t)
	var raw []map[string]any
	d.get(t, "/api/v1/agents", &raw)
	if len(raw) == 0 {
		t.Fatal("no agents listed")
	}
	for _, k := range []string{"node", "connected", "appliedVersion", "latestVersion", "certExpiry", "lastError", "lastContact",
		"mode", "deniedPackets", "lostEvents"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("agent %v lacks %q", raw[0], k)
		}
	}
}

// TestFlowStream: live flows arrive as server-sent events, only those the
// filter matches; the stream needs a credential.
func TestFlowStream(t *testing.T) {
	d := newDashAPI(t)
	if code, _ := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/flows/stream", "", ""); code != 401 {
		t.Errorf("stream without a credential: %d, want 401", code)
	}
	if code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/flows/stream?before=3", d.cfg.Token, ""); code != 400 {
		t.Errorf("stream with before: %d %s, want 400", code, body)
	}
	req, _ := http.NewRequest("GET", d.cfg.Server+"/api/v1/flows/stream?port=22&label=role=db", nil)
	req.Header.Set("Authorization", "Bearer "+d.cfg.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", resp.StatusCode, resp.Header)
	}
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, ":") {
		t.Fatalf("first line %q: %v", line, err)
	}
	mk := func(port uint16, dst string) flowrecord.Record {
		return flowrecord.Record{Time: time.Now().UTC(), Node: "node-b", Protocol: "TCP", SrcAddr: netip.MustParseAddr("10.0.0.1"),
			SrcWorkload: "web-1", DstAddr: netip.MustParseAddr("10.0.0.2"), DstWorkload: dst, DstPort: port,
			Verdict: ruleset.VerdictDenied, Rule: "default-deny"}
	}
	testutil.Eventually(t, 5*time.Second, "the stream's subscription", func() error {
		d.h.Srv.API.PublishFlows([]flowrecord.Record{mk(80, "db-1"), mk(22, "cache-1"), mk(22, "db-1")})
		return nil
	})
	var ev, data string
	for ev == "" || data == "" {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if s, ok := strings.CutPrefix(line, "event: "); ok {
			ev = strings.TrimSpace(s)
		}
		if s, ok := strings.CutPrefix(line, "data: "); ok {
			data = s
		}
	}
	var got flowrecord.Record
	if ev != "flow" || json.Unmarshal([]byte(data), &got) != nil || got.DstPort != 22 || got.DstWorkload != "db-1" {
		t.Errorf("event %q data %s, want the port-22 flow to db-1 only", ev, data)
	}
}

// TestRecommendAPI: GET /api/v1/recommend writes the policy from the
// stored flows (allowed and would-deny; denied with includeDenied), its
// YAML valid, and with diff=true compares the traffic with the policy in
// force; bad queries are 400 and change nothing.
func TestRecommendAPI(t *testing.T) {
	d := newDashAPI(t)
	var rec apiclient.Recommendation
	d.get(t, "/api/v1/recommend?since=1h&groupBy=role", &rec)
	if rec.GroupBy != "role" || rec.Truncated || rec.Diff != nil || (rec.Until.Sub(rec.Since) != time.Hour) {
		t.Errorf("answer %+v", rec)
	}
	type rv struct{ name, from, to, ports string }
	var got []rv
	for _, r := range rec.Rules {
		var ports []string
		for _, p := range r.Ports {
			ports = append(ports, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
		}
		got = append(got, rv{r.Name, fmt.Sprint(r.From), fmt.Sprint(r.To), strings.Join(ports, ",")})
	}
	// web -> db 5432 (allowed, 2 flows in the hour) and 22 (would-deny);
	// the denied SSH from 203.0.113.9 and from the node named like a
	// formula are left out.
	want := []rv{{"web-to-db", "[{map[role:web] }]", "[{map[role:db] }]", "TCP/22,TCP/5432"}}
	if !slices.Equal(got, want) {
		t.Errorf("rules %v, want %v\n%s", got, want, rec.YAML)
	}
	if ev := rec.Rules[0].Evidence; ev.Flows != 3 || ev.Allowed != 2 || ev.WouldDeny != 1 || ev.Denied != 0 {
		t.Errorf("evidence %+v", ev)
	}
	if _, diags := policy.ParseAndValidate("rec.yaml", []byte(rec.YAML)); diags.HasErrors() || !strings.Contains(rec.YAML, "name: recommended") {
		t.Errorf("YAML does not validate: %v\n%s", diags, rec.YAML)
	}

	d.get(t, "/api/v1/recommend?since=1h&groupBy=role&includeDenied=true&name=seen", &rec)
	// Plus the denied SSH from two addresses of different /24s.
	if len(rec.Rules) != 3 || !strings.Contains(rec.YAML, "name: seen") || !strings.Contains(rec.YAML, "cidr: 203.0.113.9/32") ||
		!strings.Contains(rec.YAML, "cidr: 198.51.100.7/32") {
		t.Errorf("includeDenied: %+v\n%s", rec.Rules, rec.YAML)
	}

	d.get(t, "/api/v1/recommend?since=1h&diff=true&workload=web-1", &rec)
	if rec.Diff == nil {
		t.Fatal("diff=true: no diff")
	}
	// web -> db SSH is not allowed (default deny: the monitor deny opens
	// nothing); web -> cache 6379 is taken back by a deny, so not an edge;
	// bastion -> db is not web-1's.
	if na := rec.Diff.NotAllowed; len(na) != 1 || na[0].Src != "web-1" || na[0].Dst != "db-1" || na[0].Port != 22 ||
		na[0].Verdict != ruleset.VerdictDenied || na[0].Rule != "default-deny" {
		t.Errorf("notAllowed %+v", na)
	}
	if len(rec.Diff.Unused) != 0 {
		t.Errorf("unused %+v: web-1's only allow edge was used", rec.Diff.Unused)
	}
	d.get(t, "/api/v1/recommend?since=1h&diff=true", &rec)
	if u := rec.Diff.Unused; len(u) != 1 || u[0].Src != "bastion" || u[0].Rule != "bastion-ssh" {
		t.Errorf("unused %+v", u)
	}

	for _, bad := range []string{"since=x", "since=1h&until=2h", "nope=1", "groupBy=a%20b", "groupBy=", "workload=nobody",
		"includeDenied=yes", "name=a/b", "diff=1"} {
		if code, body := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/recommend?"+bad, d.cfg.Token, ""); code != 400 {
			t.Errorf("?%s: %d %s, want 400", bad, code, body)
		}
	}
	if code, _ := controllertest.Call(t, "GET", d.cfg.Server+"/api/v1/recommend", "", ""); code != 401 {
		t.Errorf("without a credential: %d, want 401", code)
	}
}
