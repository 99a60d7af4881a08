package integration_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Tests of what a compromised agent may send on its stream: a joined
// node's certificate in a raw gRPC client that says what a real agent
// never would.

// rawNode joins node with a real agent, stops it, and returns a raw
// client with the certificate it saved: the node compromised.
func (h *harness) rawNode(node string) pb.ControlClient {
	h.T.Helper()
	a := h.startAgent(node, h.Token(node, time.Hour), nil, nil)
	h.waitApplied(a)
	a.stop()
	return h.rawClient(savedCert(h.T, a.dir))
}

// staleAgent connects as node with the hello given, answers every rule
// set pushed with a stale-version ack (claiming to enforce that very
// version) until it has sent budget acks or the stream ends, and returns
// how many it sent and the error that ended the stream (nil if it did
// not end).
func staleAgent(t *testing.T, c pb.ControlClient, hello *pb.Hello, budget int) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hello}}); err != nil {
		_, err = st.Recv()
		return 0, err
	}
	sent := 0
	for sent < budget {
		m, err := st.Recv()
		if err != nil {
			return sent, err
		}
		var v uint64
		switch msg := m.GetMsg().(type) {
		case *pb.ControllerMessage_Full:
			v = msg.Full.GetVersion()
		case *pb.ControllerMessage_Delta:
			v = msg.Delta.GetVersion()
		default:
			continue // welcome, heartbeats
		}
		ack := &pb.Ack{Version: v, Code: pb.AckCode_ACK_CODE_STALE_VERSION, AppliedVersion: v, Error: "stale"}
		if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: ack}}); err != nil {
			_, err = st.Recv()
			return sent, err
		}
		sent++
	}
	return sent, nil
}

// TestStaleVersionResyncLimited: an agent that answers every rule set
// with "stale version" (each one makes the controller commit a version
// numbered past the agent's) gets at most one re-sync a minute; beyond
// it the ack is refused and the stream closed with ResourceExhausted,
// saying why. A Hello claiming a version from the future counts too.
func TestStaleVersionResyncLimited(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	c := h.rawNode("node-a")
	// Each re-sync commits a version and says so (policyrepo.BumpPast).
	resyncs := func() int { return len(h.Logged("numbering moved past it")) }

	acks, refusals := 0, 0
	for streams := 0; acks < 100; streams++ {
		if streams > 200 {
			t.Fatalf("%d streams for %d stale acks", streams, acks)
		}
		n, err := staleAgent(t, c, &pb.Hello{Node: "node-a"}, 100-acks)
		acks += n
		if err == nil {
			continue
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "at most one re-sync per") {
			t.Fatalf("stream ended with %v, want ResourceExhausted saying re-syncs are limited", err)
		}
		refusals++
	}
	if n := resyncs(); n > 2 {
		t.Errorf("100 stale-version acks committed %d re-synced versions, want at most 2", n)
	}
	if refusals < 90 {
		t.Errorf("%d of 100 stale-version acks refused, want the ones beyond the first", refusals)
	}
	if got := h.Counter("eastguard_controller_agent_refusals_total", "reason", "stale_resync"); got < 90 {
		t.Errorf("agent_refusals_total{reason=stale_resync} = %v", got)
	}
	if _, err := staleAgent(t, c, &pb.Hello{Node: "node-a"}, 10); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream ended with %v, want ResourceExhausted", err)
	}
	testutil.Eventually(t, 5*time.Second, "the node's last error saying why its stream was closed", func() error {
		if st := h.AgentStatus("node-a"); st.Connected || !strings.Contains(st.LastError, "at most one re-sync per") {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})

	// A minute later one more is allowed; a Hello claiming a version
	// beyond the newest counts against the same limit.
	h.Clock.Advance(agentapi.ResyncInterval)
	before := resyncs()
	for range 20 {
		_, err := staleAgent(t, c, &pb.Hello{Node: "node-a", AppliedVersion: h.AgentStatus("node-a").LatestVersion + 5}, 10)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("stream ended with %v, want ResourceExhausted", err)
		}
	}
	if n := resyncs() - before; n != 1 {
		t.Errorf("20 streams with a Hello from the future and stale acks, a minute later, committed %d re-synced versions, want 1", n)
	}
}

// openStream connects and says hello; it returns the stream and its first
// answer, or the error that ended the stream.
func openStream(t *testing.T, c pb.ControlClient, hello *pb.Hello) (pb.Control_ConnectClient, *pb.ControllerMessage, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	st, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hello}}); err != nil {
		_, err = st.Recv()
		return st, nil, err
	}
	m, err := st.Recv()
	return st, m, err
}

// endOf sends m on st and returns the error that then ends the stream.
func endOf(t *testing.T, st pb.Control_ConnectClient, m *pb.AgentMessage) error {
	t.Helper()
	if err := st.Send(m); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// TestAgentReportsBounded: what an agent says about itself (Hello,
// counters, the pending interfaces of an ack) is kept only within bounds;
// beyond them the stream is refused with InvalidArgument naming the field,
// and nothing of it is kept.
func TestAgentReportsBounded(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	c := h.rawNode("node-a")
	if v := h.AgentStatus("node-a").AgentVersion; v != "test" {
		t.Fatalf("agent version %q before the test, want test", v)
	}
	many := make([]string, 10000)
	for i := range many {
		many[i] = "cap"
	}
	for _, tc := range []struct {
		name  string
		hello *pb.Hello
		field string
	}{
		{"long agent version", &pb.Hello{AgentVersion: strings.Repeat("v", 1<<20)}, "hello.agentVersion: 1048576 bytes, more than the 256 allowed"},
		{"long kernel", &pb.Hello{Kernel: strings.Repeat("6", 257)}, "hello.kernel: 257 bytes"},
		{"control characters", &pb.Hello{Kernel: "6.8\x1b[2J"}, "hello.kernel"},
		{"many capabilities", &pb.Hello{Capabilities: many}, "hello.capabilities: 10000 entries, more than the 64 allowed"},
		{"long capability", &pb.Hello{Capabilities: []string{"delta", strings.Repeat("c", 65)}}, "hello.capabilities[1]: 65 bytes"},
		{"capability not a word", &pb.Hello{Capabilities: []string{"tcx; rm"}}, "hello.capabilities[0]"},
		{"long hash", &pb.Hello{AppliedHash: strings.Repeat("a", 1000)}, "hello.appliedHash"},
	} {
		tc.hello.Node = "node-a"
		_, _, err := openStream(t, c, tc.hello)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: stream ended with %v, want InvalidArgument naming %q", tc.name, err, tc.field)
		}
	}
	if got := h.Counter("eastguard_controller_agent_refusals_total", "reason", "invalid"); got != 7 {
		t.Errorf("agent_refusals_total{reason=invalid} = %v, want 7", got)
	}

	good := &pb.Hello{Node: "node-a", AgentVersion: "raw", Capabilities: []string{"delta"}}
	counters := map[string]uint64{}
	for i := range 1000 {
		counters[fmt.Sprintf("c%d", i)] = 1
	}
	for _, tc := range []struct {
		name   string
		values map[string]uint64
		field  string
	}{
		{"many counters", counters, "counters.values: 1000 keys, more than the 256 allowed"},
		{"long counter name", map[string]uint64{strings.Repeat("k", 65): 1}, "counters.values key: 65 bytes"},
		{"counter name not a word", map[string]uint64{"Denied Ingress": 1}, "counters.values key"},
	} {
		st, _, err := openStream(t, c, good)
		if err != nil {
			t.Fatal(err)
		}
		err = endOf(t, st, &pb.AgentMessage{Msg: &pb.AgentMessage_Counters{Counters: &pb.Counters{Values: tc.values}}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: stream ended with %v, want InvalidArgument naming %q", tc.name, err, tc.field)
		}
	}
	st, _, err := openStream(t, c, good)
	if err != nil {
		t.Fatal(err)
	}
	latest := h.AgentStatus("node-a")
	ack := &pb.Ack{Version: latest.LatestVersion, Hash: latest.LatestHash, AppliedVersion: latest.LatestVersion,
		PendingInterfaces: []string{"eg1-web", "../../etc"}}
	if err := endOf(t, st, &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: ack}}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "ack.pendingInterfaces[1]") {
		t.Errorf("ack with a pending interface that is no interface name: stream ended with %v", err)
	}

	testutil.Eventually(t, 5*time.Second, "node-a disconnected", func() error {
		if st := h.AgentStatus("node-a"); st.Connected {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	after := h.AgentStatus("node-a")
	if after.AgentVersion != "raw" || after.Kernel != "" || len(after.Counters) != 0 || len(after.PendingInterfaces) != 0 {
		t.Errorf("refused reports kept: agent version %q, kernel %q, %d counters, pending %v",
			after.AgentVersion, after.Kernel, len(after.Counters), after.PendingInterfaces)
	}
}
