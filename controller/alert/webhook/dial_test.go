package webhook_test

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

func TestDestinationsCheck(t *testing.T) {
	own := func() []netip.AddrPort {
		return []netip.AddrPort{netip.MustParseAddrPort("10.1.2.3:8080"), netip.MustParseAddrPort("[::]:7443")}
	}
	tests := []struct {
		addr         string
		allowPrivate bool
		refused      string // "" when allowed
	}{
		{"203.0.113.9:443", false, ""},
		{"10.0.0.5:443", false, ""}, // RFC 1918 stays allowed: receivers live inside networks
		{"192.168.1.5:443", false, ""},
		{"172.16.0.5:443", false, ""},
		{"[fd00::5]:443", false, ""},
		{"127.0.0.1:80", false, "loopback"},
		{"127.8.9.10:80", false, "loopback"},
		{"[::1]:80", false, "loopback"},
		{"[::ffff:127.0.0.1]:80", false, "loopback"},
		{"169.254.169.254:80", false, "link-local"},
		{"[fe80::1]:80", false, "link-local"},
		{"0.0.0.0:80", false, "unspecified"},
		{"[::]:80", false, "unspecified"},
		{"224.0.0.1:80", false, "multicast"},
		{"255.255.255.255:80", false, "broadcast"},
		{"10.1.2.3:8080", false, "own listening"},
		{"10.1.2.3:8081", false, ""},
		{"127.0.0.1:7443", true, "own listening"}, // a wildcard listener: every local address on its port
		{"127.0.0.1:80", true, ""},
		{"169.254.169.254:80", true, ""},
		{"10.1.2.3:8080", true, "own listening"},
		{"0.0.0.0:80", true, "unspecified"},
	}
	for _, tc := range tests {
		d := &webhook.Destinations{AllowPrivate: tc.allowPrivate, Own: own}
		err := d.Check(netip.MustParseAddrPort(tc.addr))
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s (allow private %v): refused: %v", tc.addr, tc.allowPrivate, err)
		case tc.refused != "" && (err == nil || !errors.Is(err, webhook.ErrDestinationRefused) || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s (allow private %v): %v, want refused as %s", tc.addr, tc.allowPrivate, err, tc.refused)
		}
	}
}

// countingListener accepts connections on 127.0.0.1 and counts them.
func countingListener(t *testing.T) (net.Listener, *atomic.Int64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { lis.Close() })
	return lis, &n
}

// TestDeliverRefusesPrivateDestinations: without --webhook-allow-private a
// webhook to loopback (by address or by a name that resolves to it) or to
// the cloud metadata address fails with an error that says why, and no
// connection is made; the controller's own API is refused even with the
// flag.
func TestDeliverRefusesPrivateDestinations(t *testing.T) {
	lis, accepted := countingListener(t)
	port := lis.Addr().(*net.TCPAddr).Port
	f := newFixture(t)
	f.refusePrivate = true
	hooks := map[string]string{
		"loopback":  "http://" + lis.Addr().String() + "/hook",
		"localhost": "http://localhost:" + strconv.Itoa(port) + "/hook",
		"metadata":  "http://169.254.169.254/latest/meta-data/",
	}
	want := map[string]string{"loopback": "loopback", "localhost": "loopback", "metadata": "link-local"}
	var names []string
	for name, url := range hooks {
		f.hook(name, url, policy.FormatJSON, nil)
		names = append(names, name)
	}
	_, ids := f.raise(store.EventFiring, time.Now(), names...)
	r := f.start(webhook.Config{})
	r.d.Kick()
	for i, id := range ids {
		d := f.waitAttempted(id, 1)
		if !strings.Contains(d.LastError, webhook.ErrDestinationRefused.Error()) || !strings.Contains(d.LastError, want[names[i]]) {
			t.Errorf("%s: last error %q, want the destination refused as %s", names[i], d.LastError, want[names[i]])
		}
	}
	r.stop()
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the loopback receiver", n)
	}

	// With the flag, loopback is reached, but never the controller's own
	// listener.
	g := newFixture(t)
	g.hook("own", "http://"+lis.Addr().String()+"/api/v1/policies", policy.FormatJSON, nil)
	_, ids = g.raise(store.EventFiring, time.Now(), "own")
	own := netip.MustParseAddrPort(lis.Addr().String())
	r = g.start(webhook.Config{Destinations: webhook.Destinations{Own: func() []netip.AddrPort { return []netip.AddrPort{own} }}})
	r.d.Kick()
	d := g.waitAttempted(ids[0], 1)
	r.stop()
	if !strings.Contains(d.LastError, "own listening") {
		t.Errorf("own API: last error %q", d.LastError)
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the controller's own listener", n)
	}
}
