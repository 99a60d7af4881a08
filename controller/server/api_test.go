package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/server"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestAPIRefusesBadRequests: malformed requests get a 400 saying what is
// wrong, and change nothing.
func TestAPIRefusesBadRequests(t *testing.T) {
	h := newHarness(t)
	api := httptest.NewServer(h.srv.Handler(h.reg))
	defer api.Close()
	token, err := h.srv.NewAdminToken(context.Background())
	if err != nil {
		t.Fatal(err)
	}
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
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, api.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(b), c.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", c.method, c.path, c.body, resp.StatusCode, b, c.code, c.want)
		}
	}
	if got := h.srv.Agents(); len(got) != 0 {
		t.Errorf("bad requests left state behind: %+v", got)
	}
}

// TestSilentAgentDropped: a stream on which the agent stops talking is
// closed after three of its heartbeat intervals.
func TestSilentAgentDropped(t *testing.T) {
	h := newHarness(t)
	h.apply(twoNodes)
	a := h.startAgent("node-a", h.token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	a.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := h.rawClient(savedCert(t, a.dir)).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &pb.Hello{Node: "node-a", HeartbeatIntervalMs: 100}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := st.Recv()
		if err == nil {
			continue // welcome, rule set, heartbeats
		}
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "no message from the agent") {
			t.Fatalf("stream ended with %v", err)
		}
		break
	}
	eventually(t, 5*time.Second, "the node shown disconnected", func() error {
		if st := h.agentStatus("node-a"); st.Connected || !strings.Contains(st.LastError, "no message from the agent") {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
}

// TestServingCertificateRotates: the serving certificate is replaced at
// two thirds of its life, and agents keep connecting.
func TestServingCertificateRotates(t *testing.T) {
	h := newHarness(t, func(c *server.Config) { c.ServerCertTTL = 3 * time.Second })
	first := h.srv.ServingCertificate().Leaf.SerialNumber
	eventually(t, 10*time.Second, "a new serving certificate", func() error {
		if h.srv.ServingCertificate().Leaf.SerialNumber.Cmp(first) == 0 {
			return fmt.Errorf("still serial %x", first)
		}
		return nil
	})
	h.apply(twoNodes)
	h.waitApplied(h.startAgent("node-a", h.token("node-a", time.Hour), nil, nil))
}
