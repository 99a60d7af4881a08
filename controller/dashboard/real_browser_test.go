package dashboard_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/dashboard/browsertest"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// realPolicy: four workloads on three nodes, labelled app and role.
// web-to-db admits web-1 and web-2 to db-1 on 5432 (traffic uses it);
// peers admits web-1 (role frontend) to web-2 (role api) on 8080, which no
// flow uses: the map's dashed policy-only edge. jump is in monitor mode,
// so what reaches it unallowed is would-deny.
//
// Label values and names cannot carry a hostile string here: the policy
// validator refuses "<" in them (the test checks that it does). What can
// reach the store is a flow record, which a compromised agent writes as it
// likes; the hostile flow below stands for that.
const realPolicy = `apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: web, role: frontend}}
spec: {node: node-a, interface: veth-web1, addresses: [10.250.1.11]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-2, labels: {app: web, role: api}}
spec: {node: node-b, interface: veth-web2, addresses: [10.250.1.12]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: db, role: backend}}
spec: {node: node-c, interface: veth-db1, addresses: [10.250.1.21]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: jump, labels: {app: ops, role: jump}}
spec: {node: node-b, interface: veth-jump, addresses: [10.250.1.30], mode: monitor}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - name: web-to-db
      from: [{selector: {app: web}}]
      to:   [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 5432}]
    - name: peers
      from: [{selector: {role: frontend}}]
      to:   [{selector: {role: api}}]
      ports: [{protocol: TCP, port: 8080}]
---
`

// hostile is what a compromised agent might put in a flow's workload and
// rule names.
const hostile = `<img src=x onerror=alert(1)>`

// seedReal applies realPolicy and the SSH alert rule through the policy
// path, and stores flows and an open SSH alert; it returns the alert's id.
func seedReal(h *controllertest.Controller) int64 {
	h.Apply(realPolicy + testutil.SSHAlertPolicy("", ""))
	now := h.Clock.Now().UTC()
	addr := netip.MustParseAddr
	flow := func(ago time.Duration, node string, src, srcAddr string, dst, dstAddr string, port uint16, v ruleset.Verdict, rule string) flowrecord.Record {
		t := now.Add(-ago)
		return flowrecord.Record{Time: t, Node: node, Direction: ruleset.Ingress, Protocol: "TCP",
			SrcAddr: addr(srcAddr), SrcPort: 40000 + uint16(ago/time.Second), SrcWorkload: src,
			DstAddr: addr(dstAddr), DstPort: port, DstWorkload: dst, Verdict: v, Rule: rule,
			Packets: 4, Bytes: 400, PacketsSent: 2, PacketsReceived: 2, BytesSent: 200, BytesReceived: 200,
			FirstSeen: t, LastSeen: t, State: flowrecord.StateNew}
	}
	h.InsertFlows(
		flow(10*time.Minute, "node-c", "web-1", "10.250.1.11", "db-1", "10.250.1.21", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		flow(9*time.Minute, "node-c", "web-2", "10.250.1.12", "db-1", "10.250.1.21", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		flow(8*time.Minute, "node-c", "web-1", "10.250.1.11", "db-1", "10.250.1.21", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		flow(7*time.Minute, "node-c", "jump", "10.250.1.30", "db-1", "10.250.1.21", 22, ruleset.VerdictDenied, "default-deny"),
		flow(6*time.Minute, "node-b", "", "198.51.100.7", "jump", "10.250.1.30", 443, ruleset.VerdictWouldDeny, "default-deny"),
		flow(5*time.Minute, "node-c", hostile, "10.250.1.99", "db-1", "10.250.1.21", 3306, ruleset.VerdictDenied, hostile),
	)
	a := &store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: "unexpected-ssh|jump|db-1|TCP", State: store.AlertOpen,
		Count: 1, Source: "jump", Destination: "db-1", SrcWorkload: "jump", DstWorkload: "db-1",
		SrcAddr: addr("10.250.1.30"), DstAddr: addr("10.250.1.21"), SrcLabels: map[string]string{"app": "ops", "role": "jump"},
		DstLabels: map[string]string{"app": "db", "role": "backend"}, Port: 22, Ports: []uint16{22}, PortCount: 1, Protocol: "TCP",
		Verdict: "denied", DecidingRule: "default-deny", Node: "node-c",
		FirstSeen: now.Add(-7 * time.Minute), LastSeen: now.Add(-time.Minute), Created: now.Add(-7 * time.Minute),
		// The sweeper resolves an alert a window after its last flow: an
		// hour keeps it open for the whole test, however slow.
		Window: time.Hour}
	h.InsertAlerts(a)
	return a.ID
}

// TestBrowserRealController drives the dashboard served by a real
// in-process controller (restapi's GET / and its API, real sessions and
// CSRF) over a store seeded through the real paths: log in with the admin
// token; the service map's nodes and edges (the denied SSH edge, the
// dashed policy-only edge); flows filtered by port 22; a POST without the
// CSRF header refused; the alert acknowledged with who did it; the nodes
// without an agent marked; the hostile flow shown as text; logout, after
// which the old cookie is refused. No console error on any page.
func TestBrowserRealController(t *testing.T) {
	browsertest.ChromiumPath(t) // skip before starting a controller
	h := controllertest.New(t)
	// A hostile label value does not get past the policy's validation,
	// so the page's XSS check below uses a flow record instead.
	evil := "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: evil, labels: {app: \"" + hostile + "\"}}\nspec: {node: node-a, interface: veth-evil, addresses: [10.250.1.66]}\n"
	if _, err := h.Srv.Policy.Apply(t.Context(), []apiclient.File{{Name: "evil.yaml", Content: evil}}, false); err == nil || !strings.Contains(err.Error(), "label value") {
		t.Errorf("applying a workload labelled %s: %v, want it refused (label value)", hostile, err)
	}
	alertID := seedReal(h)
	cfg := h.ServeAPI()
	base := cfg.Server
	ctx, consoleErrors := browsertest.Browser(t)
	shots := browsertest.ScreenshotDir(t)
	type (
		S = []string
		B = bool
	)
	eval := func(expr string) string { t.Helper(); return browsertest.Eval[string](t, ctx, expr) }
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	// textOnly: the hostile names stayed text on this page.
	textOnly := func(page string) {
		t.Helper()
		if !browsertest.Eval[B](t, ctx, browsertest.NoImg) {
			t.Errorf("%s: an <img> or inline script made it into the page", page)
		}
	}

	// Log in: the real POST /api/v1/login, the real cookie.
	browsertest.Step(t, ctx, "open the dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(`[data-testid=login-token]`)))
	browsertest.Shot(t, ctx, shots, "real-login.png")
	browsertest.Step(t, ctx, "log in", chromedp.SetValue(css(`[data-testid=login-token]`), cfg.Token),
		chromedp.Click(css(`[data-testid=login-submit]`)), chromedp.WaitVisible(css(`[data-testid=map]`)))
	if user := eval(`document.querySelector('[data-testid=user]').textContent`); user != "controllertest" {
		t.Errorf("header shows user %q, want the admin token's name controllertest", user)
	}
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == "eg_session" {
			session = c
		}
	}
	if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || session.Path != "/" {
		t.Fatalf("after login the session cookie is %+v, want eg_session, HttpOnly, SameSite=Strict, Path=/", session)
	}

	// The service map of the last hour.
	browsertest.WaitFor(t, ctx, "the map", `window.egMap && window.egMap.ready`)
	nodes := browsertest.MapNodes(t, ctx)
	if want := (S{hostile, "db-1", "jump", "web-1", "web-2", "world:198.51.100.7"}); !slices.Equal(nodes, want) {
		t.Errorf("map nodes %q, want %q", nodes, want)
	}
	edges := browsertest.MapEdges(t, ctx)
	want := []browsertest.MapEdge{ // in MapEdges' order
		browsertest.Edge(hostile, "db-1", "TCP", "denied", 3306, false),
		browsertest.Edge("jump", "db-1", "TCP", "denied", 22, false),
		browsertest.Edge("web-1", "db-1", "TCP", "allowed", 5432, false),
		browsertest.Edge("web-1", "web-2", "TCP", "policy", 8080, true),
		browsertest.Edge("web-2", "db-1", "TCP", "allowed", 5432, false),
		browsertest.Edge("world:198.51.100.7", "jump", "TCP", "would-deny", 443, false),
	}
	if !slices.Equal(edges, want) {
		t.Errorf("map edges\n%+v\nwant\n%+v", edges, want)
	}
	browsertest.Shot(t, ctx, shots, "real-map.png")
	textOnly("map")

	// Flows filtered by port 22: the denied SSH flow, and only it.
	browsertest.Step(t, ctx, "flows port 22", chromedp.Navigate(base+"/#/flows?port=22"), chromedp.WaitVisible(css(`[data-testid=flow-row]`)))
	rows := browsertest.Eval[[]S](t, ctx, `[...document.querySelectorAll('[data-testid=flow-row]')].map(r => [...r.querySelectorAll('td')].map(td => td.textContent))`)
	if len(rows) != 1 || !slices.Contains(rows[0], "jump") || !slices.Contains(rows[0], "denied") || !slices.Contains(rows[0], "default-deny") {
		t.Errorf("flows?port=22 rows %q, want the one denied jump -> db-1 flow", rows)
	}
	// Every flow: the hostile names are text in their cells.
	browsertest.Step(t, ctx, "all flows", chromedp.Navigate(base+"/#/flows"), chromedp.WaitVisible(css(`[data-testid=flow-row]`)))
	browsertest.WaitFor(t, ctx, "six flows", `document.querySelectorAll('[data-testid=flow-row]').length === 6`)
	if n := browsertest.Eval[int](t, ctx, fmt.Sprintf(`[...document.querySelectorAll('[data-testid=flow-row] td')].filter(td => td.textContent === %q).length`, hostile)); n < 2 {
		t.Errorf("the hostile workload and rule names are in %d cells as text, want 2", n)
	}
	textOnly("flows")
	browsertest.Shot(t, ctx, shots, "real-flows.png")

	// CSRF: a POST with the cookie but without X-CSRF-Token is refused,
	// and the alert stays open.
	status := browsertest.Eval[int](t, ctx, fmt.Sprintf(`fetch('api/v1/alerts/%d/ack', {method: 'POST'}).then(r => r.status)`, alertID))
	if status != 403 {
		t.Errorf("POST ack without the CSRF header answered %d, want 403", status)
	}
	if st := browsertest.Eval[S](t, ctx, `fetch('api/v1/alerts').then(r => r.json()).then(as => as.map(a => a.state))`); !slices.Equal(st, S{"open"}) {
		t.Errorf("after the refused POST the alerts' states are %q, want [open]", st)
	}

	// Alerts: acknowledge from the page, then see who did.
	browsertest.Step(t, ctx, "alerts", chromedp.Navigate(base+"/#/alerts"), chromedp.WaitVisible(css(`[data-testid=ack]`)))
	browsertest.Step(t, ctx, "acknowledge", chromedp.Click(css(`[data-testid=ack]`)), chromedp.WaitVisible(css(`[data-testid=no-alerts]`)))
	browsertest.Step(t, ctx, "acknowledged tab", chromedp.Click(css(`[data-testid=tab-acknowledged]`)), chromedp.WaitVisible(css(`[data-testid=acked-by]`)))
	if by := eval(`document.querySelector('[data-testid=acked-by]').textContent`); !strings.HasPrefix(by, "controllertest at ") {
		t.Errorf("acknowledged by %q, want controllertest at ...", by)
	}
	browsertest.Step(t, ctx, "alert link", chromedp.Navigate(fmt.Sprintf("%s/#/alerts/%d", base, alertID)), chromedp.WaitVisible(css(`[data-testid=alert-detail]`)))
	browsertest.Shot(t, ctx, shots, "real-alert.png")
	textOnly("alert")

	// Agents: no agent has joined, so every node with a rule set is
	// listed disconnected, behind its latest version (applied 0) and with
	// the error saying no agent joined; each stands out.
	browsertest.Step(t, ctx, "agents", chromedp.Navigate(base+"/#/agents"), chromedp.WaitVisible(css(`[data-testid=agent-row]`)))
	type agentRow struct{ Node, Attention, Why string }
	agents := browsertest.Eval[[]agentRow](t, ctx, `[...document.querySelectorAll('[data-testid=agent-row]')].map(r => ({Node: r.dataset.node, Attention: r.dataset.attention, Why: r.querySelector('[data-testid=agent-attention]').textContent}))`)
	var agentNodes S
	for _, a := range agents {
		agentNodes = append(agentNodes, a.Node)
		if a.Attention != "true" || !strings.Contains(a.Why, "disconnected") {
			t.Errorf("agent %s: attention %s %q, want it marked disconnected", a.Node, a.Attention, a.Why)
		}
	}
	if want := (S{"node-a", "node-b", "node-c"}); !slices.Equal(agentNodes, want) {
		t.Errorf("agents page lists %q, want %q", agentNodes, want)
	}
	browsertest.WaitFor(t, ctx, "attention counts", `document.querySelector('[data-testid=agents-attention]')?.textContent === '3 agents need attention'`)
	browsertest.Shot(t, ctx, shots, "real-agents.png")
	textOnly("agents")

	// The policies pages render against the real API too.
	browsertest.Step(t, ctx, "policy detail", chromedp.Navigate(base+"/#/policies/shop"), chromedp.WaitVisible(css(`[data-testid=policy-yaml]`)))
	if y := eval(`document.querySelector('[data-testid=policy-yaml]').textContent`); !strings.Contains(y, "web-to-db") {
		t.Errorf("policy YAML %q", y)
	}
	textOnly("policy detail")

	// Logout: the session is gone server-side, so even the old cookie,
	// put back, is refused.
	browsertest.Step(t, ctx, "logout", chromedp.Click(css(`[data-testid=logout]`)), chromedp.WaitVisible(css(`[data-testid=login-token]`)))
	httpOnly := true
	if _, err := chromedp.Call(ctx, network.SetCookie, network.SetCookieParams{Name: session.Name, Value: session.Value,
		URL: base + "/", Path: "/", HTTPOnly: &httpOnly, SameSite: network.CookieSameSiteStrict}); err != nil {
		t.Fatal(err)
	}
	if after, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}}); err != nil ||
		!slices.ContainsFunc(after.Cookies, func(c *network.Cookie) bool { return c.Name == session.Name && c.Value == session.Value }) {
		t.Fatalf("putting the old session cookie back: %v", err)
	}
	if status := browsertest.Eval[int](t, ctx, `fetch('api/v1/agents').then(r => r.status)`); status != 401 {
		t.Errorf("after logout the old cookie got %d from GET /api/v1/agents, want 401", status)
	}
	browsertest.Step(t, ctx, "after logout", chromedp.Navigate(base+"/#/agents"), chromedp.WaitVisible(css(`[data-testid=login-token]`)))
	if h := eval(`location.hash`); h != "#/login" {
		t.Errorf("after logout #/agents went to %q, want #/login", h)
	}
	// The refused ack is logged by the browser as a failed resource: that
	// is the test's own request, not the page's.
	browsertest.NoConsoleErrors(t, consoleErrors(), func(e string) bool {
		return strings.Contains(e, "status of 403") && strings.Contains(e, "/ack")
	})
}
