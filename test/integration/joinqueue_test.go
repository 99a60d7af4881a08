package integration_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// failCertOnce fails the first certificate record, as a busy or failing
// store would, and counts the records.
type failCertOnce struct {
	store.Store
	calls *atomic.Int64
}

func (f failCertOnce) AddCert(ctx context.Context, c store.Cert) error {
	if f.calls.Add(1) == 1 {
		return errors.New("injected: database is locked")
	}
	return f.Store.AddCert(ctx, c)
}

// blockTokenLookups holds every join token lookup until release is
// closed, counting them.
type blockTokenLookups struct {
	store.Store
	waiting *atomic.Int64
	release chan struct{}
}

func (b blockTokenLookups) JoinToken(ctx context.Context, id string) (store.JoinToken, error) {
	b.waiting.Add(1)
	<-b.release
	return b.Store.JoinToken(ctx, id)
}

// TestJoinsWaitTheirTurn: at most eight joins do their store work at once;
// a ninth waits for a turn and, none coming within five seconds, is
// answered ResourceExhausted ("busy, retry later"), which agents retry,
// without having touched the store. The eight then complete.
func TestJoinsWaitTheirTurn(t *testing.T) {
	h := newHarness(t)
	var waiting atomic.Int64
	release := make(chan struct{})
	h.WrapStore = func(st store.Store) store.Store { return blockTokenLookups{st, &waiting, release} }
	h.Restart()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	const inProgress = 8
	client := h.rawClient(nil)
	join := func(node string) error {
		key, _, _ := pki.NewNodeKey()
		csr, _ := pki.NewCSR(key, node)
		tok, err := pki.ParseJoinToken(h.Token(node, time.Hour))
		if err != nil {
			return err
		}
		// Bounded: without the limit, a join would wait for the store forever.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err = client.Join(ctx, &pb.JoinRequest{Node: node, TokenId: tok.ID, TokenSecret: tok.Secret, Csr: csr})
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, inProgress)
	for i := range inProgress {
		wg.Go(func() { errs[i] = join("node-" + string(rune('a'+i))) })
	}
	deadline := time.Now().Add(20 * time.Second)
	for waiting.Load() < inProgress && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := waiting.Load(); n != inProgress {
		t.Fatalf("%d joins at the store, want %d", n, inProgress)
	}
	err := join("node-z")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "busy") {
		t.Errorf("ninth join: %v; want ResourceExhausted, busy", err)
	}
	if n := waiting.Load(); n != inProgress {
		t.Errorf("%d joins reached the store, want %d: the ninth did too", n, inProgress)
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("join %d: %v", i, err)
		}
	}
	if err := join("node-y"); err != nil {
		t.Errorf("a join once the others are done: %v", err)
	}
}
