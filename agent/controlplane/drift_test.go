package controlplane

import (
	"fmt"
	"testing"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestDriftReportsCoalesce: findings of one kind become one report with
// the latest finding's fields and the count of all; reports a stream
// could not send come back, counts added; the kinds kept are bounded.
func TestDriftReportsCoalesce(t *testing.T) {
	r := NewDriftReports()
	r.Add(&pb.DatapathDrift{Kind: "link-detached", Object: "tcx-7-ingress (eth0)", Detail: "first", Count: 1})
	r.Add(&pb.DatapathDrift{Kind: "link-detached", Object: "tcx-7-ingress (eth0)", Detail: "second", Repaired: true, Count: 1})
	r.Add(&pb.DatapathDrift{Kind: "map-modified", Object: "eg_policy", Detail: "1 entries changed", Count: 1})
	select {
	case <-r.notify:
	default:
		t.Fatal("Add did not notify the sender")
	}
	got := r.take()
	if len(got) != 2 || got[0].GetKind() != "link-detached" || got[0].GetCount() != 2 || got[0].GetDetail() != "second" || !got[0].GetRepaired() ||
		got[1].GetKind() != "map-modified" || got[1].GetCount() != 1 {
		t.Fatalf("reports %v", got)
	}
	if !r.empty() {
		t.Error("take left reports")
	}
	r.Add(&pb.DatapathDrift{Kind: "link-detached", Detail: "third", Count: 1})
	r.putBack(got[:1]) // the send of the first failed
	if again := r.take(); len(again) != 1 || again[0].GetCount() != 3 || again[0].GetDetail() != "third" {
		t.Errorf("after putBack: %v, want one link-detached report of count 3, the newest detail", again)
	}
	for i := range maxDriftKinds + 10 {
		r.Add(&pb.DatapathDrift{Kind: fmt.Sprintf("kind-%d", i), Count: 1})
	}
	if n := len(r.take()); n != maxDriftKinds {
		t.Errorf("%d kinds kept, want at most %d", n, maxDriftKinds)
	}
}
