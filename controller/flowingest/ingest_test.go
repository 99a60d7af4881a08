package flowingest

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

var testNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func ruleNames(id ruleset.RuleID) string { return (&ruleset.RuleSet{}).RuleName(id) }

// admitted submits b for a and, when it is queued, takes it off the
// queue as the writer would, without storing it; it returns the refusal
// (nil: queued).
func admitted(t *testing.T, in *Ingester, a *Agent, b *pb.FlowBatch) *pb.FlowAck {
	t.Helper()
	ack := a.Submit(b, ruleNames, func(*pb.FlowAck) {})
	if ack == nil {
		<-in.queue
		a.Done()
	}
	return ack
}

// TestEmptyBatchesCostTokens: a flood of empty batches is rate limited
// like records are; each batch costs the store a transaction share and an
// ack, so none is free.
func TestEmptyBatchesCostTokens(t *testing.T) {
	reg := prometheus.NewRegistry()
	in := New(Config{Now: func() time.Time { return testNow }, AgentFlowRate: 100, Registry: reg}) // a burst of 1,000
	a := in.NewAgent("node-a", zap.NewNop())
	accepted := 0
	for seq := uint64(1); seq <= 10000; seq++ {
		ack := admitted(t, in, a, &pb.FlowBatch{Seq: seq, SpoolId: 1})
		switch {
		case ack == nil:
			accepted++
		case !ack.GetRetry():
			t.Fatalf("empty batch %d refused for good: %+v", seq, ack)
		}
	}
	if accepted > 1000 {
		t.Errorf("%d of 10,000 empty batches accepted with the clock stopped, want at most the burst of 1,000", accepted)
	}
	if got := promtest.ToFloat64(in.m.flowBatches.WithLabelValues("rate_limited")); got < 9000 {
		t.Errorf("rate_limited batches counted %v, want at least 9,000", got)
	}
}
