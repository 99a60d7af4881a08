package integration_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// benchFlows is a FlowSource that sends prepared batches as fast as the
// controller acks them, with up to window batches in flight (as an agent
// with a backlog in its spool does).
type benchFlows struct {
	batches chan *pb.FlowBatch
	window  chan struct{}
	mu      sync.Mutex
	acked   int
	failed  []string
	done    chan struct{}
	want    int
}

func (f *benchFlows) Next(ctx context.Context) (*pb.FlowBatch, error) {
	select {
	case f.window <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case b := <-f.batches:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *benchFlows) Ack(a *pb.FlowAck) {
	<-f.window
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.GetError() != "" {
		f.failed = append(f.failed, a.GetError())
	}
	f.acked++
	if f.acked == f.want {
		close(f.done)
	}
}

func (f *benchFlows) Reset() {}

// BenchmarkFlowIngest: flow records per second from one agent's stream
// into SQLite (validation, naming, group-committed inserts with their
// indexes, the alert engine on every record; one record in 50 raises or
// counts on an alert), over loopback mutual TLS. Reported: records/s.
func BenchmarkFlowIngest(b *testing.B) {
	for _, size := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			h := newHarness(b, func(c *controller.Config) { c.AgentFlowRate = -1 })
			h.Apply(twoNodes, sshAlert)
			// Batches are made before the clock starts: the agent's
			// encoding is not the controller's cost.
			batches := make([]*pb.FlowBatch, b.N)
			for i := range batches {
				batch := &pb.FlowBatch{Seq: uint64(i + 1), SpoolId: 1}
				at := flowBase.Add(time.Duration(i) * time.Second)
				for j := range size {
					r := sshAttempt(uint32(1024+j%60000), at)
					if j%50 != 0 {
						r.DstPort, r.Verdict = 8080, 1
					}
					batch.Records = append(batch.Records, r)
				}
				batches[i] = batch
			}
			src := &benchFlows{batches: make(chan *pb.FlowBatch, b.N), window: make(chan struct{}, 8), done: make(chan struct{}), want: b.N}
			a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
			h.waitApplied(a)
			b.ResetTimer()
			start := time.Now()
			for _, batch := range batches {
				src.batches <- batch
			}
			select {
			case <-src.done:
			case <-time.After(10 * time.Minute):
				b.Fatalf("%d of %d batches acked after 10 minutes", src.acked, b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if len(src.failed) > 0 {
				b.Fatalf("%d batches refused, first: %s", len(src.failed), src.failed[0])
			}
			b.ReportMetric(float64(b.N*size)/elapsed.Seconds(), "records/s")
		})
	}
}
