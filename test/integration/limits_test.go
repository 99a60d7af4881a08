package integration_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// consumeCounter counts the write transactions spent on join tokens.
type consumeCounter struct {
	store.Store
	n *atomic.Int64
}

func (c consumeCounter) ConsumeJoinToken(ctx context.Context, id string, now time.Time, check func(store.JoinToken) error, cert *store.Cert,
	audit ...store.AuditRecord) (store.JoinToken, error) {
	c.n.Add(1)
	return c.Store.ConsumeJoinToken(ctx, id, now, check, cert, audit...)
}

const refusals = "eastguard_controller_agent_refusals_total"

// TestJoinFlood: 1,000 joins with made-up tokens from one source are
// answered cheaply (most of them by the per-source rate limit, the rest by
// a read-only lookup: no write transaction), each is counted, few are
// logged, and a renewal and a policy commit meanwhile are not held up. A
// real agent from the same source joins once the flood is over (the rate
// limit answers "retry later").
func TestJoinFlood(t *testing.T) {
	h := newHarness(t)
	var consumed atomic.Int64
	h.WrapStore = func(st store.Store) store.Store { return consumeCounter{st, &consumed} }
	h.Restart()
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	renewer := h.rawClient(savedCert(t, a.dir))
	key, _, _ := pki.NewNodeKey()
	renewCSR, _ := pki.NewCSR(key, "node-a")
	renew := func() time.Duration {
		start := time.Now()
		if _, err := renewer.Renew(context.Background(), &pb.RenewRequest{Csr: renewCSR}); err != nil {
			t.Errorf("renewal: %v", err)
		}
		return time.Since(start)
	}
	apply := func(i int) time.Duration {
		start := time.Now()
		h.Apply(twoNodes, strings.Replace(adminSSH, "port: 22", fmt.Sprintf("port: %d", 2200+i), 1))
		return time.Since(start)
	}
	baseRenew, baseApply := renew(), apply(1)

	const joins, workers = 1000, 50
	csr, _ := pki.NewCSR(key, "node-b")
	clients := []pb.ControlClient{h.rawClient(nil), h.rawClient(nil), h.rawClient(nil), h.rawClient(nil)}
	consumedBefore, logsBefore := consumed.Load(), len(h.Logged("refused"))
	refusedBefore := h.Counter(refusals, "reason", "token") + h.Counter(refusals, "reason", "rate_limited")
	var limited, invalid atomic.Int64
	halfway := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	next := atomic.Int64{}
	floodStart := time.Now()
	for w := range workers {
		wg.Go(func() {
			for next.Add(1) <= joins {
				_, err := clients[w%len(clients)].Join(context.Background(), &pb.JoinRequest{
					Node: "node-b", TokenId: rand.Text()[:12], TokenSecret: rand.Text(), Csr: csr})
				switch status.Code(err) {
				case codes.ResourceExhausted:
					limited.Add(1)
				case codes.Unauthenticated:
					invalid.Add(1)
				default:
					t.Errorf("bogus join: %v", err)
				}
				if limited.Load()+invalid.Load() >= joins/2 {
					once.Do(func() { close(halfway) })
				}
			}
		})
	}
	<-halfway
	floodRenew, floodApply := renew(), apply(2)
	wg.Wait()
	flood := time.Since(floodStart)
	t.Logf("%d bogus joins in %v: %d rate limited, %d refused as invalid; renewal %v (%v without the flood), policy commit %v (%v without)",
		joins, flood, limited.Load(), invalid.Load(), floodRenew, baseRenew, floodApply, baseApply)

	const bound = 2 * time.Second // target 100 ms
	if floodRenew > bound || floodApply > bound {
		t.Errorf("during the flood a renewal took %v and a policy commit %v; want both under %v", floodRenew, floodApply, bound)
	}
	if limited.Load() == 0 || float64(invalid.Load()) > agentapi.DefaultJoinBurst+agentapi.DefaultJoinRate*flood.Seconds()+1 {
		t.Errorf("%d joins rate limited, %d looked up in %v: the rate limit (%v/s, burst %d) did not hold", limited.Load(), invalid.Load(),
			flood, agentapi.DefaultJoinRate, agentapi.DefaultJoinBurst)
	}
	if n := consumed.Load() - consumedBefore; n != 0 {
		t.Errorf("%d write transactions spent on made-up tokens", n)
	}
	if got := h.Counter(refusals, "reason", "token") + h.Counter(refusals, "reason", "rate_limited") - refusedBefore; got != joins {
		t.Errorf("%v refusals counted, want %d", got, joins)
	}
	if n := len(h.Logged("refused")) - logsBefore; n > 10 {
		t.Errorf("%d log lines for the flood from one source; want a few and a count", n)
	}

	b := h.startAgent("node-b", h.Token("node-b", time.Hour), nil, nil)
	testutil.Eventually(t, 20*time.Second, "node-b's agent to join after the flood", func() error {
		if !b.client.Connected() {
			return errors.New("not connected")
		}
		return nil
	})
}

// dialFrom opens a TCP connection to addr from a given loopback address.
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer says whether the controller closed c (EOF or reset) rather
// than keeping it open, waiting up to wait for the answer.
func closedByPeer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestConnectionLimits: the listener holds at most MaxConnsPerSource
// connections from one source and MaxConns in all; beyond them it closes a
// new connection at once and counts it, and a freed slot is usable again.
func TestConnectionLimits(t *testing.T) {
	h := newHarness(t, func(c *controller.Config) {
		c.AgentLimits = agentapi.Limits{MaxConns: 4, MaxConnsPerSource: 2}
	})
	held := []net.Conn{dialFrom(t, "127.0.0.2", h.Addr), dialFrom(t, "127.0.0.2", h.Addr)}
	if !closedByPeer(dialFrom(t, "127.0.0.2", h.Addr), 5*time.Second) {
		t.Fatal("a third connection from one source was kept")
	}
	for _, c := range held {
		if closedByPeer(c, 200*time.Millisecond) {
			t.Fatal("a connection within the limit was closed")
		}
	}
	held = append(held, dialFrom(t, "127.0.0.3", h.Addr), dialFrom(t, "127.0.0.3", h.Addr))
	if !closedByPeer(dialFrom(t, "127.0.0.4", h.Addr), 5*time.Second) {
		t.Fatal("a fifth connection was kept")
	}
	if got := h.Counter(refusals, "reason", "connection_limit"); got != 2 {
		t.Errorf("%v connection refusals counted, want 2", got)
	}
	// A slot freed is taken again; the connection speaks gRPC.
	held[0].Close()
	testutil.Eventually(t, 5*time.Second, "a freed slot to be usable", func() error {
		c := dialFrom(t, "127.0.0.2", h.Addr)
		defer c.Close()
		if closedByPeer(c, 200*time.Millisecond) {
			return errors.New("closed")
		}
		return nil
	})
	for _, c := range held[1:] {
		c.Close()
	}
	testutil.Eventually(t, 5*time.Second, "a gRPC call once the slots are free", func() error {
		_, err := h.rawClient(nil).Renew(context.Background(), &pb.RenewRequest{})
		if status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("renew without a certificate: %v", err)
		}
		return nil
	})
}
