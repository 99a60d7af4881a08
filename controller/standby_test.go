package controller

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eastguard/eastguard/controller/apiclient"
)

// TestFailoverStandbyHandler: a standby serves /healthz (naming its role)
// and /metrics, and answers everything else 503 with a JSON error that
// marks it and names the leader, whatever the method or credential.
func TestFailoverStandbyHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	role := newRoleMetrics(reg)
	role.set(false)
	leader := "https://ctl-1.example:8080"
	srv := httptest.NewServer(standbyHandler(reg, func() string { return leader }))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(RoleHeader) != "standby" || string(body) != "ok standby\n" {
		t.Errorf("/healthz: %d %q %q", resp.StatusCode, resp.Header.Get(RoleHeader), body)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !contains(string(body), "eastguard_controller_leader 0") {
		t.Errorf("/metrics: %d\n%s", resp.StatusCode, body)
	}
	for _, req := range []struct{ method, path string }{{"GET", "/api/v1/agents"}, {"POST", "/api/v1/apply"}, {"GET", "/"}, {"POST", "/api/v1/login"}} {
		r, _ := http.NewRequest(req.method, srv.URL+req.path, nil)
		r.Header.Set("Authorization", "Bearer whatever")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		var e apiclient.Error
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 503 || err != nil || !e.NotLeader || e.Leader != leader || !contains(e.Error, leader) {
			t.Errorf("%s %s: %d %+v %v", req.method, req.path, resp.StatusCode, e, err)
		}
	}
	// The leader's change of role is counted.
	role.set(true)
	role.set(false)
	if n := counterValue(t, reg, "eastguard_controller_leadership_changes_total"); n != 2 {
		t.Errorf("leadership changes: %v, want 2", n)
	}
}

// TestFailoverHandoff: the listener's connections go to the standby's
// server, then, after Next, to the leader's; the standby's listener is
// closed by the hand-over.
func TestFailoverHandoff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := newHandoff(lis)
	defer h.Close()
	first := h.Next()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := first.Accept(); err == nil {
			accepted <- c
		}
	}()
	c1, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the first server got no connection")
	}
	second := h.Next()
	if _, err := first.Accept(); err == nil {
		t.Error("the first server's listener still accepts after the hand-over")
	}
	go func() {
		if c, err := second.Accept(); err == nil {
			accepted <- c
		}
	}()
	c2, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the second server got no connection")
	}
	if second.Addr().String() != lis.Addr().String() {
		t.Errorf("address %s, want %s", second.Addr(), lis.Addr())
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
