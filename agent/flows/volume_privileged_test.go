package flows

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// TestPrivilegedConnectionVolume: 2 MB sent over one TCP connection
// through an enforced workload interface are reported by the tracker
// over the real conntrack: an active record while the connection is up
// and idle with at least 2 MB sent by its source (the node, which opened
// it) and a little received, then a closed record once both sides have
// closed.
func TestPrivilegedConnectionVolume(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := topo.NewNode(t, "fv", 1)
	w := node.AddWorkload(t, "web", 1)
	const idWeb, port = ruleset.Identity(300), 9000
	rs := &ruleset.RuleSet{
		Node:      "fv",
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: w.HostIface, Identity: idWeb}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: netip.PrefixFrom(w.Addr4, 32), Identity: idWeb}},
		Entries: []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Peer: ruleset.IdentityWorld,
			Protocol: ruleset.ProtocolTCP, Port: port, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules: []ruleset.RuleName{{ID: 1, Name: "fv/allow"}},
	}
	var dp *datapath.Datapath
	if err := node.NS.Do(func() error {
		var err error
		dp, err = datapath.Open(datapath.Config{BPFFSDir: node.BPFFSDir, Logger: zaptest.NewLogger(t)})
		return err
	}); err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	if _, err := dp.Apply(rs); err != nil {
		t.Fatalf("apply: %v", err)
	}

	// The workload reads everything, answers "ok" once the sender has
	// closed its side, and closes.
	var ln net.Listener
	if err := w.NS.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, c); err == nil {
			c.Write([]byte("ok\n"))
		}
	}()
	var conn net.Conn
	if err := node.NS.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(w.Addr4, port).String(), 5*time.Second)
		return
	}); err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	const size = 2 << 20
	if _, err := conn.Write(make([]byte, size)); err != nil {
		t.Fatalf("send 2 MB: %v", err)
	}

	tr := NewTracker(0, func(ruleset.EndpointID) ruleset.Identity { return idWeb })
	ours := func(fs []Flow) []flowrecord.Record {
		var out []flowrecord.Record
		for i := range fs {
			if fs[i].Dst == w.Addr4 && fs[i].DstPort == port {
				out = append(out, fs[i].Record("fv", Names{}))
			}
		}
		return out
	}
	// Written is not yet counted: poll until the counters have it.
	var active []flowrecord.Record
	testutil.Eventually(t, 10*time.Second, "an active record with 2 MB sent", func() error {
		fs, err := tr.Walk(time.Now(), dp.Conntrack)
		if err != nil {
			return fmt.Errorf("walk: %w", err)
		}
		for _, r := range ours(fs) {
			active = append(active, r)
			if r.State == flowrecord.StateActive && r.BytesSent >= size {
				return nil
			}
		}
		return fmt.Errorf("records so far: %+v", active)
	})
	r := active[len(active)-1]
	t.Logf("active: sent %d packets %d bytes, received %d packets %d bytes", r.PacketsSent, r.BytesSent, r.PacketsReceived, r.BytesReceived)
	if r.SrcAddr != netip.AddrFrom4([4]byte{10, 250, 17, 1}) || r.Direction != ruleset.Ingress || r.DstIdentity != idWeb ||
		r.PacketsReceived == 0 || r.BytesReceived >= r.BytesSent || r.Packets != r.PacketsSent+r.PacketsReceived {
		t.Errorf("active record: %+v", r)
	}

	// Both sides close: FIN each way.
	conn.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "ok\n" {
		t.Fatalf("answer: %q, %v", b, err)
	}
	conn.Close()
	testutil.Eventually(t, 10*time.Second, "a closed record", func() error {
		fs, err := tr.Walk(time.Now(), dp.Conntrack)
		if err != nil {
			return fmt.Errorf("walk: %w", err)
		}
		for _, c := range ours(fs) {
			if c.State == flowrecord.StateClosed {
				t.Logf("closed: sent %d bytes, received %d bytes", c.BytesSent, c.BytesReceived)
				if c.BytesSent < size || c.BytesReceived == 0 {
					t.Errorf("closed record: %+v", c)
				}
				return nil
			}
		}
		return fmt.Errorf("no closed record yet")
	})
}
