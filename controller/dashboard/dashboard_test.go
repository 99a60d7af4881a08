package dashboard

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

func get(t *testing.T, h http.Handler, method, target string, hdr map[string]string) *http.Response {
	t.Helper()
	// url.Parse keeps the path as written (no cleaning of .. or //).
	req := httptest.NewRequest(method, "http://controller.test"+target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func checkSecurityHeaders(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	want := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}

var assetRef = regexp.MustCompile(`(?:src|href)="ui/([^"]+)"`)

// indexAssets returns the asset names index.html refers to.
func indexAssets(t *testing.T, index string) []string {
	t.Helper()
	var names []string
	for _, m := range assetRef.FindAllStringSubmatch(index, -1) {
		names = append(names, m[1])
	}
	// The app, the CSS, and the chunks the app imports (preloaded).
	var app, css int
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, "app-") && strings.HasSuffix(n, ".js"):
			app++
		case strings.HasPrefix(n, "style-") && strings.HasSuffix(n, ".css"):
			css++
		case strings.HasPrefix(n, "chunk-") && strings.HasSuffix(n, ".js"):
		default:
			t.Errorf("index.html refers to %s: want app-*.js, style-*.css and chunk-*.js only", n)
		}
	}
	if app != 1 || css != 1 {
		t.Fatalf("index.html refers to %v, want one app-*.js, one style-*.css (and chunk-*.js)", names)
	}
	return names
}

func TestIndex(t *testing.T) {
	h := Handler()
	resp := get(t, h, "GET", "/", nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	checkSecurityHeaders(t, "GET /", resp)
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("GET /: Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("GET /: Cache-Control %q, want no-cache", cc)
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		t.Error("GET /: no ETag")
	}
	// The CSP refuses inline script and style: index.html must have none,
	// or the page breaks in the browser.
	html := string(body)
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`), // a script with a body
		regexp.MustCompile(`<script(?:(?:\s+(?:defer|src="[^"]+"))*)\s*>`),
		regexp.MustCompile(`(?i)<style`),
		regexp.MustCompile(`(?i)\sstyle=`),
		regexp.MustCompile(`(?i)\son[a-z]+=`),
	} {
		if m := bad.FindString(html); m != "" && !strings.Contains(m, "src=") {
			t.Errorf("index.html has inline script or style: %q", m)
		}
	}
	for _, name := range indexAssets(t, html) {
		r := get(t, h, "GET", "/ui/"+name, nil)
		if r.StatusCode != 200 {
			t.Errorf("index.html refers to ui/%s, which answers %d", name, r.StatusCode)
		}
	}
	// Revalidation: the same index answers 304.
	if r := get(t, h, "GET", "/", map[string]string{"If-None-Match": etag}); r.StatusCode != http.StatusNotModified {
		t.Errorf("GET / If-None-Match: %d, want 304", r.StatusCode)
	}
	if r := get(t, h, "HEAD", "/", nil); r.StatusCode != 200 {
		t.Errorf("HEAD /: %d", r.StatusCode)
	}
}

func TestAssets(t *testing.T) {
	h := Handler()
	resp := get(t, h, "GET", "/", nil)
	body, _ := io.ReadAll(resp.Body)
	want := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
	// Those index.html names, and the chunks loaded on demand (the map's
	// graph library): every file the build writes.
	names := indexAssets(t, string(body))
	entries, err := fs.ReadDir(embedded, "assets")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "index.html" && !slices.Contains(names, e.Name()) {
			names = append(names, e.Name())
		}
	}
	for _, name := range names {
		r := get(t, h, "GET", "/ui/"+name, nil)
		b, _ := io.ReadAll(r.Body)
		checkSecurityHeaders(t, name, r)
		ext := name[strings.LastIndexByte(name, '.'):]
		if ct := r.Header.Get("Content-Type"); ct != want[ext] {
			t.Errorf("%s: Content-Type %q, want %q", name, ct, want[ext])
		}
		if cc := r.Header.Get("Cache-Control"); cc != "public, max-age=31536000, immutable" {
			t.Errorf("%s: Cache-Control %q", name, cc)
		}
		if len(b) < 100 {
			t.Errorf("%s: %d bytes", name, len(b))
		}
		// The bundle must be self-contained: no CDN, the controller works
		// air-gapped.
		if m := regexp.MustCompile(`(?:src|href)=["']?https?://|import\(["']https?://`).FindString(string(b)); m != "" {
			t.Errorf("%s loads from outside: %q", name, m)
		}
	}
}

// TestRefused: what is not an asset is a 404 (never a listing, never a
// file outside assets/), other methods a 405; all with the headers.
func TestRefused(t *testing.T) {
	h := Handler()
	for _, target := range []string{
		"/ui/", "/ui", "/ui/index.html", "/index.html", "/assets/index.html", "/ui/assets",
		"/ui/../dashboard.go", "/ui/..%2fdashboard.go", "/ui/%2e%2e/dashboard.go", "/ui/..%2f..%2fgo.mod",
		"/ui//etc/passwd", "/ui/./index.html", "/ui/nope.js", "/nope", "/ui/app.js/", "/%2e%2e/go.mod",
	} {
		resp := get(t, h, "GET", target, nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", target, resp.StatusCode)
		}
		if strings.Contains(string(body), "<a href") || strings.Contains(string(body), "package dashboard") {
			t.Errorf("GET %s: answered a listing or a source file: %.80q", target, body)
		}
		checkSecurityHeaders(t, "GET "+target, resp)
	}
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		resp := get(t, h, m, "/", nil)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /: %d, want 405", m, resp.StatusCode)
		}
		checkSecurityHeaders(t, m+" /", resp)
	}
}

// TestServedOverHTTP: the same through a real server, whose mux and
// client do their own path handling.
func TestServedOverHTTP(t *testing.T) {
	srv := httptest.NewServer(Handler())
	t.Cleanup(srv.Close)
	for target, want := range map[string]int{"/": 200, "/ui/../dashboard.go": 404, "/ui/%2e%2e/dashboard.go": 404, "/ui/": 404} {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		req.URL.Opaque = target // sent as written, not cleaned by the client
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", target, resp.StatusCode, want)
		}
	}
}

func TestLoadNeedsIndex(t *testing.T) {
	_, err := load(fstest.MapFS{"assets/app-X.js": {Data: []byte("x")}})
	if err == nil {
		t.Error("load without index.html: no error")
	}
	h, err := load(fstest.MapFS{
		"assets/index.html": {Data: []byte("<!doctype html>")},
		"assets/app-X.js":   {Data: []byte("x")},
		"assets/notes.md":   {Data: []byte("x")},
		"assets/sub/a.js":   {Data: []byte("x")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := h.assets["notes.md"]; ok {
		t.Error("a file of an unknown kind is served")
	}
	if len(h.assets) != 1 {
		t.Errorf("assets %v, want app-X.js only", h.assets)
	}
}

// TestSourcesRenderText: the front end's sources never parse data as
// HTML nor set inline style (the CSP would refuse it and break the page):
// every string reaches the page through textContent or setAttribute.
func TestSourcesRenderText(t *testing.T) {
	files, err := filepath.Glob("ui/src/*.js")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("ui/src/*/*.js")
	files = append(files, more...)
	if len(files) < 5 {
		t.Fatalf("found %d source files under ui/src", len(files))
	}
	bad := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\.style\.|setAttribute\(\s*['"]style|new Function|\beval\(|DOMParser|createContextualFragment`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if trimmed := strings.TrimSpace(line); strings.HasPrefix(trimmed, "//") {
				continue
			}
			if m := bad.FindString(line); m != "" {
				t.Errorf("%s:%d: %s: render text with textContent / h(), style with classes", f, i+1, m)
			}
		}
	}
}
