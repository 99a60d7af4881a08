package webhook_test

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/alert/webhook/egress"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

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
		if !strings.Contains(d.LastError, egress.ErrDestinationRefused.Error()) || !strings.Contains(d.LastError, want[names[i]]) {
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
	r = g.start(webhook.Config{Destinations: egress.Destinations{Own: func() []netip.AddrPort { return []netip.AddrPort{own} }}})
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
