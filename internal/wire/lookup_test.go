package wire

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestLookupRoundTrip: a lookup survives the wire, IPv4 and IPv6, and
// every field out of range is refused, naming it.
func TestLookupRoundTrip(t *testing.T) {
	for _, peer := range []string{"10.250.0.1", "fd0e::1", "::ffff:10.250.0.2"} {
		in := Lookup{ID: 5, Workload: "web-1", Direction: ruleset.Egress, Peer: netip.MustParseAddr(peer), Protocol: ruleset.ProtocolICMP, Port: 8 << 8}
		out, err := ToLookup(FromLookup(in))
		in.Peer = in.Peer.Unmap()
		if err != nil || out != in {
			t.Errorf("%s: %+v, %v; want %+v", peer, out, err, in)
		}
	}
	good := func() *pb.LookupRequest {
		return FromLookup(Lookup{ID: 1, Workload: "w", Peer: netip.MustParseAddr("10.250.0.1"), Protocol: ruleset.ProtocolTCP, Port: 22})
	}
	for _, c := range []struct {
		field string
		edit  func(m *pb.LookupRequest)
	}{
		{"lookup.workload", func(m *pb.LookupRequest) { m.Workload = "" }},
		{"lookup.workload", func(m *pb.LookupRequest) { m.Workload = strings.Repeat("a", MaxLookupWorkload+1) }},
		{"lookup.workload", func(m *pb.LookupRequest) { m.Workload = "a\nb" }},
		{"lookup.direction", func(m *pb.LookupRequest) { m.Direction = 2 }},
		{"lookup.peerAddr", func(m *pb.LookupRequest) { m.PeerAddr = nil }},
		{"lookup.protocol", func(m *pb.LookupRequest) { m.Protocol = 256 }},
		{"lookup.port", func(m *pb.LookupRequest) { m.Port = 65536 }},
	} {
		m := good()
		c.edit(m)
		if _, err := ToLookup(m); err == nil || !strings.HasPrefix(err.Error(), c.field) {
			t.Errorf("%s out of range: %v", c.field, err)
		}
	}
}

// TestCheckLookupAnswer: what the controller shows of an answer is
// bounded and in range.
func TestCheckLookupAnswer(t *testing.T) {
	ok := &pb.LookupAnswer{AppliedHash: "sha256:ab", Verdict: uint32(ruleset.VerdictDenied), Mode: uint32(ruleset.ModeEnforce)}
	if err := CheckLookupAnswer(ok); err != nil {
		t.Errorf("good answer: %v", err)
	}
	if err := CheckLookupAnswer(&pb.LookupAnswer{Error: "no rule set in force"}); err != nil {
		t.Errorf("an answer with an error needs no verdict: %v", err)
	}
	for _, bad := range []*pb.LookupAnswer{
		{AppliedHash: strings.Repeat("x", MaxHashLen+1), Verdict: 1},
		{AppliedHash: "<script>\x00", Error: "x"},
		{Verdict: 0},
		{Verdict: 4},
		{Verdict: 1, Mode: 2},
	} {
		if err := CheckLookupAnswer(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
