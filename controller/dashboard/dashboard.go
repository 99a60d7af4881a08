// Package dashboard owns the controller's dashboard: its built front-end
// assets (index.html and the hashed JS and CSS under assets/, built from
// ui/ by `make ui` and committed, so `go build` needs no Node.js) and the
// HTTP handler that serves them with the security headers.
//
// Invariants: only GET and HEAD of `/` (index.html) and `/ui/<file>` for
// a file the build made are answered; everything else is a 404 (405 for
// other methods), never a directory listing nor a file outside assets/.
// Every answer, errors included, carries the Content-Security-Policy and
// the other security headers. Hashed assets are cached for ever,
// index.html is revalidated every time (it names the current hashes).
//
// It serves files only; the data comes from /api/v1 (controller/restapi,
// which mounts Handler). It must not import agent/... nor the controller
// packages that mount it.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed assets
var embedded embed.FS

// CSP is the Content-Security-Policy of every dashboard answer: scripts,
// styles, fonts and API calls from the controller itself only; no inline
// script or style, no framing, no base or form redirection.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Cache-Control values: hashed assets never change under their name.
const (
	cacheImmutable = "public, max-age=31536000, immutable"
	cacheIndex     = "no-cache"
)

// asset is one file served, its ETag computed once.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".txt":  "text/plain; charset=utf-8",
}

type handler struct {
	index  *asset
	assets map[string]*asset // by file name; index.html is not among them
}

// Handler serves the dashboard: index.html at `/` and the assets at
// `/ui/<file>`. Mount it for `GET /{$}` and `/ui/`.
func Handler() http.Handler {
	h, err := load(embedded)
	if err != nil {
		// The assets are embedded at build time; a broken build is caught
		// by this package's tests, not at run time.
		panic("dashboard: " + err.Error())
	}
	return h
}

func load(fsys fs.FS) (*handler, error) {
	h := &handler{assets: map[string]*asset{}}
	entries, err := fs.ReadDir(fsys, "assets")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue // the build writes files only; nothing below is served
		}
		body, err := fs.ReadFile(fsys, "assets/"+e.Name())
		if err != nil {
			return nil, err
		}
		ct, ok := contentTypes[path.Ext(e.Name())]
		if !ok {
			continue // not a kind the build writes: not served
		}
		sum := sha256.Sum256(body)
		a := &asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		if e.Name() == "index.html" {
			h.index = a
			continue
		}
		h.assets[e.Name()] = a
	}
	if h.index == nil {
		return nil, fs.ErrNotExist
	}
	return h, nil
}

// securityHeaders are set on every answer, errors included.
func securityHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// The raw path, not a cleaned one: /ui/../x or /ui/a%2fb name no
	// asset, and are refused rather than resolved.
	p := r.URL.EscapedPath()
	switch {
	case p == "/":
		serve(w, r, h.index, cacheIndex)
		return
	case strings.HasPrefix(p, "/ui/"):
		name := strings.TrimPrefix(p, "/ui/")
		if a, ok := h.assets[name]; ok {
			serve(w, r, a, cacheImmutable)
			return
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "not found", http.StatusNotFound)
}

func serve(w http.ResponseWriter, r *http.Request, a *asset, cache string) {
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("Cache-Control", cache)
	hd.Set("ETag", a.etag)
	// ServeContent answers If-None-Match (304) and HEAD; the zero modtime
	// leaves Last-Modified out (the ETag is the validator).
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
