package postgres

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestPostgresCopyEncoding: every field of a record goes through the
// binary COPY encoding and comes back as it was, with the extremes of
// each type (uint64 counters above int64's range, IPv6 addresses, ICMP
// type and code set and unset), in the columns of rc.FlowColumns.
func TestPostgresCopyEncoding(t *testing.T) {
	if n := len(flowCopyColumns); n != flowCopyFields {
		t.Fatalf("flowCopyColumns has %d columns, the encoder writes %d", n, flowCopyFields)
	}
	s := openTest(t)
	ctx := context.Background()
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Microsecond)
	typ, code := uint8(255), uint8(0)
	recs := []flowrecord.Record{{
		Time: at, Node: "node-é", Direction: ruleset.Egress, Protocol: "ICMPv6",
		SrcAddr: netip.MustParseAddr("fd0e::1"), SrcWorkload: "web", SrcIdentity: ruleset.Identity(1<<32 - 1),
		DstAddr: netip.MustParseAddr("fd0e::ffff:2"), DstWorkload: "", DstIdentity: 0,
		Verdict: ruleset.VerdictWouldDeny, Rule: "ops/a rule", Packets: 1<<64 - 1, Bytes: 1 << 63,
		FirstSeen: at.Add(-time.Hour), LastSeen: at, ICMPType: &typ, ICMPCode: &code, Reason: "why: ünïcode",
		PacketsSent: 1<<64 - 2, PacketsReceived: 1, BytesSent: 1<<63 + 5, BytesReceived: 7, State: flowrecord.StateClosed,
	}, storetest.Flow(1, at.Add(-time.Second))}
	recs[1].SrcPort, recs[1].DstPort = 65535, 0
	storetest.InsertFlows(t, s, recs)
	got, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil || len(got) != 2 {
		t.Fatalf("%d flows, %v", len(got), err)
	}
	want := recs[1]
	want.State = flowrecord.StateNew // stored for "" (rc.StateOrNew)
	for i, w := range []flowrecord.Record{recs[0], want} {
		g := got[i]
		// Times come back in UTC, compared as instants.
		if !g.Time.Equal(w.Time) || !g.FirstSeen.Equal(w.FirstSeen) || !g.LastSeen.Equal(w.LastSeen) {
			t.Errorf("flow %d: times %v %v %v, want %v %v %v", i, g.Time, g.FirstSeen, g.LastSeen, w.Time, w.FirstSeen, w.LastSeen)
		}
		g.Time, g.FirstSeen, g.LastSeen = w.Time, w.FirstSeen, w.LastSeen
		if !reflect.DeepEqual(g, w) {
			t.Errorf("flow %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

// TestPostgresCopyRefusesBadText: a string PostgreSQL cannot store (a NUL
// byte, invalid UTF-8: an agent's record is checked before it gets here,
// but the store must not rely on that) fails the COPY with an error and
// stores nothing of the batch.
func TestPostgresCopyRefusesBadText(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	for _, bad := range []string{"a\x00b", "\xff\xfe"} {
		recs := []flowrecord.Record{storetest.Flow(0, at), storetest.Flow(1, at)}
		recs[1].Rule = bad
		err := s.EventTx(ctx, func(tx store.EventTx) error { return tx.InsertFlows(recs) })
		if err == nil || !strings.Contains(err.Error(), "insert flows") {
			t.Errorf("rule %q: %v, want the insert refused", bad, err)
		}
	}
	if _, n, err := s.EventStoreSize(ctx); err != nil || n != 0 {
		t.Errorf("%d flows stored, %v", n, err)
	}
}
