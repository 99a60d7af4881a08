package online

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
	"gopkg.in/yaml.v3"
)

// eventController starts an in-process controller API, points
// EGCTL_CONFIG at its admin.conf, and returns its store for the test to
// put flows and alerts in.
func eventController(t *testing.T) *controllertest.Controller {
	t.Helper()
	conf, st := controllerWithStore(t)
	t.Setenv(envConfig, conf)
	return st
}

// The keys of a flow record (docs/ARCHITECTURE.md, "Flow record").
var flowKeys = controllertest.FlowRecordKeys

func TestOnlineFlows(t *testing.T) {
	st := eventController(t)
	if code, out, errs := egctl(t, "flows", "-o", "json"); code != exitOK || out != "[]\n" {
		t.Errorf("flows -o json with none: exit %d, %q %s", code, out, errs)
	}

	// Times are minutes apart around now, far from the --since bound.
	now := time.Now().UTC().Truncate(time.Second)
	rec := func(ago time.Duration, src string, srcPort uint16, dst string, dstPort uint16, v ruleset.Verdict, rule string) flowrecord.Record {
		names := map[string]string{"10.0.0.1": "web-1", "10.0.0.2": "db-1"}
		return flowrecord.Record{Time: now.Add(-ago), Node: "node-b", Direction: ruleset.Ingress, Protocol: "TCP",
			SrcAddr: netip.MustParseAddr(src), SrcPort: srcPort, SrcWorkload: names[src], SrcIdentity: 7,
			DstAddr: netip.MustParseAddr(dst), DstPort: dstPort, DstWorkload: names[dst], DstIdentity: 9,
			Verdict: v, Rule: rule, Packets: 2, Bytes: 120, FirstSeen: now.Add(-ago - time.Second), LastSeen: now.Add(-ago)}
	}
	recs := []flowrecord.Record{
		rec(50*time.Minute, "10.0.0.1", 41000, "10.0.0.2", 5432, ruleset.VerdictAllowed, "shop/web-to-db"),
		rec(5*time.Minute, "10.9.9.9", 50000, "10.0.0.2", 22, ruleset.VerdictDenied, "default-deny"),
		rec(time.Minute, "fd00::9", 50001, "10.0.0.2", 22, ruleset.VerdictWouldDeny, "shop/no-ssh"),
	}
	// The first connection's final totals: 2 MB sent, 40 KiB back.
	closed := recs[0]
	closed.Time, closed.State = now.Add(-30*time.Second), flowrecord.StateClosed
	closed.Packets, closed.PacketsSent, closed.PacketsReceived = 2000, 1400, 600
	closed.Bytes, closed.BytesSent, closed.BytesReceived = 2_000_000+40960, 2_000_000, 40960
	for i := range recs {
		recs[i].State, recs[i].PacketsSent, recs[i].BytesSent = flowrecord.StateNew, recs[i].Packets, recs[i].Bytes
	}
	recs = append(recs, closed)
	st.InsertFlows(recs...)

	code, out, errs := egctl(t, "flows", "-o", "json")
	var raw []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &raw) != nil || len(raw) != 4 {
		t.Fatalf("flows -o json: exit %d\n%s\n%s", code, out, errs)
	}
	for _, r := range raw {
		if got := slices.Sorted(maps.Keys(r)); !slices.Equal(got, slices.Sorted(slices.Values(flowKeys))) {
			t.Errorf("flow keys %v, want exactly %v", got, flowKeys)
		}
	}
	var back []flowrecord.Record
	if err := json.Unmarshal([]byte(out), &back); err != nil || len(back) != 4 {
		t.Fatalf("flows -o json as records: %v", err)
	}
	// -o yaml: the same objects, the same keys.
	code, ys, errs := egctl(t, "flows", "-o", "yaml")
	var fromYAML []map[string]any
	if code != exitOK || yaml.Unmarshal([]byte(ys), &fromYAML) != nil || len(fromYAML) != 4 {
		t.Fatalf("flows -o yaml: exit %d\n%s\n%s", code, ys, errs)
	}
	for i, r := range fromYAML {
		if got := slices.Sorted(maps.Keys(r)); !slices.Equal(got, slices.Sorted(slices.Values(flowKeys))) {
			t.Errorf("yaml flow keys %v, want exactly %v", got, flowKeys)
		}
		if fmt.Sprint(r["srcPort"]) != fmt.Sprint(raw[i]["srcPort"]) || r["rule"] != raw[i]["rule"] {
			t.Errorf("yaml flow %d: %v, json %v", i, r, raw[i])
		}
	}
	for i, r := range back { // newest first, unchanged by the round trip
		want := []flowrecord.Record{closed, recs[2], recs[1], recs[0]}[i]
		if !r.Time.Equal(want.Time) || r.SrcAddr != want.SrcAddr || r.SrcPort != want.SrcPort || r.Verdict != want.Verdict ||
			r.Rule != want.Rule || r.DstWorkload != want.DstWorkload || r.SrcIdentity != want.SrcIdentity || r.Bytes != want.Bytes ||
			r.State != want.State || r.BytesSent != want.BytesSent || r.BytesReceived != want.BytesReceived ||
			r.PacketsSent != want.PacketsSent || r.PacketsReceived != want.PacketsReceived {
			t.Errorf("flow %d: %+v, want %+v", i, r, want)
		}
	}

	code, out, _ = egctl(t, "flows", "--verdict", "denied", "--port", "22", "--protocol", "tcp", "--workload", "db-1", "-o", "json")
	if code != exitOK || json.Unmarshal([]byte(out), &back) != nil || len(back) != 1 || back[0].SrcPort != 50000 {
		t.Errorf("flows --verdict denied --port 22: exit %d\n%s", code, out)
	}

	code, out, _ = egctl(t, "flows", "--since", "10m")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK || len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "TIME NODE DIR PROTO SOURCE DESTINATION PORT VERDICT RULE STATE PACKETS SENT RECEIVED" {
		t.Fatalf("flows --since 10m: exit %d\n%s", code, out)
	}
	for i, want := range [][]string{
		{"node-b", "ingress", "TCP", "web-1:41000", "db-1", "5432", "allowed", "shop/web-to-db", "closed", "2000", "1.9MiB", "40.0KiB"},
		{"node-b", "ingress", "TCP", "[fd00::9]:50001", "db-1", "22", "would-deny", "shop/no-ssh", "new", "2", "120B", "0B"},
		{"node-b", "ingress", "TCP", "10.9.9.9:50000", "db-1", "22", "denied", "default-deny", "new", "2", "120B", "0B"},
	} {
		if f := strings.Fields(lines[i+1]); len(f) != 14 || !slices.Equal(f[2:], want) {
			t.Errorf("row %d: %q, want date, time and %q", i, lines[i+1], want)
		}
	}
}

func TestFlowsBadFlags(t *testing.T) {
	// Mistakes are caught before any call: no controller is configured.
	t.Setenv(envConfig, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--port", "70000"}, `egctl flows: --port: "70000" is not a port (1-65535)`},
		{[]string{"--verdict", "deny"}, `egctl flows: --verdict: "deny" is not one of allowed, denied, would-deny`},
		{[]string{"--since", "10x"}, `egctl flows: --since: "10x" is neither a duration like 10m nor an RFC 3339 time`},
		{[]string{"--addr", "host-1"}, `egctl flows: --addr: "host-1" is not an IP address`},
		{[]string{"--protocol", "SCTPX"}, `egctl flows: --protocol: "SCTPX" is not one of TCP, UDP, ICMP, ICMPv6`},
		{[]string{"--limit", "10001"}, `egctl flows: --limit: "10001" is not a number from 1 to 10000`},
		{[]string{"--workload", ""}, `egctl flows: --workload: "" is empty`},
		{[]string{"--since", "5m", "--until", "10m"}, `egctl flows: --until: "10m"`},
		{[]string{"--verdikt", "denied"}, "flag provided but not defined: -verdikt"},
		{[]string{"db-1"}, `unexpected arguments ["db-1"]`},
		{[]string{"-o", "xml"}, `-o "xml": want one of [table json yaml]`},
	} {
		code, _, errs := egctl(t, append([]string{"flows"}, c.args...)...)
		if code != exitBadInput || !strings.Contains(errs, c.want) {
			t.Errorf("flows %q: exit %d, stderr %s\nwant exit %d with %q", c.args, code, errs, exitBadInput, c.want)
		}
	}
	// Good flags get as far as the missing controller.
	if code, _, errs := egctl(t, "flows", "--port", "22", "--since", "2025-06-01T08:00:00+02:00"); code != exitRemote || !strings.Contains(errs, "no controller configured") {
		t.Errorf("good flags: exit %d, %s", code, errs)
	}
}
