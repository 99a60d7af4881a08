package flows

import (
	"net/netip"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// ConnSource walks the conntrack: datapath.Datapath.Conntrack. It returns
// an error wrapping datapath.ErrWalkLimit when it stopped at max entries.
type ConnSource func(max int, fn func(c *datapath.Conn)) error

// DefaultMaxConnections caps the connections a Tracker remembers: the
// conntrack maps' capacity (2 x 131072), so it only binds when those are
// configured bigger.
const DefaultMaxConnections = 262144

// connKey is a connection as the conntrack keys it.
type connKey struct {
	Endpoint              ruleset.EndpointID
	Local, Remote         netip.Addr
	LocalPort, RemotePort uint16
	Protocol              ruleset.Protocol
	Origin                ruleset.Direction
}

// tracked is what the Tracker remembers of a connection: its last
// record (to close it when its entry is gone) and the walk that last
// saw it.
type tracked struct {
	last   Flow
	walk   uint64
	closed bool
}

// Tracker turns conntrack walks into volume records: StateActive for a
// connection whose counters changed since the last walk, StateClosed once
// when it ends (TCP RST or FIN each way, entry expired, or entry gone).
// The new-flow record stays the datapath's event. It is not safe for
// concurrent use (the pipeline's goroutine owns it).
type Tracker struct {
	max int
	// identity returns the identity of one of this node's endpoints
	// (conntrack keeps only the peer's); nil or 0: unknown.
	identity func(ruleset.EndpointID) ruleset.Identity
	walk     uint64
	conns    map[connKey]*tracked
	// untracked counts connections seen while the tracker held max: they
	// get no volume records until room frees up (their new-flow records
	// are unaffected).
	untracked uint64
}

// NewTracker remembers at most max connections (DefaultMaxConnections
// when max <= 0).
func NewTracker(max int, identity func(ruleset.EndpointID) ruleset.Identity) *Tracker {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	return &Tracker{max: max, identity: identity, conns: make(map[connKey]*tracked)}
}

// Walk reads the conntrack through src and returns the volume records
// due at now. Entries that have already ended when the tracker first
// sees them on its first walk are remembered without a record: they are
// what an earlier agent left in the pinned maps (and reported). After a
// failed or truncated walk no connection is taken for gone.
func (t *Tracker) Walk(now time.Time, src ConnSource) ([]Flow, error) {
	t.walk++
	first := t.walk == 1
	nowNs := now.UnixNano()
	var out []Flow
	idents := map[ruleset.EndpointID]ruleset.Identity{} // this walk's, looked up once each
	identity := func(id ruleset.EndpointID) ruleset.Identity {
		v, ok := idents[id]
		if !ok && t.identity != nil {
			v = t.identity(id)
			idents[id] = v
		}
		return v
	}
	err := src(2*t.max, func(c *datapath.Conn) {
		k := connKey{Endpoint: c.Endpoint, Local: c.Local, Remote: c.Remote, LocalPort: c.LocalPort,
			RemotePort: c.RemotePort, Protocol: c.Protocol, Origin: c.Origin}
		ended := c.Closed || !c.Expires.After(now)
		tr := t.conns[k]
		// The tuple reused by a new connection (a new entry): the old
		// one ended.
		if tr != nil && absDiff(tr.last.FirstSeen, c.Created.UnixNano()) > int64(time.Second) {
			if !tr.closed {
				out = append(out, closing(tr.last, nowNs))
			}
			delete(t.conns, k)
			tr = nil
		}
		if tr == nil {
			if len(t.conns) >= t.max {
				t.untracked++
				return
			}
			tr = &tracked{}
			t.conns[k] = tr
			tr.last = t.flowOf(c, identity(c.Endpoint), nowNs, nowNs)
			tr.walk = t.walk
			if ended {
				tr.closed = true
				if first {
					return
				}
				tr.last.State = StateClosed
			}
			out = append(out, tr.last)
			return
		}
		tr.walk = t.walk
		changed := c.OrigPackets+c.ReplyPackets != tr.last.Packets || c.OrigBytes+c.ReplyBytes != tr.last.Bytes
		if tr.closed && (!changed || ended) {
			return
		}
		lastSeen := tr.last.LastSeen
		if changed {
			lastSeen = nowNs
		}
		if !changed && !ended {
			return
		}
		tr.last = t.flowOf(c, identity(c.Endpoint), lastSeen, nowNs)
		tr.closed = ended
		if ended {
			tr.last.State = StateClosed
		}
		out = append(out, tr.last)
	})
	if err != nil {
		return out, err
	}
	for k, tr := range t.conns {
		if tr.walk == t.walk {
			continue
		}
		if !tr.closed {
			out = append(out, closing(tr.last, nowNs))
		}
		delete(t.conns, k)
	}
	return out, nil
}

// Len returns the connections remembered; Untracked those seen beyond
// the cap.
func (t *Tracker) Len() int          { return len(t.conns) }
func (t *Tracker) Untracked() uint64 { return t.untracked }

// closing is the closed record of a connection whose entry is gone: its
// last totals.
func closing(f Flow, now int64) Flow {
	f.State, f.Time = StateClosed, now
	return f
}

// flowOf is the volume record of c: src -> dst is c's origin direction.
func (t *Tracker) flowOf(c *datapath.Conn, local ruleset.Identity, lastSeen, now int64) Flow {
	f := Flow{
		Key: Key{Protocol: c.Protocol, Dir: c.Origin, Verdict: c.Verdict, Reason: datapath.ReasonPolicy,
			Rule: c.Rule, Endpoint: c.Endpoint},
		State:       StateActive,
		PacketsSent: c.OrigPackets, PacketsReceived: c.ReplyPackets,
		BytesSent: c.OrigBytes, BytesReceived: c.ReplyBytes,
		Packets: c.OrigPackets + c.ReplyPackets, Bytes: c.OrigBytes + c.ReplyBytes,
		FirstSeen: c.Created.UnixNano(), LastSeen: max(lastSeen, c.Created.UnixNano()), Time: now,
	}
	if c.Origin == ruleset.Ingress {
		f.Src, f.SrcPort, f.SrcIdentity = c.Remote, c.RemotePort, c.PeerIdentity
		f.Dst, f.DstPort, f.DstIdentity = c.Local, c.LocalPort, local
	} else {
		f.Src, f.SrcPort, f.SrcIdentity = c.Local, c.LocalPort, local
		f.Dst, f.DstPort, f.DstIdentity = c.Remote, c.RemotePort, c.PeerIdentity
	}
	return f
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}
