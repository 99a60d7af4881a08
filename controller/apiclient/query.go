package apiclient

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// The query parameters of GET /api/v1/flows and GET /api/v1/alerts. The
// server parses them with these functions and egctl checks its flags with
// the same ones before it calls, so a mistake gets the same message
// whichever side catches it. Every mistake is refused, unknown parameters
// included: a typo must not silently widen a query.

// Listing limits: the number of flows or alerts answered when the query
// gives no limit, and the most a query may ask for.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// Alert states a query may select.
var AlertStates = []string{"open", "acknowledged", "resolved"}

// FlowFilter is the query of GET /api/v1/flows. Zero fields select
// everything.
type FlowFilter struct {
	Verdict ruleset.Verdict
	// Port is the destination port; 0 selects every port.
	Port uint16
	// Protocol is as in flow records: TCP, UDP, ICMP, ICMPv6 or proto-N.
	Protocol string
	// Workload matches either end's workload, Addr either end's address.
	Workload string
	Addr     netip.Addr
	Rule     string
	Node     string
	// Since and Until bound the record time: Since <= time < Until.
	Since, Until time.Time
	Limit        int
	// Before is a page's last flow id: the flows after it, newest first
	// (0: from the newest).
	Before int64
	// LabelKey and LabelValue (label=k=v) select flows with either end a
	// workload that has the label.
	LabelKey, LabelValue string
	// Format is "" (a JSON array of at most Limit flows), "csv" or
	// "jsonl" (the whole filtered result, streamed, up to MaxExportRows).
	Format string
}

// MaxExportRows bounds an export (format=csv or jsonl) of GET
// /api/v1/flows.
const MaxExportRows = 1000000

// AlertFilter is the query of GET /api/v1/alerts.
type AlertFilter struct {
	// States selects alerts in any of these states; empty selects all.
	States []string
	Rule   string
	// Since selects alerts last seen at or after it.
	Since time.Time
	Limit int
}

var (
	flowParams  = []string{"verdict", "port", "protocol", "workload", "addr", "rule", "node", "since", "until", "limit", "before", "label", "format"}
	rangeParams = []string{"since", "until"}
	alertParams = []string{"state", "rule", "since", "limit"}
)

// ParamError is a query parameter refused: its message names the
// parameter, the value, and what is expected.
type ParamError struct {
	Param string
	Msg   string
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Msg }

// ParamErrors are every refused parameter of one query, in a stable order.
type ParamErrors []*ParamError

func (es ParamErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// query reads one query's parameters and collects what is wrong with
// them.
type query struct {
	v    url.Values
	errs ParamErrors
}

func (q *query) fail(param, format string, args ...any) {
	q.errs = append(q.errs, &ParamError{Param: param, Msg: fmt.Sprintf(format, args...)})
}

// unknown refuses parameters not in known.
func (q *query) unknown(known []string) {
	var names []string
	for name := range q.v {
		if !slices.Contains(known, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		q.fail(name, "unknown parameter (known: %s)", strings.Join(known, ", "))
	}
}

// single returns a parameter given at most once, and whether it was given
// (an empty value is refused: leaving the parameter out says "any").
func (q *query) single(name string) (string, bool) {
	vals := q.v[name]
	switch {
	case len(vals) == 0:
		return "", false
	case len(vals) > 1:
		q.fail(name, "given %d times (%s); give it once", len(vals), quoteAll(vals))
		return "", false
	case strings.TrimSpace(vals[0]) == "":
		q.fail(name, "%q is empty; to select any, leave it out", vals[0])
		return "", false
	}
	return vals[0], true
}

func quoteAll(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

func (q *query) limit() int {
	s, ok := q.single("limit")
	if !ok {
		return DefaultListLimit
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxListLimit {
		q.fail("limit", "%q is not a number from 1 to %d", s, MaxListLimit)
		return DefaultListLimit
	}
	return n
}

// time reads a time given as an RFC 3339 time or as a duration before now
// ("10m", "2h", "7d").
func (q *query) time(name string, now time.Time) time.Time {
	s, ok := q.single(name)
	if !ok {
		return time.Time{}
	}
	if d, err := parseAgo(s); err == nil {
		if d <= 0 {
			q.fail(name, "%q is not a positive duration", s)
			return time.Time{}
		}
		return now.Add(-d)
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t
	}
	msg := "is neither a duration like 10m nor an RFC 3339 time like 2006-01-02T15:04:05Z"
	if strings.Contains(s, " ") {
		msg += " (a + in a URL must be written %%2B)"
	}
	q.fail(name, "%q "+msg, s)
	return time.Time{}
}

// parseAgo parses a Go duration, or a whole number of days ("7d").
func parseAgo(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 100*365 {
			return 0, fmt.Errorf("bad day count %q", days)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

func (q *query) name(name string) string {
	s, _ := q.single(name)
	return s
}

func (q *query) err() error {
	if len(q.errs) == 0 {
		return nil
	}
	return q.errs
}

// ParseFlowFilter parses the query of GET /api/v1/flows; durations in
// since and until count back from now. The error, if any, is ParamErrors.
func ParseFlowFilter(v url.Values, now time.Time) (FlowFilter, error) {
	q := &query{v: v}
	q.unknown(flowParams)
	var f FlowFilter
	if s, ok := q.single("verdict"); ok {
		if err := f.Verdict.UnmarshalText([]byte(s)); err != nil {
			q.fail("verdict", "%q is not one of allowed, denied, would-deny", s)
		}
	}
	if s, ok := q.single("port"); ok {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			q.fail("port", "%q is not a port (1-65535)", s)
		}
		f.Port = uint16(n)
	}
	if s, ok := q.single("protocol"); ok {
		var err error
		if f.Protocol, err = ParseProtocol(s); err != nil {
			q.fail("protocol", "%v", err)
		}
	}
	f.Workload, f.Rule, f.Node = q.name("workload"), q.name("rule"), q.name("node")
	if s, ok := q.single("addr"); ok {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			q.fail("addr", "%q is not an IP address", s)
		}
		f.Addr = a.Unmap()
	}
	f.Since, f.Until = q.time("since", now), q.time("until", now)
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		q.fail("until", "%q (%s) is not after since %q (%s)", v.Get("until"), f.Until.Format(time.RFC3339),
			v.Get("since"), f.Since.Format(time.RFC3339))
	}
	f.Limit = q.limit()
	if s, ok := q.single("before"); ok {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			q.fail("before", "%q is not a flow id (a positive integer)", s)
		}
		f.Before = n
	}
	if s, ok := q.single("label"); ok {
		k, val, found := strings.Cut(s, "=")
		if !found || k == "" {
			q.fail("label", "%q: want key=value", s)
		}
		f.LabelKey, f.LabelValue = k, val
	}
	if s, ok := q.single("format"); ok {
		if s != "csv" && s != "jsonl" && s != "json" {
			q.fail("format", "%q: want json, csv or jsonl", s)
		}
		if s != "json" {
			f.Format = s
		}
	}
	return f, q.err()
}

// ParseTimeRange parses the query of the dashboard's views over a time
// range (GET /api/v1/map, /api/v1/policies/{name}/detail): since and
// until, each an RFC 3339 time or a duration before now; since defaults
// to def before now, until to now. Other parameters are refused.
func ParseTimeRange(v url.Values, now time.Time, def time.Duration) (since, until time.Time, err error) {
	q := &query{v: v}
	q.unknown(rangeParams)
	since, until = q.time("since", now), q.time("until", now)
	if since.IsZero() {
		since = now.Add(-def)
	}
	if until.IsZero() {
		until = now
	}
	if !until.After(since) {
		q.fail("until", "%s is not after since %s", until.Format(time.RFC3339), since.Format(time.RFC3339))
	}
	return since, until, q.err()
}

// ParseProtocol returns a protocol as flow records name it (TCP, UDP,
// ICMP, ICMPv6, proto-N), whatever the case it is written in.
func ParseProtocol(s string) (string, error) {
	for _, p := range []ruleset.Protocol{ruleset.ProtocolTCP, ruleset.ProtocolUDP, ruleset.ProtocolICMP, ruleset.ProtocolICMPv6} {
		if strings.EqualFold(s, p.String()) {
			return p.String(), nil
		}
	}
	if n, ok := strings.CutPrefix(strings.ToLower(s), "proto-"); ok {
		if v, err := strconv.ParseUint(n, 10, 8); err == nil {
			return flowrecord.ProtocolName(ruleset.Protocol(v)), nil // proto-6 is TCP
		}
	}
	return "", fmt.Errorf("%q is not one of TCP, UDP, ICMP, ICMPv6, proto-N (N 0-255)", s)
}

// ParseAlertFilter parses the query of GET /api/v1/alerts: state may be
// repeated or a comma-separated list. The error, if any, is ParamErrors.
func ParseAlertFilter(v url.Values, now time.Time) (AlertFilter, error) {
	q := &query{v: v}
	q.unknown(alertParams)
	var f AlertFilter
	var states []string
	for _, val := range v["state"] {
		for s := range strings.SplitSeq(val, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(AlertStates, s) {
				q.fail("state", "%q is not one of %s", s, strings.Join(AlertStates, ", "))
				continue
			}
			states = append(states, s)
		}
	}
	for _, s := range AlertStates { // a stable order, without repeats
		if slices.Contains(states, s) {
			f.States = append(f.States, s)
		}
	}
	f.Rule = q.name("rule")
	f.Since = q.time("since", now)
	f.Limit = q.limit()
	return f, q.err()
}

// AuditFilter is the query of GET /api/v1/audit. Zero fields select
// everything.
type AuditFilter struct {
	// Since and Until bound the record time: Since <= time < Until.
	Since, Until time.Time
	// Actor is the actor's name exactly (a token id, a node name,
	// "kubernetes"); ActorKind its kind.
	Actor, ActorKind string
	// Action is one action, or every action it begins when it ends in
	// "." ("policy.").
	Action string
	// Object is one object, or every object it begins when it ends in
	// "/" ("Policy/").
	Object string
	// Before and After page by record id: ids below Before (newest
	// first, the default order) or above After (with Oldest).
	Before, After uint64
	// Oldest orders records oldest first (order=oldest).
	Oldest bool
	Limit  int
}

var auditParams = []string{"since", "until", "actor", "actorKind", "action", "object", "before", "after", "order", "limit"}

// AuditActorKinds are the actor kinds a query may select.
var AuditActorKinds = []string{"admin-token", "certificate", "node", "kubernetes", "controller", "anonymous"}

// ParseAuditFilter parses the query of GET /api/v1/audit. The error, if
// any, is ParamErrors.
func ParseAuditFilter(v url.Values, now time.Time) (AuditFilter, error) {
	q := &query{v: v}
	q.unknown(auditParams)
	var f AuditFilter
	f.Since = q.time("since", now)
	f.Until = q.time("until", now)
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		q.fail("until", "%s is not after since (%s)", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	f.Actor = q.name("actor")
	if f.ActorKind = q.name("actorKind"); f.ActorKind != "" && !slices.Contains(AuditActorKinds, f.ActorKind) {
		q.fail("actorKind", "%q is not one of %s", f.ActorKind, strings.Join(AuditActorKinds, ", "))
	}
	f.Action = q.name("action")
	f.Object = q.name("object")
	id := func(name string) uint64 {
		s, ok := q.single(name)
		if !ok {
			return 0
		}
		n, err := strconv.ParseUint(s, 10, 63)
		if err != nil || n == 0 {
			q.fail(name, "%q is not a record id (a number from 1)", s)
		}
		return n
	}
	f.Before, f.After = id("before"), id("after")
	switch order, _ := q.single("order"); order {
	case "", "newest":
	case "oldest":
		f.Oldest = true
	default:
		q.fail("order", "%q is not newest or oldest", order)
	}
	f.Limit = q.limit()
	return f, q.err()
}

// Values is the query that asks for f (egctl builds its call with it).
func (f AuditFilter) Values() url.Values {
	v := url.Values{}
	set := func(name, val string) {
		if val != "" {
			v.Set(name, val)
		}
	}
	if !f.Since.IsZero() {
		v.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	set("actor", f.Actor)
	set("actorKind", f.ActorKind)
	set("action", f.Action)
	set("object", f.Object)
	if f.Before != 0 {
		v.Set("before", strconv.FormatUint(f.Before, 10))
	}
	if f.After != 0 {
		v.Set("after", strconv.FormatUint(f.After, 10))
	}
	if f.Oldest {
		v.Set("order", "oldest")
	}
	if f.Limit != 0 {
		v.Set("limit", strconv.Itoa(f.Limit))
	}
	return v
}
