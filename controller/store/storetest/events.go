package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func testForgetAndPruneSpools(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	save := func(node string, id uint64, at time.Time) {
		t.Helper()
		if err := s.EventTx(ctx, func(tx store.EventTx) error {
			return tx.SaveSpoolPosition(store.SpoolPosition{Node: node, SpoolID: id, High: 1, Updated: at})
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range uint64(6) {
		save("n", 100+i, base.Add(time.Duration(i)*time.Minute))
	}
	save("n", 1<<63+1, base.Add(time.Hour)) // a uint64 beyond int64, the newest
	save("n", 99, base)                     // as old as 100, created later
	save("other", 1, base)
	stored := func(node string, id uint64) bool {
		t.Helper()
		var p store.SpoolPosition
		if err := s.EventTx(ctx, func(tx store.EventTx) (err error) { p, err = tx.SpoolPosition(node, id); return err }); err != nil {
			t.Fatal(err)
		}
		return p.High != 0
	}
	forget := func(keep int) []uint64 {
		t.Helper()
		var ids []uint64
		if err := s.EventTx(ctx, func(tx store.EventTx) (err error) { ids, err = tx.ForgetSpools("n", keep); return err }); err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return ids
	}
	// 99 and 100 were updated at the same time; 99 was created later.
	if got := forget(7); !slices.Equal(got, []uint64{100}) {
		t.Errorf("keeping 7 of 8 forgot %v, want [100]", got)
	}
	if got := forget(4); !slices.Equal(got, []uint64{99, 101, 102}) {
		t.Errorf("keeping 4 forgot %v, want [99 101 102]", got)
	}
	if got := forget(4); len(got) != 0 {
		t.Errorf("keeping 4 of 4 forgot %v", got)
	}
	for id, want := range map[uint64]bool{99: false, 100: false, 103: true, 105: true, 1<<63 + 1: true} {
		if got := stored("n", id); got != want {
			t.Errorf("spool %d kept: %v, want %v", id, got, want)
		}
	}
	if !stored("other", 1) {
		t.Error("another node's spool forgotten")
	}
	n, err := s.PruneSpoolPositions(ctx, base.Add(4*time.Minute+time.Second))
	if err != nil || n != 3 { // 103, 104 and other's 1
		t.Errorf("pruned %d (%v), want 3", n, err)
	}
	if stored("n", 104) || !stored("n", 105) || stored("other", 1) {
		t.Error("pruning by age kept an old position or deleted a recent one")
	}
}

func testFlowsQueryAndRetention(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var recs []flowrecord.Record
	for i := range 30 {
		recs = append(recs, Flow(i, base.Add(time.Duration(i)*time.Minute)))
	}
	icmp := Flow(100, base.Add(time.Hour))
	icmp.Protocol, icmp.SrcPort, icmp.DstPort = "ICMP", 0, 0
	typ, code := uint8(8), uint8(0)
	icmp.ICMPType, icmp.ICMPCode = &typ, &code
	recs = append(recs, icmp)
	InsertFlows(t, s, recs)

	all, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil || len(all) != 31 {
		t.Fatalf("all flows: %d, %v", len(all), err)
	}
	if all[0].Protocol != "ICMP" || *all[0].ICMPType != 8 || all[0].ICMPCode == nil || !all[0].Time.Equal(icmp.Time) {
		t.Errorf("newest first, ICMP kept: %+v", all[0])
	}
	if all[1].SrcAddr != recs[29].SrcAddr || all[1].DstWorkload != "db" || all[1].Rule != "shop/r1" || all[1].SrcPort != 30029 {
		t.Errorf("round trip: %+v", all[1])
	}
	cases := []struct {
		name string
		q    store.FlowQuery
		want int
	}{
		{"denied", store.FlowQuery{Verdict: ruleset.VerdictDenied}, 15},
		{"port 22", store.FlowQuery{Port: 22, HasPort: true}, 10},
		{"port 0", store.FlowQuery{Port: 0, HasPort: true}, 1},
		{"since", store.FlowQuery{Since: base.Add(20 * time.Minute)}, 11},
		{"until", store.FlowQuery{Until: base.Add(5 * time.Minute)}, 5},
		{"rule", store.FlowQuery{Rule: "shop/r0"}, 16},
		{"workload either end", store.FlowQuery{Workload: "web"}, 31},
		{"workload none", store.FlowQuery{Workload: "nope"}, 0},
		{"address", store.FlowQuery{Addr: netip.MustParseAddr("10.250.0.2")}, 31},
		{"protocol", store.FlowQuery{Protocol: "ICMP"}, 1},
		{"node", store.FlowQuery{Node: "node-a"}, 31},
		{"limit", store.FlowQuery{Limit: 3}, 3},
		{"combined", store.FlowQuery{Verdict: ruleset.VerdictDenied, Port: 23, HasPort: true, Since: base.Add(10 * time.Minute)}, 3},
	}
	for _, c := range cases {
		got, err := s.Flows(ctx, c.q)
		if err != nil || len(got) != c.want {
			t.Errorf("%s: %d flows (%v), want %d", c.name, len(got), err, c.want)
		}
	}
	n, err := s.PruneFlows(ctx, base.Add(10*time.Minute), 4)
	if err != nil || n != 4 {
		t.Errorf("prune by age, limited: %d, %v", n, err)
	}
	n, err = s.PruneFlows(ctx, base.Add(10*time.Minute), 100)
	if err != nil || n != 6 {
		t.Errorf("prune by age: %d, %v", n, err)
	}
	if n, err = s.PruneOldestFlows(ctx, 5); err != nil || n != 5 {
		t.Errorf("prune oldest: %d, %v", n, err)
	}
	left, _ := s.Flows(ctx, store.FlowQuery{})
	if len(left) != 16 || !left[len(left)-1].Time.Equal(base.Add(15*time.Minute)) {
		t.Errorf("%d left, oldest %v", len(left), left[len(left)-1].Time)
	}
	size, count, err := s.EventStoreSize(ctx)
	if err != nil || size <= 0 || count != 16 {
		t.Errorf("size %d, count %d, %v", size, count, err)
	}
}

func testAlertsAndDeliveries(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	a := store.Alert{Rule: "ssh", Severity: "critical", Key: "ssh|web|db|22|TCP", State: store.AlertOpen, Count: 1, Source: "web",
		Destination: "db", SrcWorkload: "web", DstWorkload: "db", SrcAddr: netip.MustParseAddr("10.250.0.1"),
		DstAddr: netip.MustParseAddr("10.250.0.2"), SrcLabels: map[string]string{"role": "web"}, Port: 22, Protocol: "TCP",
		Verdict: "denied", DecidingRule: "default-deny", Node: "node-a", FirstSeen: now, LastSeen: now, Window: time.Minute,
		Notify: []string{"sec", "am"}, Created: now}
	err := s.EventTx(ctx, func(tx store.EventTx) error {
		if err := tx.InsertAlert(&a); err != nil {
			return err
		}
		return tx.AddDeliveries([]store.Delivery{
			{AlertID: a.ID, Webhook: "sec", Event: store.EventFiring, NextAttempt: now, Created: now},
			{AlertID: a.ID, Webhook: "am", Event: store.EventFiring, NextAttempt: now, Created: now},
			{AlertID: a.ID, Webhook: "sec", Event: store.EventResolved, NextAttempt: now.Add(time.Second), Created: now.Add(time.Second)},
		})
	})
	if err != nil || a.ID == 0 {
		t.Fatalf("insert: %v (id %d)", err, a.ID)
	}
	// A failed transaction leaves nothing behind.
	boom := errors.New("boom")
	err = s.EventTx(ctx, func(tx store.EventTx) error {
		b := a
		b.Key = "other"
		if err := tx.InsertAlert(&b); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("rollback: %v", err)
	}
	err = s.EventTx(ctx, func(tx store.EventTx) error {
		got, err := tx.LiveAlert(a.Key)
		if err != nil {
			return err
		}
		if got.ID != a.ID || got.SrcLabels["role"] != "web" || len(got.Notify) != 2 || got.Window != time.Minute ||
			!got.FirstSeen.Equal(now) || got.SrcAddr != a.SrcAddr || got.DstLabels != nil {
			t.Errorf("live alert: %+v", got)
		}
		if _, err := tx.LiveAlert("other"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("rolled back alert found: %v", err)
		}
		got.Count, got.State, got.ResolvedAt, got.ResolvedBy = 5, store.AlertResolved, now.Add(time.Hour), "window"
		if err := tx.UpdateAlert(&got); err != nil {
			return err
		}
		if _, err := tx.LiveAlert(a.Key); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("resolved alert is live: %v", err)
		}
		last, err := tx.LastDeliveryCreated(a.ID, "sec")
		if !last.Equal(now.Add(time.Second)) {
			t.Errorf("last delivery %v", last)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.Alerts(ctx, store.AlertQuery{States: []string{store.AlertResolved}})
	if err != nil || len(list) != 1 || list[0].Count != 5 {
		t.Fatalf("alerts: %+v, %v", list, err)
	}
	if list, _ := s.Alerts(ctx, store.AlertQuery{States: []string{store.AlertOpen}}); len(list) != 0 {
		t.Errorf("open alerts: %+v", list)
	}

	// The resolved delivery to sec waits for the firing one.
	due, err := s.DueDeliveries(ctx, now, 10, 10)
	if err != nil || len(due) != 2 || due[0].Webhook != "sec" || due[0].Event != store.EventFiring || due[1].Webhook != "am" {
		t.Fatalf("due: %+v, %v", due, err)
	}
	if next, n, err := s.NextDeliveryAt(ctx); err != nil || !next.Equal(now) || n != 3 {
		t.Errorf("next %v, %d, %v", next, n, err)
	}
	d := due[0]
	d.State, d.Attempts, d.Finished = store.DeliveryDelivered, 1, now
	if err := s.UpdateDelivery(ctx, d); err != nil {
		t.Fatal(err)
	}
	due, _ = s.DueDeliveries(ctx, now, 10, 10)
	if len(due) != 1 || due[0].Webhook != "am" {
		t.Errorf("due after delivery: %+v", due)
	}
	if due, _ = s.DueDeliveries(ctx, now.Add(time.Second), 10, 10); len(due) != 2 {
		t.Errorf("due a second later: %+v", due)
	}
	if got, err := s.Delivery(ctx, d.ID); err != nil || got.State != store.DeliveryDelivered || got.Attempts != 1 {
		t.Errorf("delivery: %+v %v", got, err)
	}
	// Pruning keeps an alert while a delivery of it is pending.
	if _, err := s.PruneAlerts(ctx, now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.Alerts(ctx, store.AlertQuery{}); len(list) != 1 {
		t.Errorf("alert with pending deliveries pruned")
	}
	for _, d := range []store.Delivery{due[0], due[1]} {
		d.State, d.Finished = store.DeliveryGaveUp, now
		s.UpdateDelivery(ctx, d)
	}
	// The delivered one went in the first pass; now the alert and the
	// two given up.
	if n, err := s.PruneAlerts(ctx, now.Add(2*time.Hour)); err != nil || n != 3 {
		t.Errorf("pruned %d, %v", n, err)
	}
	if list, _ := s.Alerts(ctx, store.AlertQuery{}); len(list) != 0 {
		t.Errorf("alerts left: %+v", list)
	}
}

// TestDueDeliveriesFairness: a backlog to one webhook does not hide the
// deliveries to others (at most perWebhook each), and a delivery waiting
// behind an older one of its alert is neither due nor counted as next.
func testDueDeliveriesFairness(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var ds []store.Delivery
	err := s.EventTx(ctx, func(tx store.EventTx) error {
		for i := range 20 {
			a := store.Alert{Rule: "r", Key: fmt.Sprint("k", i), State: store.AlertOpen, Created: now}
			if err := tx.InsertAlert(&a); err != nil {
				return err
			}
			// Twenty old deliveries to "busy", then one to "quiet".
			ds = append(ds, store.Delivery{AlertID: a.ID, Webhook: "busy", Event: store.EventFiring,
				NextAttempt: now.Add(time.Duration(i) * time.Millisecond), Created: now})
		}
		ds = append(ds, store.Delivery{AlertID: 1, Webhook: "quiet", Event: store.EventFiring, NextAttempt: now.Add(time.Second), Created: now})
		return tx.AddDeliveries(ds)
	})
	if err != nil {
		t.Fatal(err)
	}
	due, err := s.DueDeliveries(ctx, now.Add(time.Minute), 4, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range due {
		got = append(got, d.Webhook)
	}
	if want := []string{"busy", "busy", "busy", "busy", "quiet"}; !slices.Equal(got, want) {
		t.Errorf("due with 4 per webhook: %q, want %q", got, want)
	}
	if due, _ := s.DueDeliveries(ctx, now.Add(time.Minute), 100, 3); len(due) != 3 || due[0].ID != ds[0].ID {
		t.Errorf("due with limit 3: %+v", due)
	}

	// Alert 1's resolved delivery to "quiet" is due at once but waits
	// behind its firing one, due in a second: the next due time is the
	// firing one's, not the resolved one's (the deliverer would spin).
	err = s.EventTx(ctx, func(tx store.EventTx) error {
		return tx.AddDeliveries([]store.Delivery{{AlertID: 1, Webhook: "quiet", Event: store.EventResolved, NextAttempt: now, Created: now}})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds[:20] {
		d.State, d.Finished = store.DeliveryDelivered, now
		if err := s.UpdateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if next, n, err := s.NextDeliveryAt(ctx); err != nil || !next.Equal(now.Add(time.Second)) || n != 2 {
		t.Errorf("next %v, %d pending, %v; want %v, 2", next, n, err, now.Add(time.Second))
	}
	if due, _ := s.DueDeliveries(ctx, now, 4, 10); len(due) != 0 {
		t.Errorf("due now: %+v, want none", due)
	}
}

// TestEventStoreFull: a store over its page budget (as a full disk)
// refuses the write whole with ErrFull and a message that says so; the
func testWebhookStats(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	a := store.Alert{Rule: "ssh", Key: "k", State: store.AlertOpen, Port: 22, Protocol: "TCP", FirstSeen: now, LastSeen: now, Created: now}
	var ds []store.Delivery
	err := s.EventTx(ctx, func(tx store.EventTx) error {
		if err := tx.InsertAlert(&a); err != nil {
			return err
		}
		for _, w := range []string{"sec", "sec", "sec", "sec", "am"} {
			ds = append(ds, store.Delivery{AlertID: a.ID, Webhook: w, Event: store.EventFiring, NextAttempt: now, Created: now})
		}
		return tx.AddDeliveries(ds)
	})
	if err != nil {
		t.Fatal(err)
	}
	set := func(d store.Delivery, state, lastErr string, finished time.Time) {
		d.State, d.LastError, d.Finished = state, lastErr, finished
		if err := s.UpdateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	set(ds[0], store.DeliveryDelivered, "", now.Add(time.Second))
	set(ds[1], store.DeliveryGaveUp, "HTTP 500 Internal Server Error", now.Add(2*time.Second))
	set(ds[2], store.DeliveryDelivered, "HTTP 503 earlier", now.Add(3*time.Second))
	set(ds[3], store.DeliveryPending, "POST: connection refused", time.Time{})
	got, err := s.WebhookStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.WebhookStats{
		{Webhook: "am", Pending: 1},
		{Webhook: "sec", LastDelivered: now.Add(3 * time.Second), LastError: "POST: connection refused", Pending: 1, GaveUp: 1},
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("stats\n  %+v\nwant\n  %+v", got, want)
	}
}

// TestFlowVolumeRoundTrip: a volume record's counts per direction and
// state come back as stored; a record without a state is stored as new.
func testFlowVolumeRoundTrip(t *testing.T, open Open) {
	s := open(t)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	closed := Flow(0, base.Add(time.Minute))
	closed.State = flowrecord.StateClosed
	closed.Packets, closed.PacketsSent, closed.PacketsReceived = 1500, 1000, 500
	closed.Bytes, closed.BytesSent, closed.BytesReceived = 2_100_000, 2_000_000, 100_000
	legacy := Flow(1, base)
	InsertFlows(t, s, []flowrecord.Record{closed, legacy})
	got, err := s.Flows(context.Background(), store.FlowQuery{})
	if err != nil || len(got) != 2 {
		t.Fatalf("flows: %d, %v", len(got), err)
	}
	if fmt.Sprintf("%+v", got[0]) != fmt.Sprintf("%+v", closed) {
		t.Errorf("closed record\n  %+v\nwant\n  %+v", got[0], closed)
	}
	if got[1].State != flowrecord.StateNew {
		t.Errorf("record without a state stored as %q, want new", got[1].State)
	}
}

// TestFlowVolumeMigration: flows stored before migration 3 read back as

// testFlowEdgesFirstSeen: each group says when its first and last records
// in the range were stored (a recommended rule's evidence); records
// outside the range do not count.
func testFlowEdgesFirstSeen(t *testing.T, open Open) {
	s := open(t)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var recs []flowrecord.Record
	for i, ago := range []time.Duration{3 * time.Hour, 50 * time.Minute, 30 * time.Minute, 10 * time.Minute} {
		r := Flow(0, base.Add(-ago))
		r.SrcPort, r.State = uint16(40000+i), flowrecord.StateNew
		recs = append(recs, r)
	}
	InsertFlows(t, s, recs)
	edges, err := s.FlowEdges(context.Background(), base.Add(-time.Hour), base, 10)
	if err != nil || len(edges) != 1 {
		t.Fatalf("edges %+v, %v", edges, err)
	}
	if e := edges[0]; e.Flows != 3 || !e.FirstSeen.Equal(base.Add(-50*time.Minute)) || !e.LastSeen.Equal(base.Add(-10*time.Minute)) {
		t.Errorf("edge %+v: want 3 flows, first seen 50 min and last 10 min before", e)
	}
}

// testFlowEdgesOf: one workload's groups only, from either end, the limit
// counting only them.
func testFlowEdgesOf(t *testing.T, open Open) {
	s := open(t)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var recs []flowrecord.Record
	for i, ends := range [][2]string{{"web", "db"}, {"web", "db"}, {"db", "cache"}, {"lb", "web"}, {"lb", "api"}} {
		r := Flow(0, base.Add(-time.Duration(i+1)*time.Minute))
		r.SrcWorkload, r.DstWorkload, r.SrcPort, r.State = ends[0], ends[1], uint16(40000+i), flowrecord.StateNew
		recs = append(recs, r)
	}
	InsertFlows(t, s, recs)
	ctx := context.Background()
	edges, err := s.FlowEdgesOf(ctx, base.Add(-time.Hour), base, "web", 10)
	var got []string
	for _, e := range edges {
		got = append(got, fmt.Sprintf("%s>%s:%d", e.SrcWorkload, e.DstWorkload, e.Flows))
	}
	if err != nil || !slices.Equal(got, []string{"web>db:2", "lb>web:1"}) {
		t.Errorf("web's edges %v, %v", got, err)
	}
	if edges, err := s.FlowEdgesOf(ctx, base.Add(-time.Hour), base, "cache", 1); err != nil || len(edges) != 1 || edges[0].SrcWorkload != "db" {
		t.Errorf("cache's edges, limit 1: %+v, %v", edges, err)
	}
	if all, err := s.FlowEdges(ctx, base.Add(-time.Hour), base, 10); err != nil || len(all) != 4 {
		t.Errorf("every edge: %+v, %v", all, err)
	}
}

// testFlowEdgesTotals: an edge counts its new flows; its packets and
// bytes are its closed connections' and its not-allowed flows' (whose
// only record is the new one); an unmanaged end is named by its address,
// a managed one by its workload alone; most flows first, then by the
// ends.
func testFlowEdgesTotals(t *testing.T, open Open) {
	s := open(t)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return base.Add(-time.Duration(m) * time.Minute) }
	opened := Flow(0, at(30))
	opened.SrcPort, opened.State, opened.Packets, opened.Bytes = 40000, flowrecord.StateNew, 1, 60
	closed := opened
	closed.Time, closed.State, closed.Packets, closed.Bytes = at(20), flowrecord.StateClosed, 10, 1000
	again := opened
	again.Time, again.SrcPort = at(10), 40001
	denied := Flow(1, at(5))
	denied.SrcWorkload, denied.SrcAddr, denied.DstPort = "", netip.MustParseAddr("203.0.113.9"), 22
	denied.State, denied.Packets, denied.Bytes = flowrecord.StateNew, 3, 180
	InsertFlows(t, s, []flowrecord.Record{opened, closed, again, denied})
	edges, err := s.FlowEdges(context.Background(), base.Add(-time.Hour), base, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range edges {
		got = append(got, fmt.Sprintf("%s|%s>%s|%s %s/%d %s flows=%d packets=%d bytes=%d %s..%s", e.SrcWorkload, addrOrNone(e.SrcAddr),
			e.DstWorkload, addrOrNone(e.DstAddr), e.Protocol, e.Port, e.Verdict, e.Flows, e.Packets, e.Bytes,
			e.FirstSeen.Format("15:04"), e.LastSeen.Format("15:04")))
	}
	want := []string{
		"web|->db|- TCP/22 allowed flows=2 packets=10 bytes=1000 11:30..11:50",
		"|203.0.113.9>db|- TCP/22 denied flows=1 packets=3 bytes=180 11:55..11:55",
	}
	if !slices.Equal(got, want) {
		t.Errorf("edges\n got %q\nwant %q", got, want)
	}
}

func addrOrNone(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}
