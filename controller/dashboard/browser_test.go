package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/eastguard/eastguard/controller/dashboard/browsertest"
	"github.com/eastguard/eastguard/internal/testutil"
)

// fakeAPI answers the contract's endpoints (docs: DASHBOARD-CONTRACT, the
// OpenAPI document) from testdata/api.json, with the contract's session
// rules: a cookie from POST /login, the CSRF header on every POST, 401
// without a session. It stands in for controller/restapi so that the
// page can be checked here; the API's own tests check the real handlers.
type fakeAPI struct {
	t        *testing.T
	fixture  map[string]json.RawMessage
	mu       sync.Mutex
	sessions map[string]bool // cookie value -> live
	// endStreams, closed, ends the live streams open now; streamEnded
	// then refuses the stream and the session (401) until the next login,
	// and answers every other call: only the page's own check can find
	// that the session is gone.
	endStreams  chan struct{}
	streamEnded bool
	acked       map[float64]bool
	queries     []string // "path?query" of every API call, in order
	csrfBad     int      // POSTs refused for a missing or wrong CSRF token
	// certLogin: the listener takes client certificates (login/methods
	// says so, and login/certificate opens a session when the page sends
	// its header: a browser test cannot hold a certificate, the API's
	// tests check the real thing).
	certLogin bool
}

const (
	fakeToken = "admin-secret-token"
	fakeCSRF  = "csrf-0123456789"
	fakeName  = "ui-admin"
)

func newFakeAPI(t *testing.T) *fakeAPI {
	data, err := os.ReadFile("testdata/api.json")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAPI{t: t, sessions: map[string]bool{}, acked: map[float64]bool{}, endStreams: make(chan struct{})}
	if err := json.Unmarshal(data, &f.fixture); err != nil {
		t.Fatalf("testdata/api.json: %v", err)
	}
	return f
}

func (f *fakeAPI) list(key string) []map[string]any {
	var out []map[string]any
	if err := json.Unmarshal(f.fixture[key], &out); err != nil {
		f.t.Errorf("fixture %s: %v", key, err)
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := strings.TrimPrefix(r.URL.Path, "/api/v1/")
	f.queries = append(f.queries, p+"?"+r.URL.RawQuery)
	session := ""
	if c, err := r.Cookie("eg_session"); err == nil && f.sessions[c.Value] {
		session = c.Value
	}
	sessionBody := map[string]any{"name": fakeName, "csrfToken": fakeCSRF, "expires": time.Now().Add(12 * time.Hour).Format(time.RFC3339)}
	if r.Method == "GET" && p == "login/methods" {
		writeJSON(w, 200, map[string]bool{"token": true, "certificate": f.certLogin})
		return
	}
	if r.Method == "POST" && (p == "login" || p == "login/certificate") {
		var body struct{ Token string }
		switch {
		case p == "login/certificate" && (!f.certLogin || r.Header.Get("X-Eastguard-Login") != "certificate"):
			writeJSON(w, 403, map[string]string{"error": "a certificate login must send the header X-Eastguard-Login: certificate"})
			return
		case p == "login" && (json.NewDecoder(r.Body).Decode(&body) != nil || body.Token != fakeToken):
			writeJSON(w, 401, map[string]string{"error": "wrong admin token"})
			return
		}
		id := fmt.Sprintf("s%d", len(f.sessions)+1)
		f.sessions[id] = true
		f.streamEnded = false
		http.SetCookie(w, &http.Cookie{Name: "eg_session", Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 43200})
		writeJSON(w, 200, sessionBody)
		return
	}
	if session == "" || f.streamEnded && (p == "flows/stream" || p == "session") {
		writeJSON(w, 401, map[string]string{"error": "not logged in"})
		return
	}
	if r.Method != "GET" && r.Header.Get("X-CSRF-Token") != fakeCSRF {
		f.csrfBad++
		writeJSON(w, 403, map[string]string{"error": "missing or wrong CSRF token"})
		return
	}
	q := r.URL.Query()
	switch {
	case r.Method == "POST" && p == "logout":
		delete(f.sessions, session)
		http.SetCookie(w, &http.Cookie{Name: "eg_session", Value: "", Path: "/", MaxAge: -1})
		w.WriteHeader(204)
	case p == "session":
		writeJSON(w, 200, sessionBody)
	case p == "map":
		w.Write(f.fixture["map"])
	case p == "flows":
		var out []map[string]any
		for _, fl := range f.list("flows") {
			if v := q.Get("port"); v != "" && fmt.Sprint(fl["dstPort"]) != v {
				continue
			}
			if v := q.Get("verdict"); v != "" && fl["verdict"] != v {
				continue
			}
			out = append(out, fl)
		}
		writeJSON(w, 200, out)
	case p == "flows/stream":
		w.Header().Set("Content-Type", "text/event-stream")
		fl := f.list("flows")[0]
		fl["id"] = 200
		b, _ := json.Marshal(fl)
		fmt.Fprintf(w, ": hello\n\nevent: flow\ndata: %s\n\n", b)
		w.(http.Flusher).Flush()
		end := f.endStreams
		f.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-end:
		}
		f.mu.Lock()
	case p == "alerts":
		var out []map[string]any
		for _, a := range f.list("alerts") {
			if f.acked[a["id"].(float64)] {
				a["state"], a["acknowledgedBy"], a["acknowledgedAt"] = "acknowledged", fakeName, "2026-12-07T04:00:00Z"
			}
			if s := q.Get("state"); s != "" && a["state"] != s {
				continue
			}
			out = append(out, a)
		}
		writeJSON(w, 200, out)
	case r.Method == "GET" && strings.HasPrefix(p, "alerts/"):
		for _, a := range f.list("alerts") {
			if fmt.Sprint(a["id"]) == strings.TrimPrefix(p, "alerts/") {
				writeJSON(w, 200, a)
				return
			}
		}
		writeJSON(w, 404, map[string]any{"error": "no such alert"})
	case r.Method == "POST" && strings.HasPrefix(p, "alerts/") && strings.HasSuffix(p, "/ack"):
		var id float64
		fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(p, "alerts/"), "/ack"), "%g", &id)
		f.acked[id] = true
		writeJSON(w, 200, map[string]any{"id": id, "state": "acknowledged", "acknowledgedBy": fakeName})
	case p == "agents":
		// "in 5m": a certificate about to expire, relative to now.
		agents := f.list("agents")
		for _, a := range agents {
			if a["certExpiry"] == "in 5m" {
				a["certExpiry"] = time.Now().Add(5 * time.Minute).UTC().Format(time.RFC3339)
			}
		}
		writeJSON(w, 200, agents)
	case p == "policies":
		w.Write(f.fixture["policies"])
	case p == "policies/web-mesh/detail":
		w.Write(f.fixture["policyDetail"])
	case p == "explain" && q.Get("live") == "1":
		var x map[string]any
		json.Unmarshal(f.fixture["explain"], &x)
		x["live"] = map[string]any{"differs": true, "ends": []any{map[string]any{
			"end": "destination", "node": "node-b", "workload": "db-1", "direction": "ingress", "status": "differs", "differs": true,
			"controller": map[string]any{"version": 7, "hash": "sha256:b", "peerIdentity": 300, "verdict": "denied", "rule": "default-deny"},
			"agent": map[string]any{"appliedVersion": 6, "appliedHash": "sha256:a", "interfaces": 1, "mode": "enforce",
				"peerIdentity": 300, "verdict": "allowed", "rule": "<b>old/rule</b>"},
			"messages": []string{"node-b applies version 6, the controller pushed 7: version 7 not applied: map full",
				"node-b's datapath decides allowed by <b>old/rule</b>; the controller's version 7: denied by default-deny"}}}}
		writeJSON(w, 200, x)
	case p == "explain":
		w.Write(f.fixture["explain"])
	default:
		writeJSON(w, 404, map[string]string{"error": "no API " + r.Method + " " + r.URL.Path})
	}
}

func (f *fakeAPI) called(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, q := range f.queries {
		if strings.HasPrefix(q, prefix) {
			out = append(out, q)
		}
	}
	return out
}

// serveDashboard starts the dashboard and the fake API; more, if given, adds
// handlers in front of the fake API's.
func serveDashboard(t *testing.T, api *fakeAPI, more func(*http.ServeMux)) *httptest.Server {
	mux := http.NewServeMux()
	if more != nil {
		more(mux)
	}
	mux.Handle("/api/v1/", api)
	mux.Handle("/", Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// login opens the login page and logs in with the admin token.
func login(base string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(chromedp.Navigate(base+"/#/login"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)),
		chromedp.SetValue(chromedp.CSS(`[data-testid=login-token]`), fakeToken), chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)))
}

// TestBrowserDashboard drives every page of the built dashboard in headless
// Chromium against Handler() and a fake API: login, the service map's
// nodes and edges (a denied SSH edge, a dashed policy-only edge), flows
// filtered by port 22, an alert acknowledged with who did it, the stale
// agent marked, the policy YAML as text, logout; hostile label values
// render as text; no console error anywhere.
func TestBrowserDashboard(t *testing.T) {
	api := newFakeAPI(t)
	srv := serveDashboard(t, api, nil)
	ctx, consoleErrors := browsertest.Browser(t)
	shots := browsertest.ScreenshotDir(t)

	// Not logged in: the map sends to the login page.
	browsertest.Step(t, ctx, "open the map", chromedp.Navigate(srv.URL+"/#/map"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)))
	if h := browsertest.Eval[string](t, ctx, `location.hash`); h != "#/login" {
		t.Errorf("without a session the map went to %q, want #/login", h)
	}
	browsertest.Step(t, ctx, "a wrong token", chromedp.SendKeys(chromedp.CSS(`[data-testid=login-token]`), "wrong"),
		chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-message] [data-testid=error]`)))
	browsertest.Shot(t, ctx, shots, "login.png")
	browsertest.Step(t, ctx, "log in", chromedp.SetValue(chromedp.CSS(`[data-testid=login-token]`), fakeToken),
		chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid=map]`)))
	if user := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=user]').textContent`); user != fakeName {
		t.Errorf("header shows user %q, want %q", user, fakeName)
	}

	// The service map.
	browsertest.WaitFor(t, ctx, "the map", `window.egMap && window.egMap.ready`)
	nodes := browsertest.MapNodes(t, ctx)
	if want := []string{"db-1", "jump", "web-1", "web-2", "world:198.51.100.7"}; !slices.Equal(nodes, want) {
		t.Errorf("map nodes %q, want %q", nodes, want)
	}
	edges := browsertest.MapEdges(t, ctx)
	want := []browsertest.MapEdge{
		browsertest.Edge("jump", "db-1", "TCP", "denied", 22, false),
		browsertest.Edge("web-1", "db-1", "TCP", "allowed", 5432, false),
		browsertest.Edge("web-1", "db-1", "TCP", "policy", 6000, true),
		browsertest.Edge("web-1", "web-2", "TCP", "policy", 8080, true),
		browsertest.Edge("web-2", "db-1", "TCP", "allowed", 5432, false),
		browsertest.Edge("web-2", "db-1", "TCP", "policy", 6000, true),
		browsertest.Edge("world:198.51.100.7", "web-1", "TCP", "would-deny", 443, false),
	}
	if !slices.Equal(edges, want) {
		t.Errorf("map edges\n%+v\nwant\n%+v", edges, want)
	}
	// A policy port range is drawn with its range, and a range that
	// observed traffic used (5400-5500 holds 5432) is not drawn unused.
	if labels := browsertest.Eval[[]string](t, ctx, `window.egMap.edges().filter((e) => e.dashed && e.port === 6000).map((e) => e.label)`); !slices.Equal(labels, []string{"TCP/6000-6100", "TCP/6000-6100"}) {
		t.Errorf("the unused range's labels %q", labels)
	}
	browsertest.Shot(t, ctx, shots, "map.png")
	// Click a workload: its flows in the side panel; click the denied
	// edge: the explain answer.
	click := func(what string) {
		t.Helper()
		type xy struct{ X, Y float64 }
		p := browsertest.Eval[xy](t, ctx, fmt.Sprintf(`window.egMap.position(%q)`, what))
		browsertest.Step(t, ctx, "click "+what, chromedp.MouseClickXY(p.X, p.Y))
	}
	click("jump")
	browsertest.WaitFor(t, ctx, "the node panel", `document.querySelector('[data-testid=map-panel] [data-testid=panel-title]')?.textContent === 'jump'`)
	browsertest.WaitFor(t, ctx, "the node's flows", `document.querySelector('[data-testid=map-panel] [data-testid=flow-row]')`)
	if href := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=panel-flows-link]').getAttribute('href')`); href != "#/flows?workload=jump&since=1h" {
		t.Errorf("node panel flows link %q", href)
	}
	click("jump->db-1:22")
	browsertest.WaitFor(t, ctx, "the explain answer", `document.querySelector('[data-testid=explain-verdict]')`)
	if v := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=explain-verdict]').textContent`); v != "denied" {
		t.Errorf("explain verdict %q", v)
	}
	if got := api.called("explain?"); len(got) != 1 || got[0] != "explain?src=jump&dst=db-1&protocol=TCP&port=22" {
		t.Errorf("explain calls %q", got)
	}
	// Ask the nodes: each end's live status and what differs, as text
	// (an agent's rule name is never markup).
	browsertest.Step(t, ctx, "ask the nodes", chromedp.Click(chromedp.CSS(`[data-testid=explain-live-ask]`)))
	browsertest.WaitFor(t, ctx, "the live answer", `document.querySelectorAll('[data-testid=explain-live-end]').length === 1`)
	live := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=explain-live]').textContent`)
	for _, w := range []string{"destination: db-1 on node-b: differs", "node-b applies version 6, the controller pushed 7: version 7 not applied", "<b>old/rule</b>"} {
		if !strings.Contains(live, w) {
			t.Errorf("live explain panel lacks %q: %q", w, live)
		}
	}
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('[data-testid=explain-live] b').length`); n != 0 {
		t.Errorf("an agent's rule name became %d elements", n)
	}
	if got := api.called("explain?"); len(got) != 2 || got[1] != "explain?src=jump&dst=db-1&protocol=TCP&port=22&live=1" {
		t.Errorf("explain calls %q", got)
	}
	browsertest.Shot(t, ctx, shots, "map-edge.png")
	// Grouped by app: web-1 and web-2 are one collapsible group.
	browsertest.Step(t, ctx, "group by app", browsertest.SelectOption("map-group", "app"),
		chromedp.Click(chromedp.CSS(`[data-testid=map-collapse-all]`)))
	browsertest.WaitFor(t, ctx, "collapsed groups", `window.egMap.nodes().includes('group:app=web')`)
	grouped := browsertest.MapEdges(t, ctx)
	if !slices.ContainsFunc(grouped, func(e browsertest.MapEdge) bool {
		return e.Src == "group:app=web" && e.Dst == "group:app=db" && e.Port == 5432 && e.Verdict == "allowed"
	}) {
		t.Errorf("collapsed map edges %+v: want web's two edges to db aggregated", grouped)
	}
	browsertest.Step(t, ctx, "group by the hostile key", browsertest.SelectOption("map-group", "evil"))
	browsertest.WaitFor(t, ctx, "hostile group", `window.egMap.groups().some(g => g.name === 'group:evil=<img src=x onerror=alert(1)>')`)

	// Flows filtered by port 22, as a link from elsewhere would.
	browsertest.Step(t, ctx, "flows port 22", chromedp.Navigate(srv.URL+"/#/flows?port=22"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=flow-row]`)))
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('[data-testid=flow-row]').length`); n != 2 {
		t.Errorf("flows?port=22 shows %d rows, want 2", n)
	}
	if got := api.called("flows?"); len(got) == 0 || !strings.Contains(got[len(got)-1], "port=22") {
		t.Errorf("the flows page asked %q, want port=22", got)
	}
	if v := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=filter-port]').value`); v != "22" {
		t.Errorf("port filter shows %q", v)
	}
	if !browsertest.Eval[bool](t, ctx, `[...document.querySelectorAll('[data-testid=flow-row] td')].some(td => td.textContent === '<img src=x onerror=alert(2)>')`) {
		t.Error("the hostile rule name is not shown as text")
	}
	if href := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=export-csv]').getAttribute('href')`); href != "api/v1/flows?port=22&format=csv" {
		t.Errorf("CSV export link %q", href)
	}
	browsertest.Step(t, ctx, "live", chromedp.Click(chromedp.CSS(`[data-testid=live]`)))
	browsertest.WaitFor(t, ctx, "a live flow", `document.querySelector('[data-testid=flow-row]').dataset.id === '200'`)
	// The session ends under the live stream: its reconnect is refused,
	// and the page, told nothing by EventSource, asks for its session and
	// goes to the login page; after logging in it is back on the flows.
	api.mu.Lock()
	api.streamEnded = true
	close(api.endStreams)
	api.endStreams = make(chan struct{})
	api.mu.Unlock()
	browsertest.WaitFor(t, ctx, "the login page after the live stream was refused", `location.hash.startsWith('#/login')`)
	browsertest.Step(t, ctx, "log in again", chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)),
		chromedp.SetValue(chromedp.CSS(`[data-testid=login-token]`), fakeToken),
		chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid=flow-row]`)))
	browsertest.Shot(t, ctx, shots, "flows.png")

	// Alerts: acknowledge, then see who did.
	browsertest.Step(t, ctx, "alerts", chromedp.Navigate(srv.URL+"/#/alerts"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=ack]`)))
	if href := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=alert-flows]').getAttribute('href')`); !strings.Contains(href, "workload=jump") || !strings.Contains(href, "port=22") {
		t.Errorf("alert flows link %q", href)
	}
	browsertest.Step(t, ctx, "acknowledge", chromedp.Click(chromedp.CSS(`[data-testid=ack]`)), chromedp.WaitVisible(chromedp.CSS(`[data-testid=no-alerts]`)))
	browsertest.Step(t, ctx, "acknowledged tab", chromedp.Click(chromedp.CSS(`[data-testid=tab-acknowledged]`)), chromedp.WaitVisible(chromedp.CSS(`[data-testid=acked-by]`)))
	if by := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=acked-by]').textContent`); !strings.HasPrefix(by, fakeName+" at ") {
		t.Errorf("acknowledged by %q, want %s at ...", by, fakeName)
	}
	// The webhook link: #/alerts/<id>, with the hostile label as text.
	browsertest.Step(t, ctx, "alert link", chromedp.Navigate(srv.URL+"/#/alerts/7"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=alert-detail]`)))
	if !browsertest.Eval[bool](t, ctx, `document.querySelector('[data-testid=alert-detail]').textContent.includes('evil=<img src=x onerror=alert(1)>')`) {
		t.Error("the alert's hostile label is not shown as text")
	}
	browsertest.Shot(t, ctx, shots, "alert.png")
	// A built-in node alert: no flows behind it, the node's row instead,
	// its detail (attacker-influenced text: an agent writes it) as text.
	browsertest.Step(t, ctx, "node alert", chromedp.Navigate(srv.URL+"/#/alerts/9"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=alert-detail]`)))
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('[data-testid=alert-flows]').length`); n != 0 {
		t.Errorf("a node alert links to flows (%d links)", n)
	}
	if d := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=alert-detail]').textContent`); !strings.Contains(d, "Whatlink-detached") || !strings.Contains(d, "<b>by hand</b>") {
		t.Errorf("node alert detail %q: want What link-detached and the detail as text", d)
	}
	browsertest.Step(t, ctx, "node alert's node", chromedp.Click(chromedp.CSS(`[data-testid=alert-node]`)), chromedp.WaitVisible(chromedp.CSS(`[data-testid=agents-filter]`)))
	browsertest.WaitFor(t, ctx, "the agents filtered to node-b", `document.querySelector('[data-testid=agents-filter]').value === 'node-b' && [...document.querySelectorAll('[data-testid=agent-row]')].every((r) => r.hidden === (r.dataset.node !== 'node-b'))`)

	// Agents: the one behind the latest version stands out.
	browsertest.Step(t, ctx, "agents", chromedp.Navigate(srv.URL+"/#/agents"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=agent-row]`)))
	att := browsertest.Eval[map[string]string](t, ctx, `Object.fromEntries([...document.querySelectorAll('[data-testid=agent-row]')].map(r => [r.dataset.node, r.dataset.attention]))`)
	// node-b is behind the latest version, node-c's certificate expires in
	// 5 minutes, node-d is disconnected with an error; node-a is fine.
	if want := map[string]string{"node-a": "false", "node-b": "true", "node-c": "true", "node-d": "true"}; !maps.Equal(att, want) {
		t.Errorf("agents' attention %v, want %v", att, want)
	}
	why := browsertest.Eval[[]string](t, ctx, `[...document.querySelectorAll('[data-testid=agent-attention]')].map(c => c.textContent)`)
	if want := []string{"", "⚠ behind latest version", "⚠ certificate expiring", "⚠ disconnected, last error"}; !slices.Equal(why, want) {
		t.Errorf("attention markers %q, want %q", why, want)
	}
	browsertest.WaitFor(t, ctx, "attention counts", `document.querySelector('[data-testid=agents-attention]')`)
	if s := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=agents-attention]').textContent`); s != "3 agents need attention" {
		t.Errorf("header says %q", s)
	}
	browsertest.Shot(t, ctx, shots, "agents.png")
	// The node filter hides the other rows, and clearing it shows them all.
	visible := `[...document.querySelectorAll('[data-testid=agent-row]')].filter(r => !r.hidden).map(r => r.dataset.node).join(',')`
	browsertest.Step(t, ctx, "filter agents", chromedp.SendKeys(chromedp.CSS(`[data-testid=agents-filter]`), "node-c"))
	browsertest.WaitFor(t, ctx, "agents filtered to node-c", visible+` === 'node-c'`)
	browsertest.Step(t, ctx, "clear the agents filter", chromedp.Evaluate[chromedp.Void](
		`(() => { const f = document.querySelector('[data-testid=agents-filter]'); f.value = ''; f.dispatchEvent(new Event('input')); })()`))
	browsertest.WaitFor(t, ctx, "every agent shown", visible+` === 'node-a,node-b,node-c,node-d'`)

	// Policies: the monitor policy's YAML as text, would-deny flows
	// linked (over the last hour, the detail's default range).
	browsertest.Step(t, ctx, "policies", chromedp.Navigate(srv.URL+"/#/policies"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=monitor]`)))
	browsertest.Step(t, ctx, "policy detail", chromedp.Navigate(srv.URL+"/#/policies/web-mesh"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=policy-yaml]`)))
	if y := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=policy-yaml]').textContent`); !strings.Contains(y, "<script>alert(3)</script>") {
		t.Errorf("policy YAML %q", y)
	}
	if href := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=would-deny-link]').getAttribute('href')`); href != "#/flows?rule=peers&verdict=would-deny&since=1h" {
		t.Errorf("would-deny link %q", href)
	}
	if !browsertest.Eval[bool](t, ctx, browsertest.NoImg) {
		t.Error("an <img> or inline script made it into the page")
	}

	// Logout: the session is gone; the next page asks to log in again.
	browsertest.Step(t, ctx, "logout", chromedp.Click(chromedp.CSS(`[data-testid=logout]`)), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)))
	browsertest.Step(t, ctx, "after logout", chromedp.Navigate(srv.URL+"/#/agents"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)))
	if api.csrfBad != 0 {
		t.Errorf("%d POSTs went without the CSRF token", api.csrfBad)
	}
	browsertest.NoConsoleErrors(t, consoleErrors(), nil)
}

// TestBrowserAPIError: an API answering other than the contract says gets
// a readable message on the page, not a console error.
func TestBrowserAPIError(t *testing.T) {
	srv := serveDashboard(t, newFakeAPI(t), func(mux *http.ServeMux) {
		mux.HandleFunc("/api/v1/agents", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 500, map[string]string{"error": "store unavailable"})
		})
		mux.HandleFunc("/api/v1/policies", func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("<html>proxy error</html>"))
		})
	})
	ctx, consoleErrors := browsertest.Browser(t)
	browsertest.Step(t, ctx, "log in", login(srv.URL), chromedp.WaitVisible(chromedp.CSS(`[data-testid=map]`)))
	for page, want := range map[string]string{"agents": "store unavailable", "policies": "not JSON"} {
		browsertest.Step(t, ctx, page, chromedp.Navigate(srv.URL+"/#/"+page), chromedp.WaitVisible(chromedp.CSS(`[data-testid=page-`+page+`] [data-testid=error]`)))
		if msg := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=page-`+page+`] [data-testid=error]').textContent`); !strings.Contains(msg, want) {
			t.Errorf("%s: error %q, want it to say %q", page, msg, want)
		}
	}
	// The 500 itself is logged by the browser as a failed resource; that
	// is the server's error, not the page's.
	browsertest.NoConsoleErrors(t, consoleErrors(), func(e string) bool { return strings.Contains(e, "status of 500") })
}

// TestBrowserMapAPIError: the map's data failing after the graph library
// came (the spare cytoscape instance, made while the data is on its way,
// drawing in the map's box) shows the error and destroys the spare: no
// canvas is left in the box, nothing drawn, no error of the page's own on
// the console.
func TestBrowserMapAPIError(t *testing.T) {
	release := make(chan struct{})
	srv := serveDashboard(t, newFakeAPI(t), func(mux *http.ServeMux) {
		mux.HandleFunc("/api/v1/map", func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			case <-time.After(time.Minute): // bounded: the test failed before releasing it
			}
			writeJSON(w, 500, map[string]string{"error": "store unavailable"})
		})
	})
	ctx, consoleErrors := browsertest.Browser(t)
	browsertest.Step(t, ctx, "log in", login(srv.URL))
	browsertest.WaitFor(t, ctx, "the spare instance's canvases", `document.querySelectorAll('[data-testid=map] canvas').length > 0`)
	close(release)
	browsertest.WaitFor(t, ctx, "the map's error", `document.querySelector('[data-testid=page-map] [data-testid=error]') !== null`)
	if msg := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=page-map] [data-testid=error]').textContent`); !strings.Contains(msg, "store unavailable") {
		t.Errorf("map error %q, want it to say store unavailable", msg)
	}
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('[data-testid=map] canvas').length`); n != 0 {
		t.Errorf("%d canvases left in the map's box after its data failed, want the spare destroyed", n)
	}
	if browsertest.Eval[bool](t, ctx, `!!(window.egMap && window.egMap.ready)`) {
		t.Error("the map says it is drawn after its data failed")
	}
	browsertest.NoConsoleErrors(t, consoleErrors(), func(e string) bool { return strings.Contains(e, "status of 500") })
}

// TestBrowserCertificateLogin: where the listener takes client
// certificates, the login page offers them, and the button logs in
// (sending the header that keeps other sites out); where it does not,
// no button.
func TestBrowserCertificateLogin(t *testing.T) {
	api := newFakeAPI(t)
	srv := serveDashboard(t, api, nil)
	ctx, consoleErrors := browsertest.Browser(t)
	browsertest.Step(t, ctx, "the login page", chromedp.Navigate(srv.URL+"/#/login"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)))
	testutil.Eventually(t, 30*time.Second, "the login page to ask for the login methods", func() error {
		api.mu.Lock()
		defer api.mu.Unlock()
		if !slices.ContainsFunc(api.queries, func(q string) bool { return strings.HasPrefix(q, "login/methods?") }) {
			return errors.New("not asked yet")
		}
		return nil
	})
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('[data-testid=login-certificate]').length`); n != 0 {
		t.Errorf("%d certificate buttons on a listener without certificate login", n)
	}

	api.mu.Lock()
	api.certLogin = true
	api.mu.Unlock()
	browsertest.Step(t, ctx, "reload the login page", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-certificate]`)))
	browsertest.Step(t, ctx, "log in with the certificate", chromedp.Click(chromedp.CSS(`[data-testid=login-certificate]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid=map]`)))
	if who := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=user]') ? document.querySelector('[data-testid=user]').textContent : ''`); !strings.Contains(who, fakeName) {
		t.Errorf("after a certificate login the header shows %q, want %q", who, fakeName)
	}
	browsertest.NoConsoleErrors(t, consoleErrors(), nil)
}

// largeMap is a service map of n workloads in apps of 50, each talking
// to the next app's workloads and some denied SSH across.
func largeMap(n int) []byte {
	type wl struct {
		Name   string            `json:"name"`
		Node   string            `json:"node"`
		Labels map[string]string `json:"labels"`
	}
	type edge struct {
		Src      string `json:"src"`
		Dst      string `json:"dst"`
		Protocol string `json:"protocol"`
		Port     int    `json:"port"`
		Verdict  string `json:"verdict"`
		Flows    int    `json:"flows"`
	}
	var m struct {
		Workloads   []wl             `json:"workloads"`
		Edges       []edge           `json:"edges"`
		PolicyEdges []map[string]any `json:"policyEdges"` // PolicyBlocks
		Truncated   bool             `json:"truncated"`
	}
	name := func(i int) string { return fmt.Sprintf("w%04d", i) }
	for i := range n {
		m.Workloads = append(m.Workloads, wl{name(i), fmt.Sprintf("node-%d", i%40), map[string]string{"app": fmt.Sprintf("app%02d", i/50), "role": "r"}})
		m.Edges = append(m.Edges, edge{name(i), name((i + 50) % n), "TCP", 8080, "allowed", 3})
		if i%7 == 0 {
			m.Edges = append(m.Edges, edge{name(i), name((i + 13) % n), "TCP", 22, "denied", 1})
		}
	}
	// Every workload may reach every other on TCP 9000, unused: one
	// block of a million pairs, the case that made the API send blocks.
	var all []string
	for i := range n {
		all = append(all, name(i))
	}
	m.PolicyEdges = append(m.PolicyEdges, map[string]any{"srcs": all, "dsts": all, "protocol": "TCP", "port": 9000, "policy": "mesh", "rule": "all"})
	b, _ := json.Marshal(m)
	return b
}

// TestBrowserMapLarge: 1,000 workloads start grouped by app and
// collapsed (20 group nodes), one edge per pair of groups drawn with its
// most severe verdict; a group expands from its panel to its 50 members,
// and "Expand all" draws all 1,000. Each redraw marks the page ready
// again (data-ready). No time is asserted (BenchmarkBrowserPages measures
// it); the log has the figures.
func TestBrowserMapLarge(t *testing.T) {
	api := newFakeAPI(t)
	api.fixture["map"] = largeMap(1000)
	srv := serveDashboard(t, api, nil)
	ctx, consoleErrors := browsertest.Browser(t)
	start := time.Now()
	browsertest.Step(t, ctx, "log in", login(srv.URL))
	browsertest.WaitFor(t, ctx, "the map", `window.egMap && window.egMap.ready`)
	grouped := time.Since(start)
	groups := browsertest.Eval[[]struct {
		Name      string
		Collapsed bool
		Members   int
	}](t, ctx, `window.egMap.groups()`)
	if len(groups) != 20 {
		t.Errorf("%d groups, want 20 (app00..app19)", len(groups))
	}
	for _, g := range groups {
		if !g.Collapsed || g.Members != 50 {
			t.Errorf("group %+v: want collapsed with 50 members", g)
		}
	}
	if n := len(browsertest.Eval[[]string](t, ctx, `window.egMap.nodes()`)); n != 20 {
		t.Errorf("%d nodes drawn collapsed, want 20", n)
	}
	// Between two collapsed groups, one edge: app00 -> app01 carries
	// allowed 8080 and denied 22 (w0042 -> w0055), drawn denied, both
	// ports listed.
	// The unused allow-all on TCP 9000: one dashed edge per pair of
	// groups (400, a group to itself included), none where a pair of
	// groups has traffic on that port (none does).
	edges := browsertest.MapEdges(t, ctx)
	pairs := map[[2]string]int{}
	unused := 0
	for _, e := range edges {
		if e.Dashed {
			unused++
			if e.Port != 9000 {
				t.Errorf("unused policy edge %+v: want TCP 9000", e)
			}
			continue
		}
		pairs[[2]string{e.Src, e.Dst}]++
	}
	for p, n := range pairs {
		if n != 1 {
			t.Errorf("%d edges %s -> %s, want one per pair of collapsed groups", n, p[0], p[1])
		}
	}
	if unused != 400 {
		t.Errorf("%d unused policy edges drawn between 20 collapsed groups, want 400", unused)
	}
	if !slices.Contains(edges, browsertest.Edge("group:app=app00", "group:app=app01", "", "denied", 0, false)) {
		t.Errorf("collapsed edges %+v: want group:app=app00 -> group:app=app01 denied (its worst), no single port", edges)
	}
	ready := func() int {
		return browsertest.Eval[int](t, ctx, `Number(document.querySelector('[data-testid=page-map]').getAttribute('data-ready'))`)
	}
	seq := ready()
	if seq == 0 {
		t.Fatal("the map page is drawn but not marked data-ready")
	}
	// One group expanded from its panel: its 50 members drawn.
	type xy struct{ X, Y float64 }
	p := browsertest.Eval[xy](t, ctx, `window.egMap.position('group:app=app03')`)
	browsertest.Step(t, ctx, "click group app03", chromedp.MouseClickXY(p.X, p.Y), chromedp.WaitVisible(chromedp.CSS(`[data-testid=group-toggle]`)))
	browsertest.Step(t, ctx, "expand group app03", chromedp.Click(chromedp.CSS(`[data-testid=group-toggle]`)))
	browsertest.WaitFor(t, ctx, "app03 expanded", fmt.Sprintf(`Number(document.querySelector('[data-testid=page-map]').getAttribute('data-ready')) > %d`, seq))
	nodes := browsertest.MapNodes(t, ctx)
	if len(nodes) != 19+50 || !slices.Contains(nodes, "w0150") || !slices.Contains(nodes, "w0199") || slices.Contains(nodes, "group:app=app03") {
		t.Errorf("after expanding app03, %d nodes drawn, want the 19 other groups and app03's 50 workloads (w0150..w0199)", len(nodes))
	}
	seq = ready()
	start = time.Now()
	browsertest.Step(t, ctx, "expand all", chromedp.Click(chromedp.CSS(`[data-testid=map-expand-all]`)))
	browsertest.WaitFor(t, ctx, "expanded", fmt.Sprintf(`Number(document.querySelector('[data-testid=page-map]').getAttribute('data-ready')) > %d`, seq))
	expanded := time.Since(start)
	if n := len(browsertest.MapNodes(t, ctx)); n != 1000 {
		t.Errorf("%d nodes drawn after expand all, want the 1,000 workloads", n)
	}
	groups = browsertest.Eval[[]struct {
		Name      string
		Collapsed bool
		Members   int
	}](t, ctx, `window.egMap.groups()`)
	if len(groups) != 20 || slices.ContainsFunc(groups, func(g struct {
		Name      string
		Collapsed bool
		Members   int
	}) bool {
		return g.Collapsed
	}) {
		t.Errorf("groups after expand all %+v: want the 20, expanded (drawn around their members)", groups)
	}
	// Not grouped: the 1,000 workloads drawn, every one inside the map.
	seq = ready()
	browsertest.Step(t, ctx, "group by none", browsertest.SelectOption("map-group", ""))
	browsertest.WaitFor(t, ctx, "ungrouped", fmt.Sprintf(`Number(document.querySelector('[data-testid=page-map]').getAttribute('data-ready')) > %d`, seq))
	outside := browsertest.Eval[[]string](t, ctx, `(() => {
		const box = document.querySelector('[data-testid=map]').getBoundingClientRect();
		return window.egMap.nodes().filter((n) => {
			const p = window.egMap.position(n);
			return !p || p.x < box.left || p.x > box.right || p.y < box.top || p.y > box.bottom;
		});
	})()`)
	if n := len(browsertest.MapNodes(t, ctx)); n != 1000 || len(outside) > 0 {
		t.Errorf("ungrouped: %d nodes drawn, %d of them outside the map (%q...), want 1,000 all inside", n, len(outside), outside[:min(5, len(outside))])
	}
	// Ungrouped, the allow-all is a million unused pairs: the page draws
	// the first 1,000 and says so.
	if n := browsertest.Eval[int](t, ctx, `window.egMap.edges().filter((e) => e.dashed).length`); n != 1000 {
		t.Errorf("ungrouped: %d unused policy edges drawn, want the bound, 1,000", n)
	}
	if note := browsertest.Eval[string](t, ctx, `document.querySelector('[data-testid=map-note]').textContent`); !strings.Contains(note, "past 1000 are not drawn") {
		t.Errorf("ungrouped: the map's note %q does not say policy edges were left out", note)
	}
	t.Logf("1,000 workloads: grouped map ready %v after login; expanded (1,000 nodes, %d edges) in %v",
		grouped.Round(time.Millisecond), len(browsertest.Eval[[]any](t, ctx, `window.egMap.edges()`)), expanded.Round(time.Millisecond))
	browsertest.NoConsoleErrors(t, consoleErrors(), nil)
}
