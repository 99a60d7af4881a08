package online

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFailoverStatus: egctl status lists the controllers, the leader with
// its term, asking the servers in turn until the leader answers (the
// standby's 503 "not leader" passed over); -o json keeps the API's keys.
func TestFailoverStatus(t *testing.T) {
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":"this controller is a standby, not the leader","notLeader":true}`))
	}))
	defer standby.Close()
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/controllers" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`[{"instance":"ctl-1-aa","role":"leader","grpc":"ctl-1:7443","api":"https://ctl-1:8080","term":4,"lastSeen":"2026-01-02T03:04:05Z"},
			{"instance":"ctl-2-bb","role":"standby","grpc":"ctl-2:7443","api":"https://ctl-2:8080","lastSeen":"2026-01-02T03:04:05Z"}]`))
	}))
	defer leader.Close()
	t.Setenv(envConfig, "")
	t.Setenv(envServer, standby.URL+","+leader.URL)
	t.Setenv(envToken, "tok")
	code, out, errs := egctl(t, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 3 {
		t.Fatalf("status: exit %d\n%s%s", code, out, errs)
	}
	if f := strings.Fields(lines[1]); len(f) < 5 || f[0] != "ctl-1-aa" || f[1] != "leader" || f[2] != "4" || f[3] != "ctl-1:7443" {
		t.Errorf("leader row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) < 5 || f[1] != "standby" || f[2] != "-" {
		t.Errorf("standby row %q", lines[2])
	}
	code, out, errs = egctl(t, "status", "-o", "json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); code != exitOK || err != nil || len(rows) != 2 || rows[0]["term"] != 4.0 || rows[1]["role"] != "standby" {
		t.Errorf("status -o json: exit %d %v\n%s%s", code, err, out, errs)
	}
	// Only standbys: exit 2, saying so.
	t.Setenv(envServer, standby.URL)
	if code, _, errs := egctl(t, "status"); code != 2 || !strings.Contains(errs, "standby") {
		t.Errorf("status at a standby alone: exit %d\n%s", code, errs)
	}
}
