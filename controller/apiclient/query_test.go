package apiclient

import (
	"net/netip"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func TestParseFlowFilter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	v := url.Values{"verdict": {"would-deny"}, "port": {"22"}, "protocol": {"icmpv6"}, "addr": {"::ffff:10.1.2.3"},
		"since": {"7d"}, "until": {"2025-06-01T11:00:00+02:00"}, "workload": {"db-1"}}
	f, err := ParseFlowFilter(v, now)
	if err != nil {
		t.Fatal(err)
	}
	want := FlowFilter{Verdict: ruleset.VerdictWouldDeny, Port: 22, Protocol: "ICMPv6", Workload: "db-1",
		Addr: netip.MustParseAddr("10.1.2.3"), Since: now.Add(-7 * 24 * time.Hour), Until: now.Add(-3 * time.Hour), Limit: DefaultListLimit}
	if !f.Since.Equal(want.Since) || !f.Until.Equal(want.Until) {
		t.Errorf("times %v %v, want %v %v", f.Since, f.Until, want.Since, want.Until)
	}
	f.Since, f.Until, want.Since, want.Until = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if f != want {
		t.Errorf("got %+v\nwant %+v", f, want)
	}
	if f, err := ParseFlowFilter(url.Values{}, now); err != nil || f != (FlowFilter{Limit: DefaultListLimit}) {
		t.Errorf("empty query: %+v %v", f, err)
	}
	// Every mistake is reported, unknown parameters first.
	_, err = ParseFlowFilter(url.Values{"limit": {"0"}, "zz": {"1"}, "port": {"x"}}, now)
	if es, ok := err.(ParamErrors); !ok || len(es) != 3 || es[0].Param != "zz" || es[1].Param != "port" || es[2].Param != "limit" {
		t.Errorf("errors: %v", err)
	}
}

func TestParseProtocol(t *testing.T) {
	for in, want := range map[string]string{"tcp": "TCP", "Udp": "UDP", "ICMP": "ICMP", "icmpv6": "ICMPv6",
		"proto-6": "TCP", "proto-132": "proto-132", "PROTO-0": "proto-0"} {
		if got, err := ParseProtocol(in); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ANY", "sctp", "proto-256", "proto-", "6"} {
		if got, err := ParseProtocol(in); err == nil {
			t.Errorf("%s: accepted as %q", in, got)
		}
	}
}

func TestParseAlertFilter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f, err := ParseAlertFilter(url.Values{"state": {"resolved, open", "open"}, "limit": {"10000"}, "since": {"90m"}}, now)
	if err != nil || !slices.Equal(f.States, []string{"open", "resolved"}) || f.Limit != 10000 || !f.Since.Equal(now.Add(-90*time.Minute)) {
		t.Errorf("%+v %v", f, err)
	}
	if _, err := ParseAlertFilter(url.Values{"state": {"open,"}}, now); err == nil || err.Error() != `state: "" is not one of open, acknowledged, resolved` {
		t.Errorf("trailing comma: %v", err)
	}
}
