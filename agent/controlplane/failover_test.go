package controlplane

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/eastguard/eastguard/internal/wire"
)

// startStandby serves a standby controller of f's CA: every call is
// answered "not leader", naming leader; it counts the calls.
func startStandby(t *testing.T, f *fakeController, leader, listen string) (addr string, calls *atomic.Int64) {
	t.Helper()
	cert, err := f.ca.IssueServer([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	calls = new(atomic.Int64)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequestClientCert})),
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			calls.Add(1)
			return wire.NotLeader(leader)
		}))
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), calls
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestFailoverClientFindsTheLeader: with several controllers, an
// unreachable one and a standby (which names the leader, or not) are
// passed over: the agent joins and streams with the leader, and after the
// leader's stream ends it comes back to it through the others.
func TestFailoverClientFindsTheLeader(t *testing.T) {
	for _, named := range []bool{true, false} {
		t.Run(map[bool]string{true: "leader named", false: "leader not named"}[named], func(t *testing.T) {
			f := startFake(t, nil)
			leader := ""
			if named {
				leader = f.addr
			}
			standby, calls := startStandby(t, f, leader, "127.0.0.1:0")
			dead := deadAddr(t)
			c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String(), func(cfg *Config) {
				cfg.Controller = dead + "," + standby + "," + f.addr
			})
			startRun(t, c)
			s := f.nextStream(t)
			if n := len(f.joinCalls()); n != 1 {
				t.Errorf("joins at the leader: %d, want 1", n)
			}
			if calls.Load() == 0 {
				t.Error("the standby was never asked")
			}
			// The leader's stream ends (it died): the agent goes round the
			// others and back to it.
			before := calls.Load()
			s.close(t, nil)
			f.nextStream(t)
			if calls.Load() == before {
				t.Error("after the stream ended, the standby was not asked again")
			}
		})
	}
}

// TestFailoverClientNameForSeveral: a name resolving to several addresses
// (one per controller) is tried at each, the certificate checked against
// the name: the agent reaches the leader behind the standby's address.
func TestFailoverClientNameForSeveral(t *testing.T) {
	f := startFake(t, nil)
	_, port, _ := net.SplitHostPort(f.addr)
	// The standby on another loopback address, the same port.
	_, calls := startStandby(t, f, "", net.JoinHostPort("127.0.0.2", port))
	var lookups atomic.Int64
	c := f.newClient(t, openStateDir(t, t.TempDir()), &syncEnforcer{}, f.token.String(), func(cfg *Config) {
		cfg.Controller = net.JoinHostPort("localhost", port)
		cfg.Resolve = func(_ context.Context, host string) ([]netip.Addr, error) {
			lookups.Add(1)
			if host != "localhost" {
				t.Errorf("resolve %q", host)
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}, nil
		}
	})
	startRun(t, c)
	f.nextStream(t)
	if calls.Load() == 0 || lookups.Load() == 0 {
		t.Errorf("standby calls %d, lookups %d: want the name's first address (the standby) tried first", calls.Load(), lookups.Load())
	}
}
