package alert_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/store"
)

func (h *harness) observeNode(now time.Time, ev alert.NodeEvent) alert.Pending {
	h.t.Helper()
	var p alert.Pending
	if err := h.s.EventTx(context.Background(), func(tx store.EventTx) error { return h.e.ObserveNode(tx, ev, now, &p) }); err != nil {
		h.t.Fatalf("observe node event: %v", err)
	}
	h.e.Commit(&p)
	return p
}

// TestNodeAlertDatapathTampered: a drift report raises a critical
// datapath-tampered alert naming the node and the kind, with a firing
// delivery to every webhook; repeats of the same node and kind within the
// window raise its count and send nothing new; another kind is another
// alert; a window without repeats resolves it.
func TestNodeAlertDatapathTampered(t *testing.T) {
	h := newHarness(t, "", alert.Builtin{}, 0)
	ev := alert.NodeEvent{Rule: alert.BuiltinTamperedRule, Node: "node-a", Kind: "link-detached",
		Detail: "tcx-7-ingress (eth0): our tcx link is no longer attached", Outcome: "repaired", Count: 1, At: t0}
	p := h.observeNode(t0, ev)
	if p.Raised[alert.BuiltinTamperedRule] != 1 || p.Deliveries != 2 {
		t.Errorf("raised %v, %d deliveries; want one alert to both webhooks", p.Raised, p.Deliveries)
	}
	a := h.only()
	if a.Rule != alert.BuiltinTamperedRule || a.Severity != "critical" || a.Source != "node-a" || a.Destination != "link-detached" ||
		a.Node != "node-a" || a.Verdict != "repaired" || a.DecidingRule != ev.Detail || a.Count != 1 || a.State != store.AlertOpen {
		t.Errorf("alert %+v", a)
	}
	if got := h.deliveries(); !slices.Equal(got, []string{"1 am firing", "1 security-team firing"}) && !slices.Equal(got, []string{"1 security-team firing", "1 am firing"}) {
		t.Errorf("deliveries %v", got)
	}

	// A process flapping the link: reported again, coalesced 3 at once.
	ev.Count, ev.At = 3, t0.Add(time.Minute)
	if p := h.observeNode(t0.Add(time.Minute), ev); p.Deliveries != 0 || len(p.Raised) != 0 {
		t.Errorf("a repeat raised %v and queued %d deliveries", p.Raised, p.Deliveries)
	}
	if a := h.only(); a.Count != 4 || !a.LastSeen.Equal(t0.Add(time.Minute)) {
		t.Errorf("after the repeat: count %d, last seen %s", a.Count, a.LastSeen)
	}

	other := ev
	other.Kind, other.Count = "map-modified", 1
	h.observeNode(t0.Add(time.Minute), other)
	if n := len(h.alerts()); n != 2 {
		t.Errorf("%d alerts after another kind, want 2", n)
	}

	// An agent's clock ahead of the controller's is not believed.
	third := ev
	third.Node, third.At = "node-b", t0.Add(24*time.Hour)
	h.observeNode(t0.Add(2*time.Minute), third)
	if a := h.alerts()[2]; !a.FirstSeen.Equal(t0.Add(2 * time.Minute)) {
		t.Errorf("first seen %s from an agent clock a day ahead", a.FirstSeen)
	}

	h.sweep(t0.Add(time.Hour))
	for _, a := range h.alerts() {
		if a.State != store.AlertResolved {
			t.Errorf("alert %d %s/%s still %s a window after its last report", a.ID, a.Source, a.Destination, a.State)
		}
	}
}
