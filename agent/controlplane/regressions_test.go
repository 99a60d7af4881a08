package controlplane

import (
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Regression tests of three bugs these unit tests found: Run stopped
// during a join returned an error, a revocation that beat the Hello made
// the agent reconnect forever, and a batch in flight when a stream ended
// stayed stuck through the next stream.

// Run's documentation: it returns nil when ctx is done. Stopped while it
// was still trying to join (controller unreachable), it returned
// context.Canceled, which the agent logged as "control plane stopped" and
// returned as its error.
func TestRunReturnsNilWhenStoppedDuringJoin(t *testing.T) {
	f := startFake(t, nil)
	f.set(func(f *fakeController) {
		f.joinHook = func(int, *pb.JoinRequest) error { return status.Error(codes.Unavailable, "controller starting") }
	})
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String())
	r := startRun(t, c)
	eventually(t, "a retried join", func() bool { return len(f.joinCalls()) >= 2 })
	if err := r.stop(t); err != nil {
		t.Errorf("Run stopped while joining: %v, want nil", err)
	}
}

// The controller refuses a revoked certificate as soon as the stream
// opens, before it reads the Hello (controller/agentapi Connect
// authenticates first). If the refusal is in before the agent has written
// its Hello, Send returns io.EOF; stream() returned that EOF as it was
// instead of the status Recv gives, and Run reconnected forever
// logging "EOF" instead of stopping with ErrRevoked.
func TestRevokedBeforeHelloStopsRun(t *testing.T) {
	f := startFake(t, nil)
	refused := make(chan struct{})
	f.set(func(f *fakeController) {
		f.preHello = func(n int) error {
			if n == 1 {
				return nil
			}
			if n == 2 {
				close(refused)
			}
			return status.Error(codes.PermissionDenied, `certificate revoked: certificate of node "node-a" (serial 1f) was revoked`)
		}
	})
	// The agent is slow between opening the stream and sending Hello
	// (Current runs in between): the refusal arrives first.
	var slow atomic.Bool
	enf := &syncEnforcer{currentHook: func() {
		if !slow.Load() {
			return
		}
		select {
		case <-refused:
		case <-time.After(waitFor):
		}
		// No event tells when the refusal has reached the client
		// transport; this only widens the race window.
		time.Sleep(200 * time.Millisecond)
	}}
	c := f.newClient(t, openStateDir(t, t.TempDir()), enf, f.token.String())
	r := startRun(t, c)
	s := f.nextStream(t)
	slow.Store(true)
	s.close(t, status.Error(codes.Unavailable, "controller restarting"))
	select {
	case <-r.done:
		if r.err == nil || !containsFold(r.err.Error(), "revoked") {
			t.Errorf("Run: %v, want %v", r.err, ErrRevoked)
		}
	case <-time.After(waitFor):
		t.Errorf("Run still reconnecting after %d refusals of a revoked certificate", f.connectCount()-1)
	}
}

// stream.go deferred flows.Reset after the cancel and wg.Wait, so Reset ran
// first, while the flow sender was still running: it took a batch that
// Reset had made sendable again, failed to send it on the dead stream and
// left it marked in flight, so the next stream did not send it again
// (until that stream ended too), and it held one slot of the spool's
// window meanwhile.
func TestFlowsResentOnNextStream(t *testing.T) {
	f := startFake(t, nil)
	flows := newFakeFlows(1)
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String(), func(cfg *Config) { cfg.Flows = flows })
	startRun(t, c)
	s1 := f.nextStream(t)
	if b := s1.flowBatch(t); b.GetSeq() != 1 {
		t.Fatalf("batch %d", b.GetSeq())
	}
	// Not acknowledged: the stream ends.
	s1.close(t, status.Error(codes.Unavailable, "controller restarting"))
	s2 := f.nextStream(t)
	if b := s2.flowBatch(t); b.GetSeq() != 1 {
		t.Errorf("batch %d on the next stream, want 1 again", b.GetSeq())
	}
}
