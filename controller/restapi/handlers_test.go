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
		{"GET", "/api/v1/rulesets/nobody", "", 404, "has no rule set"},
		{"DELETE", "/api/v1/tokens/nope", "", 404, `join token \"nope\": no such join token, nothing changed`},
	}
	for _, c := range cases {
		code, b := controllertest.Call(t, c.method, cfg.Server+c.path, cfg.Token, c.body)
		if code != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", c.method, c.path, c.body, code, b, c.code, c.want)
		}
	}
	if got := h.Srv.Nodes.Agents(); len(got) != 0 {
		t.Errorf("bad requests left state behind: %+v", got)
	}
}
