package integration_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// sshAlert alerts on any SSH attempt to a managed workload.
var sshAlert = testutil.SSHAlertPolicy("", "")

// scriptedFlows is a FlowSource that sends the batches a test gives it,
// each once, and records the controller's answers.
type scriptedFlows struct {
	out  chan *pb.FlowBatch
	mu   sync.Mutex
	acks []*pb.FlowAck
}

func newScriptedFlows() *scriptedFlows { return &scriptedFlows{out: make(chan *pb.FlowBatch, 64)} }

func (f *scriptedFlows) Next(ctx context.Context) (*pb.FlowBatch, error) {
	select {
	case b := <-f.out:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *scriptedFlows) Ack(a *pb.FlowAck) {
	f.mu.Lock()
	f.acks = append(f.acks, a)
	f.mu.Unlock()
}

func (f *scriptedFlows) Reset() {}

// send sends b and waits for its answer.
func (f *scriptedFlows) send(t *testing.T, b *pb.FlowBatch) *pb.FlowAck {
	t.Helper()
	f.mu.Lock()
	n := len(f.acks)
	f.mu.Unlock()
	f.out <- b
	var got *pb.FlowAck
	testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the ack of batch %d", b.GetSeq()), func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.acks) == n {
			return fmt.Errorf("no answer yet")
		}
		got = f.acks[n]
		return nil
	})
	if got.GetSeq() != b.GetSeq() {
		t.Fatalf("ack for seq %d, want %d", got.GetSeq(), b.GetSeq())
	}
	return got
}

var flowBase = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// sshAttempt is node-a's ingress report of client -> web:22, denied by
// default deny.
func sshAttempt(srcPort uint32, at time.Time) *pb.FlowRecord {
	return &pb.FlowRecord{
		TimeUnixNano: at.UnixNano(), Direction: uint32(ruleset.Ingress), Protocol: uint32(ruleset.ProtocolTCP),
		SrcAddr: []byte{10, 250, 33, 2}, SrcPort: srcPort, SrcIdentity: 300,
		DstAddr: []byte{10, 250, 17, 2}, DstPort: 22, DstIdentity: 301,
		Verdict: uint32(ruleset.VerdictDenied), Packets: 1, Bytes: 60,
		FirstSeenUnixNano: at.UnixNano(), LastSeenUnixNano: at.UnixNano(),
	}
}

func (h *harness) flows(t *testing.T, q store.FlowQuery) int {
	t.Helper()
	q.Limit = 1000
	recs, err := h.St.Flows(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func (h *harness) alerts(t *testing.T) []store.Alert {
	t.Helper()
	as, err := h.St.Alerts(context.Background(), store.AlertQuery{})
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func withFlows(f controlplane.FlowSource) agentOpt {
	return func(c *controlplane.Config) { c.Flows = f }
}

// TestFlowIngest: batches are stored named (workloads, rules) and raise
// alerts; a batch sent again is acked and not stored twice; a malformed
// batch is refused whole, for good, and stores nothing.
func TestFlowIngest(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes, sshAlert)
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)

	var ruleID ruleset.RuleID
	for _, r := range a.enf.Current().Rules {
		if r.Name == "shop/client-to-web" {
			ruleID = r.ID
		}
	}
	allowed := sshAttempt(41000, flowBase)
	allowed.DstPort, allowed.Verdict, allowed.Rule = 8080, uint32(ruleset.VerdictAllowed), uint32(ruleID)
	b1 := &pb.FlowBatch{Seq: 1, SpoolId: 7, Records: []*pb.FlowRecord{sshAttempt(40000, flowBase), allowed}}
	if ack := src.send(t, b1); ack.GetError() != "" {
		t.Fatalf("batch 1 refused: %s", ack.GetError())
	}
	recs, err := h.St.Flows(context.Background(), store.FlowQuery{Limit: 10, HasPort: true, Port: 8080})
	if err != nil || len(recs) != 1 {
		t.Fatalf("flows to 8080: %v, %v", recs, err)
	}
	if r := recs[0]; r.Node != "node-a" || r.SrcWorkload != "client" || r.DstWorkload != "web" || r.Rule != "shop/client-to-web" {
		t.Errorf("stored flow not named from the policy and rule set: %+v", r)
	}
	as := h.alerts(t)
	if len(as) != 1 {
		t.Fatalf("alerts after one SSH attempt: %+v", as)
	}
	if a := as[0]; a.Rule != "unexpected-ssh" || a.Source != "client" || a.Destination != "web" || a.Count != 1 ||
		a.DecidingRule != ruleset.DefaultDenyName || a.State != store.AlertOpen {
		t.Errorf("alert: %+v", a)
	}

	// Lost ack: the agent sends batch 1 again. Acked, not stored again,
	// not counted again.
	if ack := src.send(t, b1); ack.GetError() != "" {
		t.Fatalf("resent batch 1 refused: %s", ack.GetError())
	}
	if n := h.flows(t, store.FlowQuery{}); n != 2 {
		t.Errorf("%d flows after a resend, want 2", n)
	}
	if got := h.Counter("eastguard_controller_flow_batches_total", "result", "duplicate"); got != 1 {
		t.Errorf("duplicate batches counted %v, want 1", got)
	}

	// A new attempt within the window: the same alert, counted twice.
	if ack := src.send(t, &pb.FlowBatch{Seq: 2, SpoolId: 7, Records: []*pb.FlowRecord{sshAttempt(40001, flowBase.Add(time.Second))}}); ack.GetError() != "" {
		t.Fatalf("batch 2 refused: %s", ack.GetError())
	}
	if as := h.alerts(t); len(as) != 1 || as[0].Count != 2 {
		t.Errorf("alerts after a second attempt: %+v", as)
	}

	// Malformed: one bad record refuses the whole batch, not to be retried.
	bad := sshAttempt(40002, flowBase)
	bad.Direction = 7
	ack := src.send(t, &pb.FlowBatch{Seq: 3, SpoolId: 7, Records: []*pb.FlowRecord{sshAttempt(40003, flowBase), bad}})
	if ack.GetError() == "" || ack.GetRetry() || !strings.Contains(ack.GetError(), "records[1].direction") {
		t.Errorf("malformed batch answered %+v, want a refusal naming records[1].direction", ack)
	}
	if n := h.flows(t, store.FlowQuery{}); n != 3 {
		t.Errorf("%d flows after a malformed batch, want 3 (none of it stored)", n)
	}
	if len(h.Logged("malformed flow batch refused")) == 0 {
		t.Error("malformed batch not logged")
	}
	if got := h.Counter("eastguard_controller_alerts_raised_total", "rule", "unexpected-ssh"); got != 1 {
		t.Errorf("alerts raised counted %v, want 1", got)
	}
}

// TestFlowIngestNotLocal: node-a reporting an SSH attempt between two of
// node-b's workloads (a compromised node framing others) raises no alert:
// that record is dropped and counted, the rest of its batch stored.
func TestFlowIngestNotLocal(t *testing.T) {
	h := newHarness(t)
	h.Apply(testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{
		{Name: "web", Node: "node-a", Interface: "eg1-web", Addrs: []string{"10.250.17.2"}},
		{Name: "client", Node: "node-b", Interface: "eg2-client", Addrs: []string{"10.250.33.2"}},
		{Name: "db", Node: "node-b", Interface: "eg2-db", Addrs: []string{"10.250.33.3"}},
	}}), sshAlert)
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)
	forged := sshAttempt(40000, flowBase)
	forged.DstAddr = []byte{10, 250, 33, 3} // client -> db, both on node-b
	ack := src.send(t, &pb.FlowBatch{Seq: 1, SpoolId: 1, Records: []*pb.FlowRecord{forged, sshAttempt(40001, flowBase)}})
	if ack.GetError() != "" {
		t.Fatalf("batch refused: %+v", ack)
	}
	as := h.alerts(t)
	if len(as) != 1 || as[0].Source != "client" || as[0].Destination != "web" {
		t.Errorf("alerts %+v, want client -> web only", as)
	}
	if n := h.flows(t, store.FlowQuery{}); n != 1 {
		t.Errorf("%d flows stored, want the genuine one", n)
	}
	if got := h.Counter("eastguard_controller_flow_records_refused_total", "reason", "not_local"); got != 1 {
		t.Errorf("records refused as not local counted %v, want 1", got)
	}
	if len(h.Logged("flow records refused: no end on the reporting node")) == 0 {
		t.Error("refused record not logged")
	}
}

// TestFlowIngestRateLimit: an agent over its rate gets "retry later",
// and nothing of the refused batch is stored.
func TestFlowIngestRateLimit(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) { c.AgentFlowRate = 1 }) // burst of 10 records
	h.Apply(twoNodes)
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)
	batch := func(seq uint64, n int) *pb.FlowBatch {
		b := &pb.FlowBatch{Seq: seq, SpoolId: 1}
		for i := range n {
			b.Records = append(b.Records, sshAttempt(uint32(30000+int(seq)*100+i), flowBase))
		}
		return b
	}
	if ack := src.send(t, batch(1, 10)); ack.GetError() != "" {
		t.Fatalf("first batch, within the burst, refused: %s", ack.GetError())
	}
	ack := src.send(t, batch(2, 10))
	if !ack.GetRetry() || !strings.Contains(ack.GetError(), "rate limited") {
		t.Fatalf("batch over the rate answered %+v, want retry with rate limited", ack)
	}
	if n := h.flows(t, store.FlowQuery{}); n != 10 {
		t.Errorf("%d flows stored, want the first batch's 10", n)
	}
	if got := h.Counter("eastguard_controller_flow_batches_total", "result", "rate_limited"); got != 1 {
		t.Errorf("rate-limited batches counted %v", got)
	}
}

// TestFlowIngestStoreFull: a full store refuses batches with "retry
// later", counts it, and the control plane goes on (policy changes still
// reach agents).
func TestFlowIngestStoreFull(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) { c.AgentFlowRate = -1 })
	h.StoreOpts = []sqlite.Option{sqlite.WithEventMaxPages(64)} // 256 KiB
	h.Restart()
	h.Apply(twoNodes)
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)
	var full *pb.FlowAck
	for seq := uint64(1); seq <= 100 && full == nil; seq++ {
		b := &pb.FlowBatch{Seq: seq, SpoolId: 1}
		for i := range 200 {
			b.Records = append(b.Records, sshAttempt(uint32(i+1), flowBase.Add(time.Duration(seq)*time.Second)))
		}
		if ack := src.send(t, b); ack.GetError() != "" {
			full = ack
		}
	}
	if full == nil {
		t.Fatal("20,000 flows fit in a 256 KiB store")
	}
	if !full.GetRetry() || !strings.Contains(full.GetError(), "full") {
		t.Errorf("full store answered %+v, want retry and a message saying full", full)
	}
	if got := h.Counter("eastguard_controller_store_write_errors_total", "reason", "full"); got < 1 {
		t.Errorf("store_write_errors_total{reason=full} = %v", got)
	}
	before := h.AgentStatus("node-a").LatestVersion
	h.Apply(adminSSH)
	st := h.waitApplied(a)
	if st.AppliedVersion <= before {
		t.Errorf("policy change not applied while the flow store is full: %+v", st)
	}
}
