package datapath

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestLayout checks that the Go side and the C side agree on every layout
// and constant the Go side relies on, using the object's own BTF. It needs
// no privileges.
func TestLayout(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	structType := func(name string) *btf.Struct {
		t.Helper()
		var s *btf.Struct
		if err := spec.Types.TypeByName(name, &s); err != nil {
			t.Fatalf("BTF struct %s: %v", name, err)
		}
		return s
	}

	// Every struct bpf2go generated: same size, same member offsets, in the
	// same order.
	goTypes := map[string]any{
		"eg_generation":    bpfEgGeneration{},
		"eg_endpoint":      bpfEgEndpoint{},
		"eg_ipcache_key":   bpfEgIpcacheKey{},
		"eg_ipcache_value": bpfEgIpcacheValue{},
		"eg_policy_key":    bpfEgPolicyKey{},
		"eg_policy_value":  bpfEgPolicyValue{},
		"eg_range_key":     bpfEgRangeKey{},
		"eg_range_value":   bpfEgRangeValue{},
		"eg_port_interval": bpfEgPortInterval{},
		"eg_ct_tail":       bpfEgCtTail{},
		"eg_ct4_key":       bpfEgCt4Key{},
		"eg_ct6_key":       bpfEgCt6Key{},
		"eg_ct_entry":      bpfEgCtEntry{},
		"eg_frag_key":      bpfEgFragKey{},
		"eg_frag_entry":    bpfEgFragEntry{},
		"eg_nd_key":        bpfEgNdKey{},
		"eg_nd_entry":      bpfEgNdEntry{},
		"eg_ratelimit":     bpfEgRatelimit{},
		"eg_flow_event":    bpfEgFlowEvent{},
		"eg_flow_event4":   bpfEgFlowEvent4{},
		"eg_ev_ring":       bpfEgEvRing{},
	}
	for name, v := range goTypes {
		s := structType(name)
		gt := reflect.TypeOf(v)
		if got := gt.Size(); got != uintptr(s.Size) {
			t.Errorf("%s: Go size %d, C size %d", name, got, s.Size)
		}
		var goFields []reflect.StructField
		for i := range gt.NumField() {
			if f := gt.Field(i); f.Name != "_" {
				goFields = append(goFields, f)
			}
		}
		if len(goFields) != len(s.Members) {
			t.Errorf("%s: %d Go fields, %d C members", name, len(goFields), len(s.Members))
			continue
		}
		for i, m := range s.Members {
			f := goFields[i]
			if f.Offset != uintptr(m.Offset.Bytes()) {
				t.Errorf("%s.%s: Go offset %d, C offset %d", name, m.Name, f.Offset, m.Offset.Bytes())
			}
			if !strings.EqualFold(strings.ReplaceAll(m.Name, "_", ""), f.Name) {
				t.Errorf("%s member %d: C %s, Go %s", name, i, m.Name, f.Name)
			}
		}
	}

	// The hand-written event decoder's offsets.
	ev := structType("eg_flow_event")
	if ev.Size != evSize {
		t.Errorf("eg_flow_event size %d, decoder assumes %d", ev.Size, evSize)
	}
	offsets := map[string]int{
		"jiffies": evJiffies, "src": evSrc, "dst": evDst, "ifindex": evIfindex,
		"endpoint_id": evEndpoint, "src_identity": evSrcIdentity, "dst_identity": evDstIdentity,
		"rule_id": evRule, "suppressed": evSuppressed, "length": evLength,
		"src_port": evSrcPort, "dst_port": evDstPort, "family": evFamily, "protocol": evProtocol,
		"direction": evDirection, "verdict": evVerdict, "reason": evReason, "tcp_flags": evTCPFlags,
	}
	for _, m := range ev.Members {
		if m.Name == "pad" {
			continue
		}
		want, ok := offsets[m.Name]
		if !ok {
			t.Errorf("eg_flow_event.%s is not decoded", m.Name)
			continue
		}
		if int(m.Offset.Bytes()) != want {
			t.Errorf("eg_flow_event.%s at %d, decoder reads %d", m.Name, m.Offset.Bytes(), want)
		}
	}
	// IPv4 events: the same members, 4-byte addresses, the rest
	// ev4Shift bytes earlier.
	ev4 := structType("eg_flow_event4")
	if ev4.Size != evSize4 {
		t.Errorf("eg_flow_event4 size %d, decoder assumes %d", ev4.Size, evSize4)
	}
	if len(ev4.Members) != len(ev.Members) {
		t.Errorf("eg_flow_event4 has %d members, eg_flow_event %d", len(ev4.Members), len(ev.Members))
	}
	for _, m := range ev4.Members {
		want, ok := offsets[m.Name]
		switch {
		case m.Name == "pad":
			continue
		case !ok:
			t.Errorf("eg_flow_event4.%s is not decoded", m.Name)
			continue
		case m.Name == "dst":
			want = evSrc4Dst
		case m.Name != "jiffies" && m.Name != "src":
			want -= ev4Shift
		}
		if int(m.Offset.Bytes()) != want {
			t.Errorf("eg_flow_event4.%s at %d, decoder reads %d", m.Name, m.Offset.Bytes(), want)
		}
	}

	// The event rings' header and records (eventring.go).
	ring := structType("eg_ev_ring")
	if ring.Size != evHdrBytes {
		t.Errorf("eg_ev_ring is %d bytes, the reader assumes %d", ring.Size, evHdrBytes)
	}
	for _, m := range ring.Members {
		want, ok := map[string]int{"head": ringHeadOff, "tail": ringTailOff, "kicked": ringKickedOff}[m.Name]
		if ok && int(m.Offset.Bytes()) != want {
			t.Errorf("eg_ev_ring.%s at %d, the reader uses %d", m.Name, m.Offset.Bytes(), want)
		}
	}
	if evSize4+8 > evSlotBytes || evSize+8 > 2*evSlotBytes {
		t.Errorf("events of %d and %d bytes with their 8-byte word do not fit one and two slots of %d", evSize4, evSize, evSlotBytes)
	}

	// EG_MAX_RANGES is the length of eg_range_value.iv.
	var rv bpfEgRangeValue
	if n := len(rv.Iv); n != ruleset.MaxIntervals {
		t.Errorf("EG_MAX_RANGES %d, ruleset.MaxIntervals %d", n, ruleset.MaxIntervals)
	}
	if unsafe.Sizeof(rv.Iv[0]) != 12 {
		t.Errorf("eg_port_interval is %d bytes", unsafe.Sizeof(rv.Iv[0]))
	}

	// The endpoint table's geometry.
	if got := spec.Maps["eg_endpoints"].InnerMap.MaxEntries; got != epSlots {
		t.Errorf("eg_endpoints inner array has %d slots, Go places entries in %d", got, epSlots)
	}
	if epSlots&(epSlots-1) != 0 {
		t.Errorf("EG_EP_SLOTS %d is not a power of two", epSlots)
	}

	// Enums shared with internal/ruleset and the Go side.
	enum := func(name string) map[string]uint64 {
		t.Helper()
		var e *btf.Enum
		if err := spec.Types.TypeByName(name, &e); err != nil {
			t.Fatalf("BTF enum %s: %v", name, err)
		}
		out := make(map[string]uint64)
		for _, v := range e.Values {
			out[v.Name] = v.Value
		}
		return out
	}
	checkEnum := func(name string, want map[string]uint64) {
		t.Helper()
		got := enum(name)
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s %s = %d (present %v), Go side uses %d", name, k, g, ok, v)
			}
		}
	}
	checkEnum("eg_verdict", map[string]uint64{
		"EG_VERDICT_ALLOWED": uint64(ruleset.VerdictAllowed), "EG_VERDICT_DENIED": uint64(ruleset.VerdictDenied),
		"EG_VERDICT_WOULD_DENY": uint64(ruleset.VerdictWouldDeny),
	})
	checkEnum("eg_ev_ring_geometry", map[string]uint64{
		"EG_EV_SLOT": evSlotBytes, "EG_EV_HDR": evHdrBytes,
		"EG_EV_PAD": evKindPad, "EG_EV_IPV4": evKindIPv4, "EG_EV_IPV6": evKindIPv6,
	})
	checkEnum("eg_direction", map[string]uint64{"EG_DIR_INGRESS": uint64(ruleset.Ingress), "EG_DIR_EGRESS": uint64(ruleset.Egress)})
	checkEnum("eg_mode", map[string]uint64{"EG_MODE_ENFORCE": uint64(ruleset.ModeEnforce), "EG_MODE_MONITOR": uint64(ruleset.ModeMonitor)})
	checkEnum("eg_shape", map[string]uint64{
		"EG_SHAPE_EXACT_PEER": uint64(ruleset.ShapeExactPeer), "EG_SHAPE_RANGE_PEER": uint64(ruleset.ShapeRangePeer),
		"EG_SHAPE_EXACT_ANY": uint64(ruleset.ShapeExactAny), "EG_SHAPE_RANGE_ANY": uint64(ruleset.ShapeRangeAny),
		"EG_SHAPE_ANYPROTO_PEER": uint64(ruleset.ShapeAnyProtoPeer), "EG_SHAPE_ANYPROTO_ANY": uint64(ruleset.ShapeAnyProtoAny),
	})
	counters := enum("eg_counter")
	if int(counters["EG_CNT_MAX"]) != numCounters {
		t.Errorf("EG_CNT_MAX %d, Go has %d counters", counters["EG_CNT_MAX"], numCounters)
	}
	for name, v := range counters {
		if name == "EG_CNT_MAX" {
			continue
		}
		if want := strings.ToLower(strings.TrimPrefix(name, "EG_CNT_")); Counter(v).String() != want {
			t.Errorf("counter %d is %q in C, %q in Go", v, want, Counter(v).String())
		}
	}
	for _, v := range []ruleset.Verdict{ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny} {
		for _, d := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
			want := "EG_CNT_" + strings.ToUpper(strings.ReplaceAll(v.String(), "-", "_")+"_"+d.String())
			if counters[want] != uint64(VerdictCounter(v, d)) {
				t.Errorf("VerdictCounter(%s, %s) = %d, C %s = %d", v, d, VerdictCounter(v, d), want, counters[want])
			}
		}
	}
}
