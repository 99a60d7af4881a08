package controlplane

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/eastguard/eastguard/internal/wire"
)

// startStandby serves a standby controller of f's CA: every call is
// answered "not leader", naming leader; it counts the calls.
func startStandby(t *testing.T, f *fakeController, leader string) (addr string, calls *atomic.Int64) {
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
	lis, err := net.Listen("tcp", "127.0.0.1:0")
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
			standby, calls := startStandby(t, f, leader)
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
