package restapi_test

import (
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/controllertest"
)

// TestAPIRefusesBadRequests: malformed requests get a 400 saying what is
// wrong, and change nothing.
func TestAPIRefusesBadRequests(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	cases := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/api/v1/apply", `{"files": [`, 400, "request body: unexpected EOF"},
		{"POST", "/api/v1/apply", `{"fils": []}`, 400, "unknown field"},
		{"POST", "/api/v1/apply", `{"files": []}`, 422, "nothing to apply"},
		{"POST", "/api/v1/apply", `{"files": [{"name": "a.yaml", "content": "kind: Nope"}]}`, 422, "a.yaml:1:1"},
		{"POST", "/api/v1/tokens", `{"node": "n", "ttl": "forever"}`, 400, "invalid duration"},
		{"POST", "/api/v1/tokens", `{"node": "n", "ttl": "9000h"}`, 400, "at most"},
		{"POST", "/api/v1/delete", `{"resources": [{"kind": "pods", "name": "x"}]}`, 400, "unknown resource kind"},
		{"GET", "/api/v1/pods", "", 404, "unknown resource kind"},
		// Small requests have a small bound: 64 KiB, not apply's 64 MiB.
		{"POST", "/api/v1/tokens", `{"node": "` + strings.Repeat("n", 65<<10) + `", "ttl": "1h"}`, 400, "request body too large"},
		{"POST", "/api/v1/admin-tokens", `{"name": "` + strings.Repeat("n", 65<<10) + `"}`, 400, "request body too large"},
		{"GET", "/api/v1/rulesets/nobody", "", 404, "has no rule set"},
		{"DELETE", "/api/v1/tokens/nope", "", 404, `join token \"nope\": no such join token, nothing changed`},
	}
	for _, c := range cases {
		code, b := controllertest.Call(t, c.method, cfg.Server+c.path, cfg.Token, c.body)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("%s %s %.100s: %d %.300s, want %d with %q", c.method, c.path, c.body, code, b, c.code, c.want)
		}
	}
	if got := h.Srv.Nodes.Agents(); len(got) != 0 {
		t.Errorf("bad requests left state behind: %+v", got)
	}
}
