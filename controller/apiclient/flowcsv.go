package apiclient

import (
	"strconv"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
)

// FlowCSVHeader is the first line of GET /api/v1/flows?format=csv: the
// stored flow's keys.
var FlowCSVHeader = []string{"id", "time", "node", "direction", "protocol", "srcAddr", "srcPort", "srcWorkload", "srcIdentity",
	"dstAddr", "dstPort", "dstWorkload", "dstIdentity", "verdict", "rule", "packets", "bytes", "firstSeen", "lastSeen",
	"packetsSent", "packetsReceived", "bytesSent", "bytesReceived", "state", "icmpType", "icmpCode", "reason"}

// FlowCSVRow is one flow as a line of GET /api/v1/flows?format=csv, its
// cells defused for spreadsheets (csvSafe).
func FlowCSVRow(id int64, r *flowrecord.Record) []string {
	u := func(n uint64) string { return strconv.FormatUint(n, 10) }
	opt := func(p *uint8) string {
		if p == nil {
			return ""
		}
		return strconv.Itoa(int(*p))
	}
	t := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	return csvSafe([]string{strconv.FormatInt(id, 10), t(r.Time), r.Node, r.Direction.String(), r.Protocol, r.SrcAddr.String(),
		u(uint64(r.SrcPort)), r.SrcWorkload, u(uint64(r.SrcIdentity)), r.DstAddr.String(), u(uint64(r.DstPort)), r.DstWorkload,
		u(uint64(r.DstIdentity)), r.Verdict.String(), r.Rule, u(r.Packets), u(r.Bytes), t(r.FirstSeen), t(r.LastSeen),
		u(r.PacketsSent), u(r.PacketsReceived), u(r.BytesSent), u(r.BytesReceived), string(r.State),
		opt(r.ICMPType), opt(r.ICMPCode), r.Reason})
}

// csvSafe defuses a cell a spreadsheet would take for a formula
// (=, +, -, @ first): names are attacker-controlled.
func csvSafe(row []string) []string {
	for i, c := range row {
		if c != "" && (c[0] == '=' || c[0] == '+' || c[0] == '-' || c[0] == '@' || c[0] == '\t' || c[0] == '\r') {
			row[i] = "'" + c
		}
	}
	return row
}
