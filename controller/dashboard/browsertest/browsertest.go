// Package browsertest holds test helpers for driving the dashboard in
// headless Chromium (chromedp): finding the browser, starting it with its
// console collected, steps and evaluations bounded in time, polling,
// screenshots. The dashboard's browser tests, against a fake API and
// against a real in-process controller, share it.
//
// Only tests import it. It must not import anything under agent/ (nor the
// dashboard itself: it drives whatever URL a test gives it).
package browsertest

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Time bounds: generous, for a slow and shared machine. No test asserts
// on them; they only stop a hung browser from hanging the test.
const (
	stepTimeout = 30 * time.Second
	pollTimeout = 30 * time.Second
)

// NoImg is a page expression that is true when hostile names and labels
// (<img src=x onerror=...>) stayed text: the dashboard itself has no
// <img> element and no inline script, so any is injected.
const NoImg = `document.querySelectorAll('img, script:not([src])').length === 0`

// ChromiumPath finds Chromium, or skips the test (with the reason) on a
// machine without it.
func ChromiumPath(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("skipped: no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
	return ""
}

// Browser starts a headless Chromium (1400x900) for one test, stopped
// when the test ends, and collects its console: the returned function
// lists every console.error, uncaught exception and error entry of the
// browser log (CSP refusals are those) so far, except the network 401s
// the dashboard's contract asks for (the page asks for its session;
// without one the browser logs the refused request).
func Browser(t testing.TB) (context.Context, func() []string) {
	t.Helper()
	path := ChromiumPath(t)
	// Chromium puts its singleton socket in a directory of its own under
	// TMPDIR and leaves it behind: the test's temporary directory takes it.
	actx, cancelA := chromedp.NewExecAllocator(context.Background(),
		append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
			chromedp.WindowSize(1400, 900), chromedp.UserDataDir(t.TempDir()), chromedp.Env("TMPDIR="+t.TempDir()))...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	var mu sync.Mutex // guards errs
	var errs []string
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type != chromedp.ConsoleError && !m.IsException() {
				continue
			}
			if m.Source == "network" && strings.Contains(m.Text, "401") {
				continue
			}
			mu.Lock()
			errs = append(errs, m.String()+" at "+m.URL)
			mu.Unlock()
		}
	}()
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(errs)
	}
}

// NoConsoleErrors fails t with every console error in errs (Browser's
// second result) that expected does not account for; a nil expected
// accounts for none. A test that provokes a failed request on purpose
// names that request's log line, so that only the page's own errors fail
// it.
func NoConsoleErrors(t testing.TB, errs []string, expected func(msg string) bool) {
	t.Helper()
	var page []string
	for _, e := range errs {
		if expected == nil || !expected(e) {
			page = append(page, e)
		}
	}
	if len(page) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(page, "\n"))
	}
}

// ScreenshotDir is where a test saves its screenshots: $EASTGUARD_SCREENSHOTS
// if set (to keep them: docs/dashboard.png is taken this way), else the
// test's temp dir.
func ScreenshotDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("EASTGUARD_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// Step runs actions, failing the test (with what) if they fail or take
// longer than a generous bound.
func Step(t testing.TB, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Eval evaluates a JavaScript expression in the page and returns its
// value (a Promise's is awaited).
func Eval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// WaitFor polls a JavaScript expression until it is truthy, failing the
// test (with what) if it is not within a generous bound.
func WaitFor(t testing.TB, ctx context.Context, what, expr string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, pollTimeout+10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(c, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(pollTimeout))); err != nil {
		t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
}

// Shot saves a PNG screenshot of the whole page as dir/name.
func Shot(t testing.TB, ctx context.Context, dir, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// SelectOption picks a <select>'s option (by data-testid) as a user
// would: the value, then a change event.
func SelectOption(testid, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const s = document.querySelector('[data-testid=%s]'); s.value = %q; s.dispatchEvent(new Event('change')); })()`, testid, value))
}

// MapEdge is an edge of the service map as the page's test hook
// (window.egMap.edges()) reports it; Verdict is "policy" and Dashed true
// for an edge a policy allows but no traffic used.
type MapEdge struct {
	Src, Dst, Protocol, Verdict string
	Port                        int
	Dashed                      bool
}

// Edge makes a MapEdge (to write expected edges compactly).
func Edge(src, dst, protocol, verdict string, port int, dashed bool) MapEdge {
	return MapEdge{Src: src, Dst: dst, Protocol: protocol, Verdict: verdict, Port: port, Dashed: dashed}
}

// MapNodes returns the service map's node names (window.egMap.nodes()),
// sorted.
func MapNodes(t testing.TB, ctx context.Context) []string {
	t.Helper()
	nodes := Eval[[]string](t, ctx, `window.egMap.nodes()`)
	slices.Sort(nodes)
	return nodes
}

// MapEdges returns the service map's edges, sorted by source,
// destination, port and verdict.
func MapEdges(t testing.TB, ctx context.Context) []MapEdge {
	t.Helper()
	edges := Eval[[]MapEdge](t, ctx, `window.egMap.edges()`)
	slices.SortFunc(edges, func(a, b MapEdge) int {
		return cmp.Or(cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Verdict, b.Verdict))
	})
	return edges
}
