package restapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// adminCall is controllertest.Call that decodes a 2xx answer into out.
func adminCall(t *testing.T, method, url, token, body string, want int, out any) string {
	t.Helper()
	code, b := controllertest.Call(t, method, url, token, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, code, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v\n%s", method, url, err, b)
		}
	}
	return string(b)
}

func findToken(list []apiclient.AdminToken, id string) (apiclient.AdminToken, bool) {
	for _, t := range list {
		if t.ID == id {
			return t, true
		}
	}
	return apiclient.AdminToken{}, false
}

// TestAdminTokenLifecycle: create with a name and a lifetime, list without
// secrets, revoke (effective on the very next request), expire.
func TestAdminTokenLifecycle(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	base := cfg.Server + "/api/v1/admin-tokens"

	var ci apiclient.CreatedAdminToken
	adminCall(t, "POST", base, cfg.Token, `{"name": "ci pipeline", "ttl": "24h"}`, 201, &ci)
	parsed, err := pki.ParseAdminToken(ci.Token)
	if err != nil || parsed.ID != ci.ID || ci.Name != "ci pipeline" || ci.State != "active" {
		t.Fatalf("created: %+v (%v)", ci, err)
	}
	if d := ci.Expires.Sub(ci.Created); d != 24*time.Hour {
		t.Errorf("expires %s after creation, want 24h", d)
	}
	var forever apiclient.CreatedAdminToken
	adminCall(t, "POST", base, ci.Token, `{}`, 201, &forever)
	if !forever.Expires.IsZero() || forever.CreatedBy != ci.ID {
		t.Errorf("token without ttl, created with the ci token: %+v", forever)
	}

	// The list has every token's id, name, times and state, and no
	// secret nor hash.
	var list []apiclient.AdminToken
	body := adminCall(t, "GET", base, cfg.Token, "", 200, &list)
	if len(list) != 3 {
		t.Fatalf("list: %s", body)
	}
	for _, tok := range []string{cfg.Token, ci.Token, forever.Token} {
		secret := strings.Split(tok, ".")[2]
		if strings.Contains(body, secret) || strings.Contains(body, pki.HashSecret(secret)) {
			t.Errorf("the list shows a secret or its hash:\n%s", body)
		}
	}
	if strings.Contains(body, `"token"`) {
		t.Errorf("the list has a token field:\n%s", body)
	}
	if got, ok := findToken(list, ci.ID); !ok || got.Name != "ci pipeline" || got.Created.IsZero() || !got.Expires.Equal(ci.Expires) ||
		got.State != "active" || got.Current {
		t.Errorf("ci token listed as %+v", got)
	}
	mine := strings.Split(cfg.Token, ".")[1]
	if got, _ := findToken(list, mine); !got.Current || got.Name != "controllertest" {
		t.Errorf("the caller's token listed as %+v", got)
	}

	// Revoked: 401 on the very next request, saying so; the other tokens
	// still work.
	adminCall(t, "GET", cfg.Server+"/api/v1/agents", ci.Token, "", 200, nil)
	var rev apiclient.RevokedAdminToken
	adminCall(t, "POST", base+"/"+ci.ID+"/revoke", cfg.Token, "", 200, &rev)
	if rev.State != "revoked" || rev.Revoked.IsZero() || rev.Current || rev.AlreadyRevoked || rev.ActiveTokens != 2 {
		t.Errorf("revoke: %+v", rev)
	}
	if b := adminCall(t, "GET", cfg.Server+"/api/v1/agents", ci.Token, "", 401, nil); !strings.Contains(b, "admin token revoked") {
		t.Errorf("revoked token: %s", b)
	}
	adminCall(t, "GET", cfg.Server+"/api/v1/agents", forever.Token, "", 200, nil)
	adminCall(t, "POST", base+"/"+ci.ID+"/revoke", cfg.Token, "", 200, &rev)
	if !rev.AlreadyRevoked {
		t.Errorf("revoke twice: %+v", rev)
	}
	adminCall(t, "GET", base, cfg.Token, "", 200, &list)
	if got, _ := findToken(list, ci.ID); got.State != "revoked" || !got.Revoked.Equal(rev.Revoked) {
		t.Errorf("revoked token listed as %+v", got)
	}

	// Expired: 401 once its time has passed, and listed as expired.
	var short apiclient.CreatedAdminToken
	adminCall(t, "POST", base, cfg.Token, `{"name": "short", "ttl": "1h"}`, 201, &short)
	adminCall(t, "GET", base, short.Token, "", 200, nil)
	h.Clock.Advance(time.Hour)
	if b := adminCall(t, "GET", base, short.Token, "", 401, nil); !strings.Contains(b, "admin token expired") {
		t.Errorf("expired token: %s", b)
	}
	adminCall(t, "GET", base, cfg.Token, "", 200, &list)
	if got, _ := findToken(list, short.ID); got.State != "expired" {
		t.Errorf("expired token listed as %+v", got)
	}

	// A token's holder may revoke the token it uses: the answer says so,
	// and the next call is refused.
	adminCall(t, "POST", base+"/"+forever.ID+"/revoke", forever.Token, "", 200, &rev)
	if !rev.Current || rev.ActiveTokens != 1 {
		t.Errorf("self-revocation: %+v", rev)
	}
	adminCall(t, "GET", base, forever.Token, "", 401, nil)
}

// TestAdminTokenRefusals: bad requests change nothing and say what is
// wrong; a forged secret for a known id learns nothing.
func TestAdminTokenRefusals(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	base := cfg.Server + "/api/v1/admin-tokens"
	for _, c := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "", `{"ttl": "forever"}`, 400, `forever\": want a positive duration`},
		{"POST", "", `{"ttl": "-1h"}`, 400, `-1h\": want a positive duration`},
		{"POST", "", `{"ttl": "200000h"}`, 400, "at most"},
		{"POST", "", `{"name": "` + strings.Repeat("x", 65) + `"}`, 400, "at most 64"},
		{"POST", "", `{"name": "a\u0007b"}`, 400, "printable"},
		{"POST", "", `{"secret": "x"}`, 400, "unknown field"},
		{"POST", "/0123456789ab/revoke", "", 404, "no such admin token"},
		{"POST", "/xyz/revoke", "", 400, "12 hexadecimal digits"},
	} {
		code, b := controllertest.Call(t, c.method, base+c.path, cfg.Token, c.body)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", c.method, c.path, c.body, code, b, c.code, c.want)
		}
	}
	var list []apiclient.AdminToken
	adminCall(t, "GET", base, cfg.Token, "", 200, &list)
	if len(list) != 1 {
		t.Errorf("refused requests left tokens behind: %+v", list)
	}
	// The right id with a wrong secret: the same answer as an unknown id.
	id := strings.Split(cfg.Token, ".")[1]
	forged := "egadm1." + id + "." + strings.Repeat("0", 32)
	_, known := controllertest.Call(t, "GET", base, forged, "")
	_, unknown := controllertest.Call(t, "GET", base, "egadm1.000000000000."+strings.Repeat("0", 32), "")
	if string(known) != string(unknown) || !strings.Contains(string(known), "admin token not valid") {
		t.Errorf("forged secret: %s\nunknown id: %s", known, unknown)
	}
}

// TestAdminTokenRevokedAcrossProcesses: a second API over the same store
// (a second controller process, later) refuses a token the first revoked,
// at once: nothing is cached.
func TestAdminTokenRevokedAcrossProcesses(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	other := httptest.NewServer(restapi.New(restapi.Config{Store: h.St}).Handler(nil))
	t.Cleanup(other.Close)
	var tok apiclient.CreatedAdminToken
	adminCall(t, "POST", cfg.Server+"/api/v1/admin-tokens", cfg.Token, `{"name": "shared"}`, 201, &tok)
	adminCall(t, "GET", other.URL+"/api/v1/admin-tokens", tok.Token, "", 200, nil)
	adminCall(t, "POST", cfg.Server+"/api/v1/admin-tokens/"+tok.ID+"/revoke", cfg.Token, "", 200, nil)
	adminCall(t, "GET", other.URL+"/api/v1/admin-tokens", tok.Token, "", 401, nil)
}

// BenchmarkAdminTokenCheck measures what reading the token from the store
// at every call costs (there is no cache).
func BenchmarkAdminTokenCheck(b *testing.B) {
	h := controllertest.New(b)
	cfg := h.ServeAPI()
	ctx := b.Context()
	for b.Loop() {
		if err := h.Srv.API.CheckAdminToken(ctx, cfg.Token); err != nil {
			b.Fatal(err)
		}
	}
}

// tokenStoreDown is a store whose admin-token reads fail as a broken disk
// makes them fail.
type tokenStoreDown struct{ store.Store }

func (tokenStoreDown) AdminToken(context.Context, string) (store.AdminToken, error) {
	return store.AdminToken{}, fmt.Errorf("read admin token: %w: injected", store.ErrIO)
}

// TestAdminTokenRefusalsAreMarked: a token the store refuses is
// ErrAdminTokenRefused; a store that cannot answer is not (the controller
// rewrote admin.conf, revoking a valid token, when a check failed because
// the store or the context did).
func TestAdminTokenRefusalsAreMarked(t *testing.T) {
	h := controllertest.New(t)
	good := h.ServeAPI().Token
	ctx := context.Background()
	if err := h.Srv.API.CheckAdminToken(ctx, good); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	for _, bad := range []string{"nonsense", "egadm1.000000000000.c2VjcmV0", good[:len(good)-2] + "xx"} {
		if err := h.Srv.API.CheckAdminToken(ctx, bad); !errors.Is(err, restapi.ErrAdminTokenRefused) {
			t.Errorf("token %q: %v, want an ErrAdminTokenRefused", bad, err)
		}
	}
	down := restapi.New(restapi.Config{Store: tokenStoreDown{h.St}})
	if err := down.CheckAdminToken(ctx, good); err == nil || errors.Is(err, restapi.ErrAdminTokenRefused) {
		t.Errorf("store down: %v, want an error that is not a refusal", err)
	}
}
