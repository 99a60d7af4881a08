package online

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAgentsShowsAgentVersion: egctl agents shows each agent's version in
// its table and -o json.
func TestAgentsShowsAgentVersion(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/agents" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`[{"node":"node-a","connected":true,"appliedVersion":3,"latestVersion":3,"lastError":"","agentVersion":"v1.2.3-4-gabcdef"},
			{"node":"node-b","connected":false,"appliedVersion":0,"latestVersion":1,"lastError":""}]`))
	}))
	defer srv.Close()
	t.Setenv(envConfig, "")
	t.Setenv(envServer, srv.URL)
	t.Setenv(envToken, "tok")
	code, out, errs := egctl(t, "agents")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 3 {
		t.Fatalf("agents: exit %d\n%s%s", code, out, errs)
	}
	if h := strings.Fields(lines[0]); len(h) < 5 || h[4] != "AGENT-VERSION" {
		t.Errorf("header %q: want AGENT-VERSION as the fifth column", lines[0])
	}
	if f := strings.Fields(lines[1]); len(f) < 5 || f[4] != "v1.2.3-4-gabcdef" {
		t.Errorf("node-a row %q: want its agent version", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) < 5 || f[4] != "-" {
		t.Errorf("node-b row %q: want - for an agent never connected", lines[2])
	}
	code, out, _ = egctl(t, "agents", "-o", "json")
	var rows []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 2 || rows[0]["agentVersion"] != "v1.2.3-4-gabcdef" {
		t.Errorf("agents -o json: exit %d\n%s", code, out)
	}
}
