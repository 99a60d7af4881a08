package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// encodeEvent lays a record out as the datapath writes it, from the bpf2go
// type (so the test does not share the decoder's offsets).
func encodeEvent(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodeEvent: both record layouts decode to the same event, and
// records of no known layout are refused, not misread.
func TestDecodeEvent(t *testing.T) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	clock := NewStaticClock(250, 1000, at)
	src4, dst4 := netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("10.250.0.2")
	src6, dst6 := netip.MustParseAddr("fd0e::1"), netip.MustParseAddr("fd0e::2")
	want := func(src, dst netip.Addr) FlowEvent {
		return FlowEvent{Time: at.Add(time.Second), Src: src, Dst: dst, SrcPort: 40000, DstPort: 22,
			Protocol: ruleset.ProtocolTCP, Ifindex: 7, Endpoint: 3, SrcIdentity: 400, DstIdentity: 300,
			Direction: ruleset.Egress, Verdict: ruleset.VerdictDenied, Rule: 9, Reason: ReasonSpoofed,
			TCPFlags: 0x02, Length: 60, Suppressed: 2}
	}
	full := func(src, dst netip.Addr, family uint8) bpfEgFlowEvent {
		return bpfEgFlowEvent{Jiffies: 1250, Src: src.As16(), Dst: dst.As16(), Ifindex: 7, EndpointId: 3,
			SrcIdentity: 400, DstIdentity: 300, RuleId: 9, Suppressed: 2, Length: 60, SrcPort: 40000,
			DstPort: 22, Family: family, Protocol: 6, Direction: 1, Verdict: 2, Reason: uint8(ReasonSpoofed), TcpFlags: 0x02}
	}
	v4full := full(src4, dst4, 4)
	copy(v4full.Src[:], src4.AsSlice()) // IPv4 in the first 4 bytes, the rest zero
	copy(v4full.Dst[:], dst4.AsSlice())
	clear(v4full.Src[4:])
	clear(v4full.Dst[4:])
	compact := bpfEgFlowEvent4{Jiffies: 1250, Src: src4.As4(), Dst: dst4.As4(), Ifindex: 7, EndpointId: 3,
		SrcIdentity: 400, DstIdentity: 300, RuleId: 9, Suppressed: 2, Length: 60, SrcPort: 40000,
		DstPort: 22, Family: 4, Protocol: 6, Direction: 1, Verdict: 2, Reason: uint8(ReasonSpoofed), TcpFlags: 0x02}
	compactV6 := compact
	compactV6.Family = 6

	tests := []struct {
		name string
		rec  []byte
		want FlowEvent
		err  error
	}{
		{"ipv4, compact record", encodeEvent(t, compact), want(src4, dst4), nil},
		{"ipv4, full record (older programs)", encodeEvent(t, v4full), want(src4, dst4), nil},
		{"ipv6", encodeEvent(t, full(src6, dst6, 6)), want(src6, dst6), nil},
		{"ipv6, longer record (newer programs)", append(encodeEvent(t, full(src6, dst6, 6)), 0, 0, 0, 0, 0, 0, 0, 0), want(src6, dst6), nil},
		{"compact record of another family", encodeEvent(t, compactV6), FlowEvent{}, ErrShortEvent},
		{"between the two sizes", encodeEvent(t, full(src6, dst6, 6))[:64], FlowEvent{}, ErrShortEvent},
		{"empty", nil, FlowEvent{}, ErrShortEvent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got FlowEvent
			err := DecodeEvent(tc.rec, clock, &got)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil && got != tc.want {
				t.Errorf("decoded\n  %+v\nwant\n  %+v", got, tc.want)
			}
		})
	}
}

// FuzzDecodeEvent: no record, however malformed, makes the decoder panic.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, evSize4))
	f.Add(make([]byte, evSize))
	f.Add([]byte{1, 2, 3})
	clock := NewStaticClock(250, 0, time.Unix(0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev FlowEvent
		if err := DecodeEvent(b, clock, &ev); err == nil && len(b) != evSize4 && len(b) < evSize {
			t.Errorf("%d-byte record decoded", len(b))
		}
	})
}
