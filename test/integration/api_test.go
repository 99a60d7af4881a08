package integration_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestSilentAgentDropped: a stream on which the agent stops talking is
// closed after three of its heartbeat intervals.
func TestSilentAgentDropped(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
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
	testutil.Eventually(t, 5*time.Second, "the node shown disconnected", func() error {
		if st := h.AgentStatus("node-a"); st.Connected || !strings.Contains(st.LastError, "no message from the agent") {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
}

// TestServingCertificateRotates: the serving certificate is replaced at
// two thirds of its life, and agents keep connecting.
func TestServingCertificateRotates(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) { c.ServerCertTTL = 3 * time.Second })
	first := h.Srv.ServingCertificate().Leaf.SerialNumber
	testutil.Eventually(t, 10*time.Second, "a new serving certificate", func() error {
		if h.Srv.ServingCertificate().Leaf.SerialNumber.Cmp(first) == 0 {
			return fmt.Errorf("still serial %x", first)
		}
		return nil
	})
	h.Apply(twoNodes)
	h.waitApplied(h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil))
}
