package controlplane

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// fakeFlows is a FlowSource with agent/flows.Spool's contract: Next hands
// out a batch not sent yet (marking it sent), Ack drops it, Reset makes
// every batch sent and not acknowledged go again.
type fakeFlows struct {
	mu      sync.Mutex
	batches []*pb.FlowBatch
	sent    map[uint64]bool
	acks    []*pb.FlowAck
	resets  int
	wake    chan struct{}
}

func newFakeFlows(seqs ...uint64) *fakeFlows {
	f := &fakeFlows{sent: map[uint64]bool{}, wake: make(chan struct{}, 1)}
	for _, s := range seqs {
		f.batches = append(f.batches, &pb.FlowBatch{Seq: s, SpoolId: 42, Records: []*pb.FlowRecord{{Packets: s}}})
	}
	return f
}

func (f *fakeFlows) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *fakeFlows) Next(ctx context.Context) (*pb.FlowBatch, error) {
	for {
		f.mu.Lock()
		for _, b := range f.batches {
			if !f.sent[b.Seq] {
				f.sent[b.Seq] = true
				f.mu.Unlock()
				return b, nil
			}
		}
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-f.wake:
		}
	}
}

func (f *fakeFlows) Ack(a *pb.FlowAck) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, a)
	if a.GetError() == "" || !a.GetRetry() {
		f.batches = slices.DeleteFunc(f.batches, func(b *pb.FlowBatch) bool { return b.Seq == a.GetSeq() })
	}
	delete(f.sent, a.GetSeq())
	f.signal()
}

func (f *fakeFlows) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resets++
	clear(f.sent)
	f.signal()
}

func (f *fakeFlows) ackedSeqs() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for _, a := range f.acks {
		out = append(out, a.GetSeq())
	}
	return out
}

func (f *fakeFlows) resetCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resets
}

// flowBatch waits for the next flow batch on the stream.
func (s *fakeStream) flowBatch(t *testing.T) *pb.FlowBatch {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-s.recv:
			if b := m.GetFlows(); b != nil {
				return b
			}
		case <-deadline:
			t.Fatalf("no flow batch within %s", waitFor)
			return nil
		}
	}
}

func TestFlowsSentAndAcked(t *testing.T) {
	f := startFake(t, nil)
	flows := newFakeFlows(1, 2)
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String(), func(cfg *Config) { cfg.Flows = flows })
	r := startRun(t, c)
	s := f.nextStream(t)

	var got []uint64
	for range 2 {
		b := s.flowBatch(t)
		if b.GetSpoolId() != 42 || len(b.GetRecords()) != 1 || b.GetRecords()[0].GetPackets() != b.GetSeq() {
			t.Errorf("batch: %v", b)
		}
		got = append(got, b.GetSeq())
	}
	if !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("batches sent: %v, want [1 2]", got)
	}
	s.push(t, &pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: &pb.FlowAck{Seq: 1}}})
	s.push(t, &pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: &pb.FlowAck{Seq: 2, Error: "store full", Retry: true}}})
	eventually(t, "both acks handed to the flow source", func() bool { return len(flows.ackedSeqs()) == 2 })
	if a := flows.ackedSeqs(); !slices.Equal(a, []uint64{1, 2}) {
		t.Errorf("acks handed over: %v", a)
	}
	// The batch to retry goes again (the fake source makes it sendable
	// at once).
	if b := s.flowBatch(t); b.GetSeq() != 2 {
		t.Errorf("batch after a retry ack: %d, want 2", b.GetSeq())
	}
	if err := r.stop(t); err != nil {
		t.Errorf("Run: %v", err)
	}
	if flows.resetCount() == 0 {
		t.Error("the flow source was not reset when the stream ended")
	}
}
