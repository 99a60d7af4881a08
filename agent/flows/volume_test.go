package flows

import (
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// fakeConntrack is a conntrack the test edits between walks.
type fakeConntrack struct{ conns []datapath.Conn }

func (f *fakeConntrack) walk(max int, fn func(c *datapath.Conn)) error {
	for i := range f.conns {
		if i >= max {
			return datapath.ErrWalkLimit
		}
		c := f.conns[i]
		fn(&c)
	}
	return nil
}

// TestTrackerRecords: a connection's volume records from its conntrack
// entry: active while its counters move, nothing while they do not,
// closed once when it ends, and closed with its last totals when its
// entry is gone; src -> dst is the connection's origin.
func TestTrackerRecords(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	client := datapath.Conn{
		Endpoint: 7, Local: netip.MustParseAddr("10.250.1.3"), Remote: netip.MustParseAddr("10.250.1.2"),
		LocalPort: 5432, RemotePort: 41000, Protocol: ruleset.ProtocolTCP, Origin: ruleset.Ingress,
		Verdict: ruleset.VerdictAllowed, Rule: 4, PeerIdentity: 300,
		OrigPackets: 10, ReplyPackets: 5, OrigBytes: 1000, ReplyBytes: 500,
		Created: t0, Expires: t0.Add(time.Hour),
	}
	gone := client
	gone.RemotePort, gone.Origin, gone.Local, gone.Remote = 41001, ruleset.Egress, client.Local, client.Remote
	ct := &fakeConntrack{conns: []datapath.Conn{client, gone}}
	tr := NewTracker(0, func(id ruleset.EndpointID) ruleset.Identity { return ruleset.Identity(100 + id) })

	walk := func(at time.Time) []Flow {
		t.Helper()
		fs, err := tr.Walk(at, ct.walk)
		if err != nil {
			t.Fatal(err)
		}
		return fs
	}
	fs := walk(t0.Add(30 * time.Second))
	if len(fs) != 2 {
		t.Fatalf("first walk: %d records, want 2: %+v", len(fs), fs)
	}
	r := fs[0].Record("node-b", Names{})
	if r.State != flowrecord.StateActive || r.SrcAddr != client.Remote || r.SrcPort != 41000 || r.DstPort != 5432 ||
		r.SrcIdentity != 300 || r.DstIdentity != 107 || r.BytesSent != 1000 || r.BytesReceived != 500 ||
		r.PacketsSent != 10 || r.PacketsReceived != 5 || r.Packets != 15 || r.Bytes != 1500 ||
		!r.FirstSeen.Equal(t0) || !r.Time.Equal(t0.Add(30*time.Second)) {
		t.Errorf("active record of an ingress connection: %+v", r)
	}
	if e := fs[1]; e.Src != client.Local || e.SrcPort != 5432 || e.SrcIdentity != 107 || e.DstIdentity != 300 {
		t.Errorf("egress connection: src -> dst must be local -> remote: %+v", e)
	}

	// Counters unchanged: no records. The second connection's entry goes.
	ct.conns = ct.conns[:1]
	fs = walk(t0.Add(60 * time.Second))
	if len(fs) != 1 || fs[0].State != StateClosed || fs[0].SrcPort != 5432 || fs[0].BytesSent != 1000 {
		t.Fatalf("entry gone: %+v, want one closed record with the last totals", fs)
	}
	// 2 MB more from the client, then FIN both ways: closed, once.
	ct.conns[0].OrigBytes, ct.conns[0].OrigPackets = 2_001_000, 1500
	fs = walk(t0.Add(90 * time.Second))
	if len(fs) != 1 || fs[0].State != StateActive || fs[0].BytesSent != 2_001_000 || fs[0].LastSeen != t0.Add(90*time.Second).UnixNano() {
		t.Fatalf("counters moved: %+v", fs)
	}
	ct.conns[0].Closed = true
	fs = walk(t0.Add(120 * time.Second))
	if len(fs) != 1 || fs[0].State != StateClosed || fs[0].LastSeen != t0.Add(90*time.Second).UnixNano() {
		t.Fatalf("closed: %+v (last seen must stay at the last change)", fs)
	}
	if fs = walk(t0.Add(150 * time.Second)); len(fs) != 0 {
		t.Errorf("closed connection reported again: %+v", fs)
	}
	ct.conns = nil
	if fs = walk(t0.Add(180 * time.Second)); len(fs) != 0 || tr.Len() != 0 {
		t.Errorf("entry of a closed connection gone: %+v, %d remembered", fs, tr.Len())
	}
}

// TestTrackerBounded: beyond its cap the tracker remembers no more
// connections (counted as untracked); a truncated walk takes nothing for
// gone; an agent's first walk reports no connection that ended before it.
func TestTrackerBounded(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var ct fakeConntrack
	for i := range 5 {
		ct.conns = append(ct.conns, datapath.Conn{Endpoint: 1, Local: netip.MustParseAddr("10.250.1.3"),
			Remote: netip.MustParseAddr("10.250.1.2"), RemotePort: uint16(1000 + i), LocalPort: 80,
			Protocol: ruleset.ProtocolTCP, OrigPackets: 1, Created: t0, Expires: t0.Add(time.Hour)})
	}
	ct.conns[4].Expires = t0 // ended before the agent's first walk
	tr := NewTracker(3, nil)
	fs, err := tr.Walk(t0.Add(time.Second), ct.walk)
	if err != nil || len(fs) != 3 || tr.Len() != 3 || tr.Untracked() != 2 {
		t.Fatalf("walk: %d records, %d remembered, %d untracked, %v; want 3, 3, 2", len(fs), tr.Len(), tr.Untracked(), err)
	}
	// A walk stopped at its bound: nothing is taken for gone.
	short := func(max int, fn func(c *datapath.Conn)) error { return ct.walk(min(max, 1), fn) }
	if fs, err := tr.Walk(t0.Add(2*time.Second), short); err == nil || len(fs) != 0 || tr.Len() != 3 {
		t.Errorf("truncated walk: %+v, %v, %d remembered", fs, err, tr.Len())
	}

	tr = NewTracker(0, nil)
	if fs, _ := tr.Walk(t0.Add(time.Second), ct.walk); len(fs) != 4 {
		t.Errorf("first walk: %d records, want 4 (not the connection that ended before it)", len(fs))
	}
}
