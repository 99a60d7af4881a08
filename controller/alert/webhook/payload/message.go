package payload

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

// Message is what one delivery says: everything a format needs, so the
// formats are pure functions of it.
type Message struct {
	DeliveryID int64
	// Event is store.EventFiring, EventResolved or EventRefresh.
	Event string
	// Alert is the alert as stored when the attempt is made (its state
	// may have moved on since the delivery was queued: a firing delivery
	// retried for an hour may carry an alert that is resolved by then).
	Alert  store.Alert
	SentAt time.Time
	// Link is the alert's page on the dashboard; "" when the controller
	// has no external URL.
	Link string
}

// AlertLink returns the dashboard page of an alert, or "" when
// dashboardURL is empty.
func AlertLink(dashboardURL string, alertID int64) string {
	if dashboardURL == "" {
		return ""
	}
	return strings.TrimRight(dashboardURL, "/") + "/#/alerts/" + strconv.FormatInt(alertID, 10)
}

// endName is how an alert end is named to people: its workload, or its
// address when unmanaged (the store's Source/Destination as a last
// resort, should neither be set).
func endName(workload string, addr netip.Addr, stored string) string {
	switch {
	case workload != "":
		return workload
	case addr.IsValid():
		return addr.String()
	default:
		return stored
	}
}

// nodeAlert says whether a is a built-in node alert (datapath-tampered,
// agent-silent): its source is the node, its destination what happened,
// and it has no protocol, which every flow alert has.
func nodeAlert(a store.Alert) bool { return a.Protocol == "" }

// nodeSummary is a node alert in one line: "node node-a: link-detached,
// repaired: tcx-7-ingress (eth0): ...".
func nodeSummary(a store.Alert) string {
	return fmt.Sprintf("node %s: %s, %s: %s", a.Node, a.Destination, a.Verdict, a.DecidingRule)
}

func srcName(a store.Alert) string { return endName(a.SrcWorkload, a.SrcAddr, a.Source) }
func dstName(a store.Alert) string { return endName(a.DstWorkload, a.DstAddr, a.Destination) }

// portProto is "22/TCP", or the protocol alone for ICMP (no port); an
// alert over several ports says how many: "22/TCP and 1999 more ports".
func portProto(a store.Alert) string {
	if a.Port == 0 && strings.HasPrefix(a.Protocol, "ICMP") {
		return a.Protocol
	}
	s := strconv.Itoa(int(a.Port)) + "/" + a.Protocol
	if a.PortCount > 1 {
		s += " and " + strconv.Itoa(a.PortCount-1) + " more port"
		if a.PortCount > 2 {
			s += "s"
		}
	}
	return s
}

// foldedNote says what a summary alert stands for ("" for the others).
func foldedNote(a store.Alert) string {
	if a.Folded == 0 {
		return ""
	}
	return " (summary of " + strconv.FormatUint(a.Folded, 10) + " source/destination pairs beyond the rule's cap of live alerts)"
}

// timestamp formats times in payloads: RFC 3339 in UTC, with fractional
// seconds only when there are any.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
