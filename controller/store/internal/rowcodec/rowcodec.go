// Package rowcodec is how the SQL stores (controller/store/sqlite,
// controller/store/postgres) put controller/store's records into
// columns and read them back, where the encoding is not the engine's:
// times as Unix nanoseconds (0 for none), spool holes as text, alerts'
// label maps and port samples as JSON, the defaults a stored alert or
// flow gets. Both stores use it so that their rows mean the same.
//
// It imports controller/store and internal/... only; never a database
// driver nor another controller package.
package rowcodec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Nanos is t as Unix nanoseconds, 0 for the zero time.
func Nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromNanos reads what Nanos wrote (UTC).
func FromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// FormatHoles keeps spool holes as "first-last,first-last".
func FormatHoles(hs []store.SeqRange) string {
	var b strings.Builder
	for i, h := range hs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", h.First, h.Last)
	}
	return b.String()
}

// ParseHoles reads what FormatHoles wrote.
func ParseHoles(s string) ([]store.SeqRange, error) {
	if s == "" {
		return nil, nil
	}
	var out []store.SeqRange
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(part, "-")
		first, err1 := strconv.ParseUint(a, 10, 64)
		last, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || first > last {
			return nil, fmt.Errorf("holes: %q is not a seq range", part)
		}
		out = append(out, store.SeqRange{First: first, Last: last})
	}
	return out, nil
}

// StateOrNew stores a record without a state (made before records had
// one) as the new-flow event it is.
func StateOrNew(s flowrecord.State) flowrecord.State {
	if s == "" {
		return flowrecord.StateNew
	}
	return s
}

// PortSetValue is the port_set column's value: NULL while the sample
// holds every port.
func PortSetValue(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// UnmarshalIfAny decodes a JSON column; "" and "null" leave v as it is.
func UnmarshalIfAny(s string, v any) error {
	if s == "" || s == "null" {
		return nil
	}
	return json.Unmarshal([]byte(s), v)
}

// MarshalString is v as JSON text.
func MarshalString(v any) string {
	b, _ := json.Marshal(v) // maps of strings and string slices always encode
	return string(b)
}

// AddrString is an address column's value: "" for none.
func AddrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// NormalizePorts fills the port fields of an alert made without them
// (one port, the sample holding it), so every stored alert has them.
func NormalizePorts(a *store.Alert) {
	if a.PortCount == 0 && len(a.Ports) == 0 {
		a.Ports, a.PortCount = []uint16{a.Port}, 1
	}
}

// Expires is when an alert's window passes with no repeat (Unix
// nanoseconds; 0 if it was never seen).
func Expires(a *store.Alert) int64 {
	if a.LastSeen.IsZero() {
		return 0
	}
	return a.LastSeen.Add(a.Window).UnixNano()
}

// AlertColumns are the alerts table's columns as ScanAlert reads them.
const AlertColumns = `id, rule, severity, dedup_key, state, count, source, destination, src_workload, dst_workload,
	src_addr, dst_addr, src_labels, dst_labels, port, protocol, verdict, deciding_rule, node, first_seen, last_seen,
	window_ns, notify, created, acknowledged_at, resolved_at, resolved_by, ports, port_count, port_set, folded, refreshed, acknowledged_by`

// ScanAlert reads one row of AlertColumns.
func ScanAlert(row interface{ Scan(...any) error }) (store.Alert, error) {
	var a store.Alert
	var count, port, first, last, window, created, acked, resolved, portCount, folded, refreshed int64
	var srcAddr, dstAddr, srcLabels, dstLabels, notify, ports string
	err := row.Scan(&a.ID, &a.Rule, &a.Severity, &a.Key, &a.State, &count, &a.Source, &a.Destination, &a.SrcWorkload,
		&a.DstWorkload, &srcAddr, &dstAddr, &srcLabels, &dstLabels, &port, &a.Protocol, &a.Verdict, &a.DecidingRule,
		&a.Node, &first, &last, &window, &notify, &created, &acked, &resolved, &a.ResolvedBy,
		&ports, &portCount, &a.PortSet, &folded, &refreshed, &a.AcknowledgedBy)
	if err != nil {
		return a, err
	}
	a.Count, a.Port, a.Window = uint64(count), uint16(port), time.Duration(window)
	a.PortCount, a.Folded = int(portCount), uint64(folded)
	a.FirstSeen, a.LastSeen, a.Created = FromNanos(first), FromNanos(last), FromNanos(created)
	a.AcknowledgedAt, a.ResolvedAt, a.RefreshedAt = FromNanos(acked), FromNanos(resolved), FromNanos(refreshed)
	a.SrcAddr, _ = netip.ParseAddr(srcAddr)
	a.DstAddr, _ = netip.ParseAddr(dstAddr)
	if len(a.PortSet) == 0 {
		a.PortSet = nil
	}
	if err := errors.Join(UnmarshalIfAny(srcLabels, &a.SrcLabels), UnmarshalIfAny(dstLabels, &a.DstLabels),
		UnmarshalIfAny(notify, &a.Notify), UnmarshalIfAny(ports, &a.Ports)); err != nil {
		return a, fmt.Errorf("alert %d: %w", a.ID, err)
	}
	return a, nil
}

// InsertAlertArgs are an alert's values for the columns of
// InsertAlertColumns, in order (NormalizePorts applied first).
func InsertAlertArgs(a *store.Alert) []any {
	NormalizePorts(a)
	return []any{a.Rule, a.Severity, a.Key, a.State, int64(a.Count), a.Source, a.Destination, a.SrcWorkload, a.DstWorkload,
		AddrString(a.SrcAddr), AddrString(a.DstAddr), MarshalString(a.SrcLabels), MarshalString(a.DstLabels), int64(a.Port),
		a.Protocol, a.Verdict, a.DecidingRule, a.Node, Nanos(a.FirstSeen), Nanos(a.LastSeen), int64(a.Window),
		MarshalString(a.Notify), Nanos(a.Created), Nanos(a.AcknowledgedAt), Nanos(a.ResolvedAt), a.ResolvedBy,
		MarshalString(a.Ports), int64(a.PortCount), PortSetValue(a.PortSet), int64(a.Folded), Expires(a),
		Nanos(a.RefreshedAt)}
}

// InsertAlertColumns are the columns InsertAlertArgs fills.
const InsertAlertColumns = `rule, severity, dedup_key, state, count, source, destination,
	src_workload, dst_workload, src_addr, dst_addr, src_labels, dst_labels, port, protocol, verdict, deciding_rule, node,
	first_seen, last_seen, window_ns, notify, created, acknowledged_at, resolved_at, resolved_by,
	ports, port_count, port_set, folded, expires, refreshed`

// UpdateAlertArgs are an alert's values for UpdateAlertSet's
// placeholders, then its id (NormalizePorts applied first).
func UpdateAlertArgs(a *store.Alert) []any {
	NormalizePorts(a)
	return []any{a.State, int64(a.Count), a.Verdict, a.DecidingRule, a.Node, Nanos(a.FirstSeen), Nanos(a.LastSeen),
		Nanos(a.AcknowledgedAt), a.AcknowledgedBy, Nanos(a.ResolvedAt), a.ResolvedBy,
		MarshalString(a.Ports), int64(a.PortCount), PortSetValue(a.PortSet), int64(a.Folded), Expires(a),
		Nanos(a.RefreshedAt), a.ID}
}

// UpdateAlertSet is the SET list of an alert update, with ? placeholders
// for UpdateAlertArgs (the last one, the id, in the WHERE the caller
// adds).
const UpdateAlertSet = `state = ?, count = ?, verdict = ?, deciding_rule = ?, node = ?,
		first_seen = ?, last_seen = ?, acknowledged_at = ?, acknowledged_by = ?, resolved_at = ?, resolved_by = ?,
		ports = ?, port_count = ?, port_set = ?, folded = ?, expires = ?, refreshed = ?`

// FlowColumns are the flows table's columns as FlowArgs and ScanFlow
// give and read them (without the id).
const FlowColumns = `time, node, direction, protocol, src_addr, src_port, src_workload, src_identity, dst_addr, dst_port,
	dst_workload, dst_identity, verdict, rule, packets, bytes, first_seen, last_seen, icmp_type, icmp_code, reason,
	packets_sent, packets_received, bytes_sent, bytes_received, state`

// FlowArgs are a record's values for FlowColumns.
func FlowArgs(r *flowrecord.Record) []any {
	var icmpType, icmpCode any
	if r.ICMPType != nil {
		icmpType = int64(*r.ICMPType)
	}
	if r.ICMPCode != nil {
		icmpCode = int64(*r.ICMPCode)
	}
	return []any{r.Time.UnixNano(), r.Node, int64(r.Direction), r.Protocol,
		r.SrcAddr.String(), int64(r.SrcPort), r.SrcWorkload, int64(r.SrcIdentity),
		r.DstAddr.String(), int64(r.DstPort), r.DstWorkload, int64(r.DstIdentity),
		int64(r.Verdict), r.Rule, int64(r.Packets), int64(r.Bytes), r.FirstSeen.UnixNano(), r.LastSeen.UnixNano(),
		icmpType, icmpCode, r.Reason,
		int64(r.PacketsSent), int64(r.PacketsReceived), int64(r.BytesSent), int64(r.BytesReceived), string(StateOrNew(r.State))}
}

// ScanFlow reads a row of "id, " + FlowColumns.
func ScanFlow(row interface{ Scan(...any) error }, r *flowrecord.Record) (id int64, err error) {
	var t, dir, srcPort, srcID, dstPort, dstID, verdict, packets, bytes, first, last int64
	var pSent, pRecv, bSent, bRecv int64
	var srcAddr, dstAddr, state string
	var icmpType, icmpCode *int64
	if err := row.Scan(&id, &t, &r.Node, &dir, &r.Protocol, &srcAddr, &srcPort, &r.SrcWorkload, &srcID, &dstAddr, &dstPort,
		&r.DstWorkload, &dstID, &verdict, &r.Rule, &packets, &bytes, &first, &last, &icmpType, &icmpCode, &r.Reason,
		&pSent, &pRecv, &bSent, &bRecv, &state); err != nil {
		return 0, err
	}
	r.PacketsSent, r.PacketsReceived, r.BytesSent, r.BytesReceived = uint64(pSent), uint64(pRecv), uint64(bSent), uint64(bRecv)
	r.State = flowrecord.State(state)
	r.Time, r.FirstSeen, r.LastSeen = time.Unix(0, t).UTC(), time.Unix(0, first).UTC(), time.Unix(0, last).UTC()
	r.Direction, r.Verdict = ruleset.Direction(dir), ruleset.Verdict(verdict)
	r.SrcAddr, _ = netip.ParseAddr(srcAddr)
	r.DstAddr, _ = netip.ParseAddr(dstAddr)
	r.SrcPort, r.DstPort = uint16(srcPort), uint16(dstPort)
	r.SrcIdentity, r.DstIdentity = ruleset.Identity(srcID), ruleset.Identity(dstID)
	r.Packets, r.Bytes = uint64(packets), uint64(bytes)
	r.ICMPType, r.ICMPCode = nil, nil
	if icmpType != nil {
		v := uint8(*icmpType)
		r.ICMPType = &v
	}
	if icmpCode != nil {
		v := uint8(*icmpCode)
		r.ICMPCode = &v
	}
	return id, nil
}

// FlowFilter is the WHERE of a flow query, with ? placeholders, before
// its paging condition (which needs a read of the store: see
// FlowFilter.Page). inWorkloads is the engine's condition that a column
// (its one %s, twice) is in a list given as one parameter, and
// workloadsArg that parameter's value. None reports a query that selects
// nothing (ByWorkloads with no workload).
type FlowFilter struct {
	Where []string
	Args  []any
	None  bool
}

// NewFlowFilter builds the filter of q.
func NewFlowFilter(q store.FlowQuery, inWorkloads string, workloadsArg any) FlowFilter {
	var f FlowFilter
	add := func(cond string, vals ...any) {
		f.Where = append(f.Where, cond)
		f.Args = append(f.Args, vals...)
	}
	if !q.Since.IsZero() {
		add("time >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("time < ?", q.Until.UnixNano())
	}
	if q.Verdict != ruleset.VerdictNone {
		add("verdict = ?", int64(q.Verdict))
	}
	if q.HasPort {
		add("dst_port = ?", int64(q.Port))
	}
	if q.Protocol != "" {
		add("protocol = ?", q.Protocol)
	}
	if q.Workload != "" {
		add("(src_workload = ? OR dst_workload = ?)", q.Workload, q.Workload)
	}
	if q.ByWorkloads {
		if len(q.Workloads) == 0 {
			f.None = true
		}
		// The list as one parameter: any number of names, no SQL built
		// from them.
		add("("+fmt.Sprintf(inWorkloads, "src_workload")+" OR "+fmt.Sprintf(inWorkloads, "dst_workload")+")", workloadsArg, workloadsArg)
	}
	if q.Addr.IsValid() {
		add("(src_addr = ? OR dst_addr = ?)", q.Addr.String(), q.Addr.String())
	}
	if q.Rule != "" {
		add("rule = ?", q.Rule)
	}
	if q.Node != "" {
		add("node = ?", q.Node)
	}
	return f
}

// Page adds keyset paging in the answer's order (time, id) after the
// flow before, stored at time t (read by the caller first, so that the
// condition leaves the indexes usable).
func (f *FlowFilter) Page(t, before int64) {
	f.Where = append(f.Where, "(time < ? OR (time = ? AND id < ?))")
	f.Args = append(f.Args, t, t, before)
}

// Query is the flow query's SELECT with f and q's limit, newest first.
func (f *FlowFilter) Query(q store.FlowQuery) string {
	query := "SELECT id, " + FlowColumns + " FROM flows"
	if len(f.Where) > 0 {
		query += " WHERE " + strings.Join(f.Where, " AND ")
	}
	query += " ORDER BY time DESC, id DESC"
	if q.Limit > 0 {
		query += " LIMIT " + strconv.Itoa(q.Limit)
	}
	return query
}

// AuditColumns are the audit table's columns, in the order AuditArgs
// gives and ScanAudit reads them.
const AuditColumns = "id, time, actor_kind, actor, action, object, before_hash, after_hash, source, detail, prev_hash, hash"

// AuditArgs are a record's values for AuditColumns.
func AuditArgs(r *store.AuditRecord) []any {
	return []any{int64(r.ID), Nanos(r.Time), r.ActorKind, r.Actor, r.Action, r.Object, r.Before, r.After, r.Source, r.Detail, r.Prev, r.Hash}
}

// CheckAudit checks every record before any is chained (store.AuditRecord.Check).
func CheckAudit(recs []store.AuditRecord) error {
	for i := range recs {
		if err := recs[i].Check(); err != nil {
			return err
		}
	}
	return nil
}

// The statements AppendAudit's callers run, with ? placeholders: the
// newest record, and one record's insert (AuditArgs).
const (
	LastAuditSQL   = "SELECT " + AuditColumns + " FROM audit ORDER BY id DESC LIMIT 1"
	InsertAuditSQL = "INSERT INTO audit (" + AuditColumns + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

// AppendAudit chains recs after the newest stored record (last: its
// row of LastAuditSQL, or an error for which empty reports true when
// there is none) and inserts them in order (insert: InsertAuditSQL with
// the record's AuditArgs). It returns the records as stored. The caller
// runs it in one transaction that keeps the newest record the newest
// until commit (the store's write lock, or an advisory lock).
func AppendAudit(last func() (store.AuditRecord, error), empty func(error) bool, insert func(args []any) error,
	recs []store.AuditRecord) ([]store.AuditRecord, error) {
	var prev *store.AuditRecord
	newest, err := last()
	switch {
	case err == nil:
		prev = &newest
	case !empty(err):
		return nil, fmt.Errorf("read the last audit record: %w", err)
	}
	out := make([]store.AuditRecord, len(recs))
	for i := range recs {
		r := recs[i]
		r.Chain(prev)
		if err := insert(AuditArgs(&r)); err != nil {
			return nil, fmt.Errorf("append audit record: %w", err)
		}
		out[i] = r
		prev = &out[i]
	}
	return out, nil
}

// ScanAudit reads one row of AuditColumns.
func ScanAudit(row interface{ Scan(...any) error }) (store.AuditRecord, error) {
	var r store.AuditRecord
	var id, t int64
	err := row.Scan(&id, &t, &r.ActorKind, &r.Actor, &r.Action, &r.Object, &r.Before, &r.After, &r.Source, &r.Detail, &r.Prev, &r.Hash)
	r.ID, r.Time = uint64(id), FromNanos(t)
	return r, err
}

// AuditQuery is the SQL of an audit query: "SELECT AuditColumns FROM
// audit WHERE ... ORDER BY id ... LIMIT ...", with ? placeholders, and
// its arguments. A prefix filter (an Action ending in ".", an Object in
// "/") is a range of the bytewise order both stores' text compares in,
// so that it uses the index and needs no LIKE escaping.
func AuditQuery(q store.AuditQuery) (string, []any) {
	var where []string
	var args []any
	add := func(cond string, a ...any) { where = append(where, cond); args = append(args, a...) }
	if !q.Since.IsZero() {
		add("time >= ?", Nanos(q.Since))
	}
	if !q.Until.IsZero() {
		add("time < ?", Nanos(q.Until))
	}
	if q.Actor != "" {
		add("actor = ?", q.Actor)
	}
	if q.ActorKind != "" {
		add("actor_kind = ?", q.ActorKind)
	}
	match := func(col, v, sep string) {
		if v == "" {
			return
		}
		if strings.HasSuffix(v, sep) {
			// sep is "." or "/": the next byte bounds the prefix.
			add(col+" >= ? AND "+col+" < ?", v, v[:len(v)-1]+string(rune(sep[0]+1)))
			return
		}
		add(col+" = ?", v)
	}
	match("action", q.Action, ".")
	match("object", q.Object, "/")
	if q.BeforeID != 0 {
		add("id < ?", int64(q.BeforeID))
	}
	if q.AfterID != 0 {
		add("id > ?", int64(q.AfterID))
	}
	sql := "SELECT " + AuditColumns + " FROM audit"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	if q.OldestFirst {
		sql += " ORDER BY id"
	} else {
		sql += " ORDER BY id DESC"
	}
	if q.Limit > 0 {
		sql += " LIMIT " + strconv.Itoa(q.Limit)
	}
	return sql, args
}
