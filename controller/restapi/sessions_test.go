package restapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
)

// browser is a dashboard client: a server, the cookie it holds and the
// CSRF token its page keeps.
type browser struct {
	t      *testing.T
	h      *controllertest.Controller
	srv    *httptest.Server
	token  string // an admin token (bearer), named "controllertest"
	cookie *http.Cookie
	csrf   string
}

func newBrowser(t *testing.T, tls bool) *browser {
	t.Helper()
	h := controllertest.New(t)
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h.Srv.Handler(nil))
	} else {
		srv = httptest.NewServer(h.Srv.Handler(nil))
	}
	t.Cleanup(srv.Close)
	tok, err := h.Srv.API.NewAdminToken(context.Background(), restapi.AdminTokenSpec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, h: h, srv: srv, token: tok.Token}
}

// do sends a request with the cookie (if any) and the CSRF header (if
// csrf is not ""), and returns the response and its body.
func (b *browser) do(method, path, body string, csrf string) (*http.Response, []byte) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	if b.cookie != nil {
		req.AddCookie(b.cookie)
	}
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, out
}

// login logs in with token and keeps the cookie and CSRF token.
func (b *browser) login(token string) *http.Response {
	b.t.Helper()
	resp, body := b.do("POST", "/api/v1/login", `{"token":"`+token+`"}`, "")
	if resp.StatusCode != 200 {
		b.t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	var sv restapi.SessionView
	if err := json.Unmarshal(body, &sv); err != nil || sv.CSRFToken == "" || sv.Name != "alice" {
		b.t.Fatalf("login answer %s: %v", body, err)
	}
	b.csrf = sv.CSRFToken
	for _, c := range resp.Cookies() {
		if c.Name == "eg_session" {
			b.cookie = c
		}
	}
	if b.cookie == nil {
		b.t.Fatalf("login set no eg_session cookie: %v", resp.Header["Set-Cookie"])
	}
	return resp
}

// TestSessionCookieFlags: the session cookie is HttpOnly, SameSite=Strict,
// expiring, and Secure exactly when the listener has TLS.
func TestSessionCookieFlags(t *testing.T) {
	for _, tls := range []bool{false, true} {
		b := newBrowser(t, tls)
		resp := b.login(b.token)
		raw := strings.Join(resp.Header["Set-Cookie"], "\n")
		for _, want := range []string{"eg_session=", "Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"} {
			if !strings.Contains(raw, want) {
				t.Errorf("tls %v: Set-Cookie %q lacks %s", tls, raw, want)
			}
		}
		if strings.Contains(raw, "Secure") != tls {
			t.Errorf("tls %v: Set-Cookie %q: Secure must be set exactly over TLS", tls, raw)
		}
		if len(b.cookie.Value) < 40 {
			t.Errorf("session cookie %q is short: want 256 random bits", b.cookie.Value)
		}
		// The session answers the page's reload with the same CSRF token.
		resp2, body := b.do("GET", "/api/v1/session", "", "")
		if resp2.StatusCode != 200 || !strings.Contains(string(body), b.csrf) || !strings.Contains(string(body), `"name": "alice"`) {
			t.Errorf("tls %v: GET /api/v1/session: %d %s", tls, resp2.StatusCode, body)
		}
	}
}

// TestSessionCSRF: with the cookie, a state-changing request without the
// CSRF token, or with a wrong one, is refused with 403 and changes
// nothing; GET needs none; with the token it goes through and the alert
// records who acknowledged it.
func TestSessionCSRF(t *testing.T) {
	b := newBrowser(t, false)
	a := &store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: "k", State: store.AlertOpen, Count: 1, Source: "x",
		Destination: "db-1", Port: 22, Protocol: "TCP", FirstSeen: time.Now(), LastSeen: time.Now(), Window: time.Hour, Created: time.Now()}
	b.h.InsertAlerts(a)
	b.login(b.token)
	tokensBefore, _ := b.h.St.AdminTokens(context.Background())
	for _, csrf := range []string{"", "wrong", b.csrf + "x"} {
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/api/v1/alerts/1/ack", ""},
			{"POST", "/api/v1/admin-tokens", `{"name":"evil"}`},
			{"POST", "/api/v1/tokens", `{"node":"n","ttl":"1h"}`},
			{"DELETE", "/api/v1/policies/shop", ""},
			{"POST", "/api/v1/logout", ""},
		} {
			resp, body := b.do(c.method, c.path, c.body, csrf)
			if resp.StatusCode != 403 || !strings.Contains(string(body), "missing or wrong CSRF token") {
				t.Errorf("%s %s with CSRF %q: %d %s, want 403", c.method, c.path, csrf, resp.StatusCode, body)
			}
		}
	}
	if got, _ := b.h.St.AdminTokens(context.Background()); len(got) != len(tokensBefore) {
		t.Errorf("refused requests created admin tokens: %d, had %d", len(got), len(tokensBefore))
	}
	if toks, _ := b.h.Srv.Agents.JoinTokens(context.Background()); len(toks) != 0 {
		t.Errorf("refused requests created join tokens: %+v", toks)
	}
	if resp, body := b.do("GET", "/api/v1/alerts", "", ""); resp.StatusCode != 200 || !strings.Contains(string(body), `"state": "open"`) {
		t.Errorf("GET with the cookie, no CSRF token: %d %s (and the alert must still be open)", resp.StatusCode, body)
	}
	resp, body := b.do("POST", "/api/v1/alerts/1/ack", "", b.csrf)
	var got apiclient.Alert
	if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got.State != "acknowledged" || got.AcknowledgedBy != "alice" ||
		got.AcknowledgedAt.IsZero() {
		t.Errorf("ack with the CSRF token: %d %s, want acknowledged by alice", resp.StatusCode, body)
	}
	// The bearer credential (egctl) needs no CSRF token: nothing a browser
	// sends by itself.
	code, body := controllertest.Call(t, "POST", b.srv.URL+"/api/v1/admin-tokens", b.token, `{"name":"egctl"}`)
	if code != 201 {
		t.Errorf("bearer POST: %d %s", code, body)
	}
}

// TestSessionEnds: an expired session, a logged-out one and one whose
// admin token was revoked (through the API or by another process sharing
// the store) are refused.
func TestSessionEnds(t *testing.T) {
	b := newBrowser(t, false)
	b.login(b.token)
	if resp, body := b.do("GET", "/api/v1/agents", "", ""); resp.StatusCode != 200 {
		t.Fatalf("with the session: %d %s", resp.StatusCode, body)
	}
	b.h.Clock.Advance(12*time.Hour + time.Second)
	if resp, body := b.do("GET", "/api/v1/agents", "", ""); resp.StatusCode != 401 {
		t.Errorf("expired session: %d %s, want 401", resp.StatusCode, body)
	}
	if resp, body := b.do("GET", "/api/v1/session", "", ""); resp.StatusCode != 401 {
		t.Errorf("expired session: GET /api/v1/session: %d %s, want 401", resp.StatusCode, body)
	}

	b.login(b.token)
	old := b.cookie
	resp, _ := b.do("POST", "/api/v1/logout", "", b.csrf)
	if resp.StatusCode != 204 {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if raw := strings.Join(resp.Header["Set-Cookie"], "\n"); !strings.Contains(raw, "eg_session=;") || !strings.Contains(raw, "Max-Age=0") {
		t.Errorf("logout does not clear the cookie: %q", raw)
	}
	b.cookie = old
	if resp, body := b.do("GET", "/api/v1/agents", "", ""); resp.StatusCode != 401 {
		t.Errorf("the cookie after logout: %d %s, want 401", resp.StatusCode, body)
	}

	// Revoked through the API by another admin: its sessions end.
	b.login(b.token)
	other, err := b.h.Srv.API.NewAdminToken(context.Background(), restapi.AdminTokenSpec{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	var id string
	list, _ := b.h.St.AdminTokens(context.Background())
	for _, tok := range list {
		if tok.Name == "alice" {
			id = tok.ID
		}
	}
	if code, body := controllertest.Call(t, "POST", b.srv.URL+"/api/v1/admin-tokens/"+id+"/revoke", other.Token, ""); code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	if resp, body := b.do("GET", "/api/v1/agents", "", ""); resp.StatusCode != 401 {
		t.Errorf("session of a revoked token: %d %s, want 401", resp.StatusCode, body)
	}

	// Revoked by another process sharing the store: the next call reads
	// the token and refuses.
	b2 := newBrowser(t, false)
	b2.login(b2.token)
	list, _ = b2.h.St.AdminTokens(context.Background())
	for _, tok := range list {
		if tok.Name == "alice" {
			if _, err := b2.h.St.RevokeAdminToken(context.Background(), tok.ID, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if resp, body := b2.do("GET", "/api/v1/flows", "", ""); resp.StatusCode != 401 {
		t.Errorf("session of a token revoked in the store: %d %s, want 401", resp.StatusCode, body)
	}
}

// TestLoginRateLimited: a source that guesses tokens is held back: after
// the burst every login is 429, the right token included, and nothing
// says whether a guess was right.
func TestLoginRateLimited(t *testing.T) {
	b := newBrowser(t, false)
	for i := range 10 {
		resp, body := b.do("POST", "/api/v1/login", `{"token":"egadm_000000000000.guess"}`, "")
		if resp.StatusCode != 401 {
			t.Fatalf("guess %d: %d %s, want 401", i, resp.StatusCode, body)
		}
	}
	resp, body := b.do("POST", "/api/v1/login", `{"token":"`+b.token+`"}`, "")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || len(resp.Cookies()) != 0 {
		t.Errorf("login after 10 guesses: %d %s, want 429 with Retry-After and no cookie", resp.StatusCode, body)
	}
	// A minute later the source has a few more tries.
	b.h.Clock.Advance(time.Minute)
	b.login(b.token)
}

// TestEveryEndpointNeedsCredentials: every /api/v1 route but the public
// ones (login, session, logout, openapi.json) answers 401 without a
// credential, with a made-up cookie and with a wrong bearer token; the
// public session endpoints answer 401 without a session.
func TestEveryEndpointNeedsCredentials(t *testing.T) {
	b := newBrowser(t, false)
	patterns, public := restapi.Routes()
	fill := strings.NewReplacer("{kind}", "policies", "{name}", "shop", "{node}", "node-a", "{id}", "1")
	for _, p := range patterns {
		method, path, _ := strings.Cut(p, " ")
		path = fill.Replace(path)
		if public[p] {
			continue
		}
		for _, how := range []string{"none", "cookie", "bearer"} {
			b.cookie = nil
			req, _ := http.NewRequest(method, b.srv.URL+path, nil)
			switch how {
			case "cookie":
				req.AddCookie(&http.Cookie{Name: "eg_session", Value: "made-up"})
				req.Header.Set("X-CSRF-Token", "made-up")
			case "bearer":
				req.Header.Set("Authorization", "Bearer egadm_0123456789ab.secret")
			}
			resp, err := b.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 {
				t.Errorf("%s %s with %s: %d, want 401", method, path, how, resp.StatusCode)
			}
		}
	}
	for _, c := range []struct{ method, path string }{{"GET", "/api/v1/session"}, {"POST", "/api/v1/logout"}} {
		if resp, body := b.do(c.method, c.path, "", "x"); resp.StatusCode != 401 {
			t.Errorf("%s %s without a session: %d %s, want 401", c.method, c.path, resp.StatusCode, body)
		}
	}
	if resp, body := b.do("POST", "/api/v1/login", `{"token":"nope"}`, ""); resp.StatusCode != 401 {
		t.Errorf("login with a bad token: %d %s", resp.StatusCode, body)
	}
}
