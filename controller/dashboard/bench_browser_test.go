package dashboard_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/dashboard/browsertest"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite/sqlitetest"
)

// The scale of issue 17's performance target: 1,000 workloads (20 apps
// of 50 replicas on 100 nodes) and 1,000,000 stored flows between them,
// the same flows BenchmarkDashboard measures the store's queries on.
const (
	benchApps     = 20
	benchReplicas = 50
	benchNodes    = 100
	benchFlows    = 1_000_000
	benchAlerts   = 300 // open, and as many acknowledged
)

// benchPolicy: workload wl-i (the name sqlitetest's flows use) is app
// app<i/50>, role frontend, api or backend by i%3, on node-<i%100>,
// address 10.1.<i/250>.<i%250> (the flows' addresses). Policy shop lets
// each app reach the next on TCP 8080 (19 rules of 50 x 50 workloads)
// and the api role reach app00 (the database) on 5432: 20 allow rules,
// about 64,000 admitted workload pairs (the map API sends the first
// 20,000 as policy edges).
func benchPolicy() string {
	var b strings.Builder
	roles := []string{"frontend", "api", "backend"}
	for i := range benchApps * benchReplicas {
		fmt.Fprintf(&b, "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: wl-%d, labels: {app: app%02d, role: %s}}\n"+
			"spec: {node: node-%d, interface: veth-wl%d, addresses: [10.1.%d.%d]}\n---\n",
			i, i/benchReplicas, roles[i%3], i%benchNodes, i, i/250, i%250)
	}
	b.WriteString("apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: shop}\nspec:\n  rules:\n")
	for a := range benchApps - 1 {
		fmt.Fprintf(&b, "    - name: app%02d-to-app%02d\n      from: [{selector: {app: app%02d}}]\n      to: [{selector: {app: app%02d}}]\n      ports: [{protocol: TCP, port: 8080}]\n",
			a, a+1, a, a+1)
	}
	b.WriteString("    - name: to-db\n      from: [{selector: {role: api}}]\n      to: [{selector: {app: app00}}]\n      ports: [{protocol: TCP, port: 5432}]\n")
	return b.String()
}

// benchAlertsSeed stores benchAlerts open alerts and as many
// acknowledged ones.
func benchAlertsSeed(h *controllertest.Controller, now time.Time) {
	var as []*store.Alert
	for i := range 2 * benchAlerts {
		src, dst := fmt.Sprintf("wl-%d", i%1000), fmt.Sprintf("wl-%d", (i*7+3)%1000)
		a := &store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: fmt.Sprintf("unexpected-ssh|%s|%s|TCP|%d", src, dst, i),
			State: store.AlertOpen, Count: uint64(1 + i%9), Source: src, Destination: dst, SrcWorkload: src, DstWorkload: dst,
			SrcAddr: netip.AddrFrom4([4]byte{10, 1, byte(i % 1000 / 250), byte(i % 250)}), DstAddr: netip.MustParseAddr("10.1.0.1"),
			Port: 22, Ports: []uint16{22}, PortCount: 1, Protocol: "TCP", Verdict: "denied", DecidingRule: "default-deny",
			Node: fmt.Sprintf("node-%d", i%benchNodes), FirstSeen: now.Add(-time.Duration(i) * time.Minute), LastSeen: now.Add(-time.Minute),
			Created: now.Add(-time.Duration(i) * time.Minute), Window: 24 * time.Hour}
		if i >= benchAlerts {
			a.State, a.AcknowledgedBy, a.AcknowledgedAt = store.AlertAcknowledged, "alice", now.Add(-time.Minute)
		}
		as = append(as, a)
	}
	h.InsertAlerts(as...)
}

// waitReadyJS is a page expression (a Promise) that resolves when the
// page root matching sel has data-ready above after (dom.js markReady: the
// render is complete and painted, the page answers input), to
// performance.now(): milliseconds since the navigation started.
func waitReadyJS(sel string, after int) string {
	return fmt.Sprintf(`(async () => {
	const deadline = performance.now() + 60000;
	for (;;) {
		const el = document.querySelector(%q);
		if (el && Number(el.getAttribute('data-ready')) > %d) return performance.now();
		if (document.querySelector('[data-testid=error]')) throw new Error('the page shows an error: ' + document.querySelector('[data-testid=error]').textContent);
		if (performance.now() > deadline) throw new Error('not ready in 60 s');
		await new Promise((r) => setTimeout(r, 2));
	}
})()`, sel, after)
}

// readySeq is the data-ready number of the page root matching sel.
func readySeq(b *testing.B, ctx context.Context, sel string) int {
	b.Helper()
	return browsertest.Eval[int](b, ctx, fmt.Sprintf(`Number(document.querySelector(%q).getAttribute('data-ready'))`, sel))
}

// pageBench is one page's measurement: open is the route, root the page
// root's selector; input, run in the page once it is ready, is the user's
// first action (a Promise resolving to performance.now() when its result
// is on the page), or, for the map, nil (the canvas click is sent by
// chromedp as real mouse input).
type pageBench struct {
	name, route, root string
	input             func(seq int) string
}

// BenchmarkBrowserPages measures each dashboard page in headless
// Chromium against a real in-process controller (controllertest: its
// store, REST API and sessions) holding 1,000 workloads and 1,000,000
// flows (about 42,000 in the last hour, the map's default range), with a
// live session. Per page, from the start of a full navigation (index.html,
// GET /api/v1/session, the page's data):
//
//   - ready-ms: the page's first render complete and painted (its root's
//     data-ready attribute, dom.js markReady);
//   - interactive-ms: ready, then the first input (sent as soon as the
//     page is ready) answered on the page: the map a click on a group node
//     showing its panel; flows a port filter applied and its rows shown;
//     alerts the acknowledged tab shown; agents the node filter applied;
//     policies a policy's detail shown.
//
// And the map's expand-all: from the click on "Expand all" (the map
// grouped and collapsed) to the 1,000 workloads drawn (expand-all-ms).
// Each figure is the median of the iterations. Seeding takes about a
// minute, once per run. Measure with
//
//	go test -run '^$' -bench BrowserPages -benchtime 5x ./controller/dashboard/
func BenchmarkBrowserPages(b *testing.B) {
	browsertest.ChromiumPath(b) // skip before seeding
	h := controllertest.New(b)
	start := time.Now()
	h.Apply(benchPolicy())
	now := h.Clock.Now()
	sqlitetest.SeedFlows(b, h.Dir, sqlitetest.Seed{Flows: benchFlows, Workloads: benchApps * benchReplicas, Span: 24 * time.Hour, Now: now})
	benchAlertsSeed(h, now)
	b.Logf("seeded %d workloads, %d flows, %d alerts in %s", benchApps*benchReplicas, benchFlows, 2*benchAlerts, time.Since(start).Round(time.Millisecond))
	cfg := h.ServeAPI()
	base := cfg.Server
	ctx, consoleErrors := browsertest.Browser(b)
	browsertest.Step(b, ctx, "log in", chromedp.Navigate(base+"/#/login"), chromedp.WaitVisible(chromedp.CSS(`[data-testid=login-token]`)),
		chromedp.SetValue(chromedp.CSS(`[data-testid=login-token]`), cfg.Token), chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid=map]`)))
	b.Cleanup(func() {
		browsertest.NoConsoleErrors(b, consoleErrors(), nil)
	})

	pages := []pageBench{
		{name: "map", route: "#/map", root: `[data-testid=page-map]`},
		{name: "flows", route: "#/flows", root: `[data-testid=page-flows]`, input: func(seq int) string {
			// The filter form submitted with port 22: every row shown is to port 22.
			return `(async () => {
	const f = document.querySelector('[data-testid=flow-filters]');
	f.elements.port.value = '22';
	f.requestSubmit();
	const t = await ` + waitReadyJS(`[data-testid=page-flows]`, seq) + `;
	const rows = [...document.querySelectorAll('[data-testid=flow-row]')];
	if (rows.length === 0 || !rows.every((r) => r.cells[3].textContent.endsWith(':22'))) throw new Error('port 22 filter: ' + rows.length + ' rows, not all to port 22');
	return t;
})()`
		}},
		{name: "alerts", route: "#/alerts", root: `[data-testid=page-alerts]`, input: func(seq int) string {
			return `(async () => {
	document.querySelector('[data-testid=tab-acknowledged]').click();
	const t = await ` + waitReadyJS(`[data-testid=page-alerts]`, seq) + `;
	const rows = document.querySelectorAll('[data-testid=alert-row][data-state=acknowledged]').length;
	if (rows !== ` + fmt.Sprint(benchAlerts) + `) throw new Error(rows + ' acknowledged alerts shown');
	return t;
})()`
		}},
		{name: "agents", route: "#/agents", root: `[data-testid=page-agents]`, input: func(int) string {
			// The filter answers synchronously; the result is on the
			// page when its input event has been handled and painted.
			return `(async () => {
	const f = document.querySelector('[data-testid=agents-filter]');
	f.value = 'node-42';
	f.dispatchEvent(new Event('input'));
	await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
	const shown = [...document.querySelectorAll('[data-testid=agent-row]')].filter((r) => !r.hidden).map((r) => r.dataset.node);
	if (shown.length !== 1 || shown[0] !== 'node-42') throw new Error('agents filtered to ' + shown.join(','));
	return performance.now();
})()`
		}},
		{name: "policies", route: "#/policies", root: `[data-testid=page-policies]`, input: func(seq int) string {
			return `(async () => {
	document.querySelector('[data-testid=policy-row] a').click();
	const t = await ` + waitReadyJS(`[data-testid=page-policies]`, seq) + `;
	if (!document.querySelector('[data-testid=policy-yaml]')) throw new Error('no policy detail');
	return t;
})()`
		}},
	}
	for _, p := range pages {
		b.Run(p.name, func(b *testing.B) {
			var ready, interactive, api []float64
			for b.Loop() {
				browsertest.Step(b, ctx, "blank", chromedp.Navigate("about:blank"))
				browsertest.Step(b, ctx, "open "+p.route, chromedp.Navigate(base+"/"+p.route))
				r := browsertest.Eval[float64](b, ctx, waitReadyJS(p.root, 0))
				// The slowest API answer the page waited for before it was
				// ready (request to last byte, Resource Timing): how much of
				// ready-ms is the controller's.
				api = append(api, browsertest.Eval[float64](b, ctx, `Math.max(0, ...performance.getEntriesByType('resource')
	.filter((e) => e.name.includes('/api/v1/') && e.responseEnd <= `+fmt.Sprint(r)+`)
	.map((e) => e.responseEnd - e.startTime))`))
				seq := readySeq(b, ctx, p.root)
				var done float64
				if p.input != nil {
					done = browsertest.Eval[float64](b, ctx, p.input(seq))
				} else {
					done = clickFirstGroup(b, ctx)
				}
				ready, interactive = append(ready, r), append(interactive, done)
			}
			b.ReportMetric(median(ready), "ready-ms")
			b.ReportMetric(median(interactive), "interactive-ms")
			b.ReportMetric(median(api), "api-ms")
		})
	}
	b.Run("map-expand-all", func(b *testing.B) {
		var expand []float64
		for b.Loop() {
			browsertest.Step(b, ctx, "blank", chromedp.Navigate("about:blank"))
			browsertest.Step(b, ctx, "open the map", chromedp.Navigate(base+"/#/map"))
			browsertest.Eval[float64](b, ctx, waitReadyJS(`[data-testid=page-map]`, 0))
			seq := readySeq(b, ctx, `[data-testid=page-map]`)
			ms := browsertest.Eval[float64](b, ctx, `(async () => {
	const t0 = performance.now();
	document.querySelector('[data-testid=map-expand-all]').click();
	const t = await `+waitReadyJS(`[data-testid=page-map]`, seq)+`;
	const n = window.egMap.nodes().filter((x) => x.startsWith('wl-')).length;
	if (n !== 1000) throw new Error(n + ' workloads drawn after expand all');
	return t - t0;
})()`)
			expand = append(expand, ms)
		}
		b.ReportMetric(median(expand), "expand-all-ms")
	})
}

// clickFirstGroup clicks, with the mouse, the map's first group node and
// returns when (performance.now()) the side panel shows that group.
func clickFirstGroup(b *testing.B, ctx context.Context) float64 {
	b.Helper()
	type point struct{ X, Y float64 }
	groups := browsertest.Eval[[]struct{ Name string }](b, ctx, `window.egMap.groups()`)
	if len(groups) == 0 {
		b.Fatal("the map has no group: want 1,000 workloads grouped")
	}
	pos := browsertest.Eval[*point](b, ctx, fmt.Sprintf(`window.egMap.position(%q)`, groups[0].Name))
	if pos == nil {
		b.Fatalf("group %s is not drawn", groups[0].Name)
	}
	browsertest.Step(b, ctx, "click a group", chromedp.MouseClickXY(pos.X, pos.Y))
	return browsertest.Eval[float64](b, ctx, `(async () => {
	const deadline = performance.now() + 60000;
	while (!document.querySelector('[data-testid=group-toggle]')) {
		if (performance.now() > deadline) throw new Error('no group panel in 60 s');
		await new Promise((r) => setTimeout(r, 2));
	}
	return performance.now();
})()`)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
