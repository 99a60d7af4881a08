package wire

import (
	"strings"
	"testing"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestAckPendingAuto: a pending auto endpoint is reported as auto:ADDR,
// longer than an interface name and with colons, and the controller keeps
// it.
func TestAckPendingAuto(t *testing.T) {
	if err := CheckAck(&pb.Ack{PendingInterfaces: []string{"auto:10.250.1.2", "auto:fd0e:1:2::2", "eth0"}}); err != nil {
		t.Fatal(err)
	}
}

// TestAgentReportBounds: Hello, counters and acks within the bounds pass
// (what a honest agent sends); beyond them they are refused with
// InvalidArgument naming the field, never Cut.
func TestAgentReportBounds(t *testing.T) {
	honest := &pb.Hello{Node: "node-a", AgentVersion: "v1.4.0-3-gabc123", Kernel: "6.8.0-45-generic",
		Capabilities: []string{"delta", "ipv6", "tcx"}, AppliedHash: "sha256:" + strings.Repeat("0f", 32)}
	if err := CheckHello(honest); err != nil {
		t.Errorf("a honest agent's Hello refused: %v", err)
	}
	names := map[string]uint64{}
	for _, n := range []string{"allowed_ingress", "denied_egress", "would_deny_ingress", "events_lost", "ct_full", "non_ip"} {
		names[n] = 1 << 40
	}
	if err := CheckCounters(&pb.Counters{Values: names}); err != nil {
		t.Errorf("a honest agent's counters refused: %v", err)
	}
	if err := CheckAck(&pb.Ack{Hash: honest.AppliedHash, PendingInterfaces: []string{"veth-db1", "eg1-web", "enp0s31f6.100"}}); err != nil {
		t.Errorf("a honest agent's ack refused: %v", err)
	}

	caps := make([]string, MaxCapabilities+1)
	for i := range caps {
		caps[i] = "c"
	}
	many := map[string]uint64{}
	for i := range MaxCounters + 1 {
		many[strings.Repeat("k", i%MaxWordLen+1)+string(rune('a'+i/MaxWordLen))] = 1
	}
	for _, tc := range []struct {
		name  string
		err   error
		field string
	}{
		{"agent version", CheckHello(&pb.Hello{AgentVersion: strings.Repeat("v", MaxHelloText+1)}), "hello.agentVersion: 257 bytes, more than the 256 allowed"},
		{"kernel", CheckHello(&pb.Hello{Kernel: "6.8\n"}), "hello.kernel"},
		{"not UTF-8", CheckHello(&pb.Hello{AgentVersion: "v\xff"}), "hello.agentVersion"},
		{"hash", CheckHello(&pb.Hello{AppliedHash: strings.Repeat("a", MaxHashLen+1)}), "hello.appliedHash"},
		{"capabilities", CheckHello(&pb.Hello{Capabilities: caps}), "hello.capabilities: 65 entries"},
		{"empty capability", CheckHello(&pb.Hello{Capabilities: []string{"delta", ""}}), "hello.capabilities[1]"},
		{"capability", CheckHello(&pb.Hello{Capabilities: []string{"IPv6"}}), "hello.capabilities[0]"},
		{"counters", CheckCounters(&pb.Counters{Values: many}), "counters.values: 257 keys"},
		{"counter key", CheckCounters(&pb.Counters{Values: map[string]uint64{strings.Repeat("k", MaxWordLen+1): 1}}), "counters.values key: 65 bytes"},
		{"ack hash", CheckAck(&pb.Ack{Hash: "sha256:\x00"}), "ack.hash"},
		{"pending", CheckAck(&pb.Ack{PendingInterfaces: make([]string, MaxPending+1)}), "ack.pendingInterfaces: 16385 entries"},
		{"pending name", CheckAck(&pb.Ack{PendingInterfaces: []string{"eth0", "a-name-of-16-chr"}}), "ack.pendingInterfaces[1]"},
		{"pending slash", CheckAck(&pb.Ack{PendingInterfaces: []string{"a/b"}}), "ack.pendingInterfaces[0]"},
		{"pending auto, not an address", CheckAck(&pb.Ack{PendingInterfaces: []string{"auto:eth0"}}), "ack.pendingInterfaces[0]"},
		{"pending auto, not canonical", CheckAck(&pb.Ack{PendingInterfaces: []string{"auto:fd0e:0::2"}}), "ack.pendingInterfaces[0]"},
		{"pending auto, zone", CheckAck(&pb.Ack{PendingInterfaces: []string{"auto:fe80::1%eth0"}}), "ack.pendingInterfaces[0]"},
	} {
		// The controller refuses these with InvalidArgument
		// (test/integration TestAgentReportsBounded).
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.field) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, tc.err, tc.field)
		}
	}
	if got := Cut(strings.Repeat("é", 10), 5); got != "éé..." {
		t.Errorf("Cut: %q, want a valid UTF-8 prefix and a mark", got)
	}
}

// TestCheckDrift: an honest agent's drift report passes; a made-up kind
// that is no word, control characters (a log line forged in the
// controller's logs), oversized text and a zero count are refused, naming
// the field.
func TestCheckDrift(t *testing.T) {
	honest := &pb.DatapathDrift{Kind: "link-detached", Object: "tcx-7-ingress (eth0)",
		Detail: "our tcx link is no longer attached to the interface", Repaired: true, Count: 1}
	if err := CheckDrift(honest); err != nil {
		t.Fatalf("honest report refused: %v", err)
	}
	for _, c := range []struct {
		field string
		edit  func(*pb.DatapathDrift)
	}{
		{"drift.count", func(d *pb.DatapathDrift) { d.Count = 0 }},
		{"drift.count", func(d *pb.DatapathDrift) { d.Count = MaxDriftCount + 1 }},
		{"drift.kind", func(d *pb.DatapathDrift) { d.Kind = "Link Detached" }},
		{"drift.kind", func(d *pb.DatapathDrift) { d.Kind = "" }},
		{"drift.detail", func(d *pb.DatapathDrift) { d.Detail = "ok\nFAKE LOG LINE" }},
		{"drift.object", func(d *pb.DatapathDrift) { d.Object = strings.Repeat("x", MaxDriftText+1) }},
		{"drift.repairError", func(d *pb.DatapathDrift) { d.RepairError = "\x1b[2J" }},
	} {
		d := &pb.DatapathDrift{Kind: honest.Kind, Object: honest.Object, Detail: honest.Detail, Count: 1}
		c.edit(d)
		err := CheckDrift(d)
		if err == nil || !strings.HasPrefix(err.Error(), c.field+":") {
			t.Errorf("%s: got %v, want an error naming it", c.field, err)
		}
	}
}
