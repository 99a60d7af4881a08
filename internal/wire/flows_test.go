package wire

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"

	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func validFlowRecord() *pb.FlowRecord {
	t := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	return &pb.FlowRecord{
		TimeUnixNano: t, Direction: uint32(ruleset.Ingress), Protocol: uint32(ruleset.ProtocolTCP),
		SrcAddr: []byte{10, 250, 1, 2}, SrcPort: 40000, SrcIdentity: 300,
		DstAddr: []byte{10, 250, 1, 3}, DstPort: 22, DstIdentity: 301,
		Verdict: uint32(ruleset.VerdictDenied), Rule: 0, Packets: 2, Bytes: 120,
		FirstSeenUnixNano: t, LastSeenUnixNano: t + int64(time.Second),
	}
}

func namesForTest() (func(ruleset.RuleID) string, func(netip.Addr) string) {
	rules := func(id ruleset.RuleID) string {
		if id == 0 {
			return ruleset.DefaultDenyName
		}
		return "shop/r"
	}
	workloads := func(a netip.Addr) string {
		if a == netip.MustParseAddr("10.250.1.3") {
			return "db-1"
		}
		return ""
	}
	return rules, workloads
}

// TestFlowBatchToRecords: a valid batch becomes ARCHITECTURE's flow
// records with exactly its JSON keys, named for the stream's node.
func TestFlowBatchToRecords(t *testing.T) {
	icmp := validFlowRecord()
	icmp.Protocol, icmp.SrcPort, icmp.DstPort = uint32(ruleset.ProtocolICMP), 0, 0
	typ, code := uint32(8), uint32(0)
	icmp.IcmpType, icmp.IcmpCode = &typ, &code
	b := &pb.FlowBatch{Seq: 1, SpoolId: 9, Records: []*pb.FlowRecord{validFlowRecord(), icmp}}
	rules, workloads := namesForTest()
	recs, err := ToRecords(b, "node-b", rules, workloads)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	r := recs[0]
	if r.Node != "node-b" || r.DstWorkload != "db-1" || r.SrcWorkload != "" || r.Rule != "default-deny" ||
		r.Verdict != ruleset.VerdictDenied || r.Protocol != "TCP" || r.DstPort != 22 || r.Packets != 2 {
		t.Errorf("record: %+v", r)
	}
	if recs[1].Protocol != "ICMP" || recs[1].ICMPType == nil || *recs[1].ICMPType != 8 {
		t.Errorf("ICMP record: %+v", recs[1])
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatal(err)
	}
	want := strings.Fields("time node direction protocol srcAddr srcPort srcWorkload srcIdentity dstAddr dstPort dstWorkload dstIdentity verdict rule packets bytes firstSeen lastSeen packetsSent packetsReceived bytesSent bytesReceived state")
	for _, k := range want {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %s missing from %s", k, data)
		}
	}
	if len(keys) != len(want) {
		t.Errorf("keys %v, want exactly %v", keys, want)
	}
	if keys["direction"] != "ingress" || keys["verdict"] != "denied" || keys["dstPort"] != float64(22) || keys["time"] != "2026-05-01T12:00:00Z" {
		t.Errorf("values: %s", data)
	}
	// A record without per-direction counts (an older agent's new-flow
	// event): everything was sent by the source.
	if keys["state"] != "new" || keys["packetsSent"] != float64(2) || keys["bytesSent"] != float64(120) || keys["bytesReceived"] != float64(0) {
		t.Errorf("legacy record's volume: %s", data)
	}
}

// TestFlowBatchVolume: an update record's counts per direction and state
// come through as sent.
func TestFlowBatchVolume(t *testing.T) {
	m := validFlowRecord()
	m.Packets, m.PacketsSent, m.PacketsReceived = 1500, 1000, 500
	m.Bytes, m.BytesSent, m.BytesReceived = 2_100_000, 2_000_000, 100_000
	m.State = 2
	rules, workloads := namesForTest()
	recs, err := ToRecords(&pb.FlowBatch{Seq: 1, Records: []*pb.FlowRecord{m}}, "n", rules, workloads)
	if err != nil {
		t.Fatal(err)
	}
	r := recs[0]
	if r.State != flowrecord.StateClosed || r.PacketsSent != 1000 || r.PacketsReceived != 500 || r.BytesSent != 2_000_000 || r.BytesReceived != 100_000 {
		t.Errorf("record: %+v", r)
	}
}

// TestFlowBatchRejected: every out-of-range field rejects the whole batch
// with an error naming the record index and the field.
func TestFlowBatchRejected(t *testing.T) {
	cases := []struct {
		name   string
		modify func(*pb.FlowRecord)
		want   string
	}{
		{"direction", func(r *pb.FlowRecord) { r.Direction = 2 }, "records[1].direction: 2 out of range"},
		{"protocol", func(r *pb.FlowRecord) { r.Protocol = 256 }, "records[1].protocol: 256 out of range"},
		{"src port", func(r *pb.FlowRecord) { r.SrcPort = 70000 }, "records[1].srcPort: 70000 out of range"},
		{"dst port", func(r *pb.FlowRecord) { r.DstPort = 65536 }, "records[1].dstPort: 65536 out of range"},
		{"verdict 0", func(r *pb.FlowRecord) { r.Verdict = 0 }, "records[1].verdict: 0 out of range"},
		{"verdict 4", func(r *pb.FlowRecord) { r.Verdict = 4 }, "records[1].verdict: 4 out of range"},
		{"time zero", func(r *pb.FlowRecord) { r.TimeUnixNano = 0 }, "records[1].timeUnixNano: 0 out of range"},
		{"first seen", func(r *pb.FlowRecord) { r.FirstSeenUnixNano = -5 }, "records[1].firstSeenUnixNano: -5 out of range"},
		{"last before first", func(r *pb.FlowRecord) { r.LastSeenUnixNano = r.FirstSeenUnixNano - 1 }, "records[1].lastSeenUnixNano: "},
		{"src addr", func(r *pb.FlowRecord) { r.SrcAddr = []byte{1, 2, 3} }, "records[1].srcAddr: address of 3 bytes"},
		{"dst addr", func(r *pb.FlowRecord) { r.DstAddr = nil }, "records[1].dstAddr: address of 0 bytes"},
		{"families", func(r *pb.FlowRecord) { r.DstAddr = netip.MustParseAddr("fd0e::1").AsSlice() }, "records[1].dstAddr: fd0e::1 and srcAddr 10.250.1.2 are not of one address family"},
		{"icmp with ports", func(r *pb.FlowRecord) { r.Protocol = uint32(ruleset.ProtocolICMP) }, "records[1].dstPort: ports 40000 and 22 given for ICMP"},
		{"icmp type on tcp", func(r *pb.FlowRecord) { v := uint32(3); r.IcmpType = &v }, "records[1].icmpType: ICMP type or code given for TCP"},
		{"icmp type range", func(r *pb.FlowRecord) {
			v := uint32(300)
			r.Protocol, r.SrcPort, r.DstPort, r.IcmpType = uint32(ruleset.ProtocolICMPv6), 0, 0, &v
			r.SrcAddr, r.DstAddr = netip.MustParseAddr("fd0e::1").AsSlice(), netip.MustParseAddr("fd0e::2").AsSlice()
		}, "records[1].icmpType: 300 out of range"},
		{"reason", func(r *pb.FlowRecord) { r.Reason = "DROP\n" }, `records[1].reason: "DROP\n" is not a datapath reason`},
		{"state", func(r *pb.FlowRecord) { r.State = 3 }, "records[1].state: 3 out of range"},
		{"packets sum", func(r *pb.FlowRecord) { r.PacketsSent, r.PacketsReceived = 1, 2 }, "records[1].packetsSent: 1 + packetsReceived 2 is not packets 2"},
		{"packets overflow", func(r *pb.FlowRecord) { r.PacketsSent, r.PacketsReceived, r.Packets = 1<<63, 1<<63+2, 2 }, "records[1].packetsSent: "},
		{"bytes sum", func(r *pb.FlowRecord) { r.PacketsSent, r.BytesSent, r.BytesReceived = 2, 100, 100 }, "records[1].bytesSent: 100 + bytesReceived 100 is not bytes 120"},
	}
	rules, workloads := namesForTest()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := validFlowRecord()
			c.modify(bad)
			b := &pb.FlowBatch{Seq: 4, Records: []*pb.FlowRecord{validFlowRecord(), bad, validFlowRecord()}}
			recs, err := ToRecords(b, "n", rules, workloads)
			if err == nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Fatalf("error %v, want one starting %q", err, c.want)
			}
			if recs != nil {
				t.Errorf("records returned with an error: %d", len(recs))
			}
		})
	}
	if _, err := ToRecords(&pb.FlowBatch{Seq: 0}, "n", rules, workloads); err == nil || !strings.Contains(err.Error(), "seq: 0") {
		t.Errorf("seq 0: %v", err)
	}
	big := &pb.FlowBatch{Seq: 1, Records: make([]*pb.FlowRecord, MaxFlowBatchRecords+1)}
	if _, err := ToRecords(big, "n", rules, workloads); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized batch: %v", err)
	}
	nilRec := &pb.FlowBatch{Seq: 1, Records: []*pb.FlowRecord{nil}}
	if _, err := ToRecords(nilRec, "n", rules, workloads); err == nil || !strings.HasPrefix(err.Error(), "records[0].record") {
		t.Errorf("nil record: %v", err)
	}
}

// FuzzFlowBatch: whatever bytes arrive, decoding and conversion either
// fail with an error or give records whose JSON encodes.
func FuzzFlowBatch(f *testing.F) {
	good, _ := proto.Marshal(&pb.FlowBatch{Seq: 1, Records: []*pb.FlowRecord{validFlowRecord()}})
	f.Add(good)
	f.Add([]byte{})
	rules, workloads := namesForTest()
	f.Fuzz(func(t *testing.T, data []byte) {
		var b pb.FlowBatch
		if proto.Unmarshal(data, &b) != nil {
			return
		}
		recs, err := ToRecords(&b, "n", rules, workloads)
		if err != nil {
			return
		}
		for i := range recs {
			if _, err := json.Marshal(&recs[i]); err != nil {
				t.Fatalf("record %d does not encode: %v", i, err)
			}
		}
	})
}
