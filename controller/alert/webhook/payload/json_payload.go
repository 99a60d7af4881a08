package payload

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/eastguard/eastguard/controller/store"
)

// SchemaVersion is the "version" of json payloads. Fields may be added
// within a version; none is removed or changes meaning.
const SchemaVersion = "eastguard.dev/v1"

// Payload is the body of a json delivery (see the package documentation
// for the schema). Go receivers may decode into it.
type Payload struct {
	Version    string       `json:"version"`
	Event      string       `json:"event"`
	DeliveryID int64        `json:"deliveryId"`
	SentAt     string       `json:"sentAt"`
	Alert      PayloadAlert `json:"alert"`
}

// PayloadAlert is the alert in a json payload.
type PayloadAlert struct {
	ID          int64    `json:"id"`
	Rule        string   `json:"rule"`
	Severity    string   `json:"severity"`
	State       string   `json:"state"`
	Count       uint64   `json:"count"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	// Port is the first destination port seen; Ports the first distinct
	// ones seen (at most MaxPorts), in order; PortCount how many
	// distinct ports the alert covers in all.
	Port      uint16   `json:"port"`
	Ports     []uint16 `json:"ports"`
	PortCount int      `json:"portCount"`
	// Folded is, on a rule's summary alert (source and destination
	// "*"), how many (source, destination, protocol) runs it stands for
	// beyond the rule's cap of live alerts; 0 on every other alert.
	Folded       uint64 `json:"folded"`
	Protocol     string `json:"protocol"`
	Verdict      string `json:"verdict"`
	DecidingRule string `json:"decidingRule"`
	Node         string `json:"node"`
	FirstSeen    string `json:"firstSeen"`
	LastSeen     string `json:"lastSeen"`
	// URL is the alert's dashboard page, "" when the controller has no
	// external URL configured.
	URL string `json:"url"`
}

// Endpoint is one end of an alert. Workload is "" and Labels empty (never
// null) for an unmanaged end; Name is the workload, or the address.
type Endpoint struct {
	Name     string            `json:"name"`
	Workload string            `json:"workload"`
	Address  string            `json:"address"`
	Labels   map[string]string `json:"labels"`
}

// EncodeJSON returns the body of a json delivery.
func EncodeJSON(m Message) ([]byte, error) {
	if m.Event != store.EventFiring && m.Event != store.EventResolved {
		return nil, fmt.Errorf("json payload: event %q is not sent to json webhooks", m.Event)
	}
	a := m.Alert
	p := Payload{
		Version:    SchemaVersion,
		Event:      m.Event,
		DeliveryID: m.DeliveryID,
		SentAt:     timestamp(m.SentAt),
		Alert: PayloadAlert{
			ID: a.ID, Rule: a.Rule, Severity: a.Severity, State: a.State, Count: a.Count,
			Source:      endpoint(srcName(a), a.SrcWorkload, a.SrcAddr, a.SrcLabels),
			Destination: endpoint(dstName(a), a.DstWorkload, a.DstAddr, a.DstLabels),
			Port:        a.Port, Ports: ports(a), PortCount: max(a.PortCount, 1), Folded: a.Folded,
			Protocol: a.Protocol, Verdict: a.Verdict, DecidingRule: a.DecidingRule,
			Node: a.Node, FirstSeen: timestamp(a.FirstSeen), LastSeen: timestamp(a.LastSeen), URL: m.Link,
		},
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("json payload of alert %d: %w", a.ID, err)
	}
	return b, nil
}

// ports is an alert's port sample, never null: an alert stored before
// alerts had one lists its one port.
func ports(a store.Alert) []uint16 {
	if len(a.Ports) == 0 {
		return []uint16{a.Port}
	}
	return a.Ports
}

func endpoint(name, workload string, addr netip.Addr, labels map[string]string) Endpoint {
	e := Endpoint{Name: name, Workload: workload, Labels: labels}
	if addr.IsValid() {
		e.Address = addr.String()
	}
	if e.Labels == nil {
		e.Labels = map[string]string{}
	}
	return e
}
