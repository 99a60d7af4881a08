package alert_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// matchCase: the flows a policy's rules must, and must not, alert on.
type matchCase struct {
	name  string
	rules string // AlertRule documents
	flow  flowrecord.Record
	want  []string // the rules that raise an alert, sorted
}

// runMatchCases observes each case's flow alone, on a fresh store, and
// checks which rules raised an alert, both in the Pending and in the
// store.
func runMatchCases(t *testing.T, cases []matchCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, c.rules, alert.Builtin{}, 0)
			p := h.observe(t0, c.flow)
			var raised []string
			for r, n := range p.Raised {
				if n != 1 {
					t.Errorf("rule %s raised %d alerts for one flow", r, n)
				}
				raised = append(raised, r)
			}
			slices.Sort(raised)
			var stored []string
			for _, a := range h.alerts() {
				stored = append(stored, a.Rule)
				if a.Count != 1 || a.State != store.AlertOpen {
					t.Errorf("alert of %s: count %d, state %s", a.Rule, a.Count, a.State)
				}
			}
			slices.Sort(stored)
			if !slices.Equal(raised, c.want) || !slices.Equal(stored, c.want) {
				t.Errorf("raised %q, stored %q, want %q", raised, stored, c.want)
			}
		})
	}
}

func TestRuleMatching(t *testing.T) {
	tcp22 := alertRule("r", "severity: warning\nmatch: {protocol: TCP, ports: [22]}")
	anyProto := alertRule("r", "severity: warning")
	udpDNS := alertRule("r", "severity: warning\nmatch: {protocol: UDP, ports: [53]}")
	icmpv6 := alertRule("r", "severity: warning\nmatch: {protocol: ICMPv6}")
	ports := alertRule("r", "severity: warning\nmatch: {ports: [22, 2222]}")
	allowedOnly := alertRule("r", "severity: info\nmatch: {verdicts: [allowed]}")
	allowedAndDenied := alertRule("r", "severity: info\nmatch: {verdicts: [allowed, denied]}")
	deniedOnly := alertRule("r", "severity: info\nmatch: {verdicts: [denied]}")
	fromWeb := alertRule("r", `
severity: warning
match:
  from: [{selector: {role: web}}]`)
	fromWebProd := alertRule("r", `
severity: warning
match:
  from: [{selector: {role: web, env: prod}}]`)
	toManaged := alertRule("r", `
severity: warning
match:
  to: [{selector: {}}]`)
	fromManaged := alertRule("r", `
severity: warning
match:
  from: [{selector: {}}]`)
	fromAdmins := alertRule("r", `
severity: critical
match:
  from: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]`)
	fromWorld := alertRule("r", `
severity: warning
match:
  from: [{world: true}]`)
	toWorld := alertRule("r", `
severity: warning
match:
  verdicts: [denied, would-deny, allowed]
  from: [{selector: {role: db}}]
  to: [{world: true}]`)
	fromHost := alertRule("r", `
severity: warning
match:
  from: [{host: true}]`)
	twoPeers := alertRule("r", `
severity: warning
match:
  from: [{selector: {role: bastion}}, {cidr: 203.0.113.0/24}]
  to: [{selector: {role: db}}]`)
	noEnds := alertRule("r", "severity: warning\nmatch: {protocol: TCP}")
	two := alertRule("ssh", "severity: critical\nmatch: {protocol: TCP, ports: [22]}") +
		alertRule("to-db", "severity: warning\nmatch:\n  to: [{selector: {role: db}}]") +
		alertRule("from-web", "severity: warning\nmatch:\n  from: [{selector: {role: web}}]")

	r := []string{"r"}
	icmpv6Flow := flow(web1v6, "fd00:10::99", 0, proto("ICMPv6"))
	runMatchCases(t, []matchCase{
		// Protocol and ports.
		{"TCP rule, TCP flow", tcp22, flow(outside, db1, 22), r},
		{"TCP rule, UDP flow", tcp22, flow(outside, db1, 22, proto("UDP")), nil},
		{"TCP rule, other port", tcp22, flow(outside, db1, 23), nil},
		{"UDP rule, UDP flow", udpDNS, flow(web1, db1, 53, proto("UDP")), r},
		{"UDP rule, TCP flow", udpDNS, flow(web1, db1, 53), nil},
		{"ICMPv6 rule, ICMPv6 flow", icmpv6, icmpv6Flow, r},
		{"ICMPv6 rule, ICMP flow", icmpv6, flow(web1, outside, 0, proto("ICMP")), nil},
		{"any protocol, ICMP flow", anyProto, flow(web1, outside, 0, proto("ICMP")), r},
		{"any protocol, unnamed protocol", anyProto, flow(web1, outside, 0, proto("proto-132")), r},
		{"port list, first", ports, flow(outside, db1, 22), r},
		{"port list, second", ports, flow(outside, db1, 2222, proto("UDP")), r},
		{"port list, other", ports, flow(outside, db1, 222), nil},
		{"port list, ICMP", ports, flow(outside, db1, 0, proto("ICMP")), nil},

		// Verdicts: denied and would-deny unless the rule lists others.
		{"default verdicts, denied", anyProto, flow(outside, db1, 22), r},
		{"default verdicts, would-deny", anyProto, flow(outside, db1, 22, verdict(ruleset.VerdictWouldDeny)), r},
		{"default verdicts, allowed", anyProto, flow(outside, db1, 22, verdict(ruleset.VerdictAllowed)), nil},
		{"allowed listed, allowed", allowedOnly, flow(web1, db1, 5432, verdict(ruleset.VerdictAllowed)), r},
		{"allowed listed, denied", allowedOnly, flow(web1, db1, 5432), nil},
		{"allowed listed, would-deny", allowedOnly, flow(web1, db1, 5432, verdict(ruleset.VerdictWouldDeny)), nil},
		{"allowed and denied, denied", allowedAndDenied, flow(web1, db1, 5432), r},
		{"allowed and denied, would-deny", allowedAndDenied, flow(web1, db1, 5432, verdict(ruleset.VerdictWouldDeny)), nil},
		{"denied only, would-deny", deniedOnly, flow(web1, db1, 5432, verdict(ruleset.VerdictWouldDeny)), nil},

		// Selectors: label equality, all pairs; {} any managed workload.
		{"from selector, matching source", fromWeb, flow(web2, db1, 5432), r},
		{"from selector, other source", fromWeb, flow(db1, web1, 80), nil},
		{"from selector, unmanaged source", fromWeb, flow(outside, web1, 80), nil},
		{"two-label selector, both match", fromWebProd, flow(web1, db1, 5432), r},
		{"two-label selector, one matches", fromWebProd, flow(web2, db1, 5432), nil},
		{"selector, workload found from the address", fromWebProd, flow(web1, db1, 5432, noWorkloadNames), r},
		{"selector, IPv4-mapped address", fromWebProd, flow("::ffff:"+web1, db1, 5432, noWorkloadNames), r},
		{"selector, IPv6 address", fromWebProd, flow(web1v6, "fd00:10::99", 443, noWorkloadNames), r},
		{"empty selector to, managed destination", toManaged, flow(outside, db1, 22), r},
		{"empty selector to, host-mode workload", toManaged, flow(outside, bastion, 22), r},
		{"empty selector to, unmanaged destination", toManaged, flow(web1, outside, 443), nil},
		{"empty selector to, host destination", toManaged, flow(web1, hostIP, 10250), nil},
		{"empty selector from, unmanaged source", fromManaged, flow(outside, db1, 22), nil},
		{"empty selector from, managed source", fromManaged, flow(web2, db1, 22), r},

		// CIDR with except.
		{"cidr, inside", fromAdmins, flow(admin, db1, 22), r},
		{"cidr, in the except", fromAdmins, flow(guest, db1, 22), nil},
		{"cidr, outside", fromAdmins, flow(outside, db1, 22), nil},
		{"cidr, IPv4-mapped source", fromAdmins, flow("::ffff:"+admin, db1, 22), r},
		{"cidr, destination in it", fromAdmins, flow(db1, admin, 22), nil},

		// world: ends that are neither managed nor the host.
		{"world from, unmanaged", fromWorld, flow(outside, db1, 22), r},
		{"world from, managed", fromWorld, flow(web1, db1, 22), nil},
		{"world from, managed, named by address only", fromWorld, flow(web1, db1, 22, noWorkloadNames), nil},
		{"world from, host", fromWorld, flow(hostIP, db1, 22), nil},
		{"world to, unmanaged", toWorld, flow(db1, outside, 443, verdict(ruleset.VerdictAllowed)), r},
		{"world to, managed", toWorld, flow(db1, web1, 443), nil},

		// host: identity 2.
		{"host from, host", fromHost, flow(hostIP, db1, 22), r},
		{"host from, unmanaged", fromHost, flow(outside, db1, 22), nil},
		{"host from, managed", fromHost, flow(web1, db1, 22), nil},
		{"host from, host to", fromHost, flow(db1, hostIP, 22), nil},

		// Several peers: any of them.
		{"two peers, first", twoPeers, flow(bastion, db1, 22), r},
		{"two peers, second", twoPeers, flow(outside, db1, 22), r},
		{"two peers, neither", twoPeers, flow(admin, db1, 22), nil},
		{"two peers, wrong destination", twoPeers, flow(bastion, web1, 22), nil},

		// No from, no to: any peers, managed or not.
		{"no ends, unmanaged to unmanaged", noEnds, flow(admin, outside, 443), r},
		{"no ends, host to managed", noEnds, flow(hostIP, db1, 22), r},
		{"no ends, managed to managed", noEnds, flow(web1, db1, 22), r},
		{"no ends, still the protocol", noEnds, flow(web1, db1, 53, proto("UDP")), nil},

		// Each matching rule raises its own alert.
		{"three rules", two, flow(web1, db1, 22), []string{"from-web", "ssh", "to-db"}},
		{"two of three rules", two, flow(outside, db1, 22), []string{"ssh", "to-db"}},
		{"one of three rules", two, flow(web2, web1, 8080), []string{"from-web"}},
	})
}

func TestRuleExcept(t *testing.T) {
	fromBastion := alertRule("r", `
severity: critical
match:
  protocol: TCP
  ports: [22]
  to: [{selector: {}}]
except:
  - from: [{selector: {role: bastion}}]`)
	fromBastionToDB := alertRule("r", `
severity: critical
match:
  protocol: TCP
  ports: [22]
except:
  - from: [{selector: {role: bastion}}]
    to: [{selector: {role: db}}]`)
	toDB := alertRule("r", `
severity: critical
match: {protocol: TCP, ports: [22]}
except:
  - to: [{selector: {role: db}}]`)
	cidrs := alertRule("r", `
severity: critical
match: {protocol: TCP, ports: [22]}
except:
  - from: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
  - to: [{world: true}]
  - from: [{host: true}]
    to: [{selector: {env: prod}}]`)

	r := []string{"r"}
	runMatchCases(t, []matchCase{
		{"from: exempt source", fromBastion, flow(bastion, db1, 22), nil},
		{"from: other source", fromBastion, flow(web1, db1, 22), r},
		{"from: unmanaged source", fromBastion, flow(outside, db1, 22), r},
		{"from and to: both match", fromBastionToDB, flow(bastion, db1, 22), nil},
		{"from and to: other destination", fromBastionToDB, flow(bastion, web1, 22), r},
		{"from and to: other source", fromBastionToDB, flow(web1, db1, 22), r},
		{"to only: exempt destination, any source", toDB, flow(outside, db1, 22), nil},
		{"to only: exempt destination, managed source", toDB, flow(bastion, db1, 22), nil},
		{"to only: other destination", toDB, flow(outside, web1, 22), r},
		{"to only: source is the excepted workload", toDB, flow(db1, web1, 22), r},
		{"several: cidr", cidrs, flow(admin, web1, 22), nil},
		{"several: cidr's own except is not exempt", cidrs, flow(guest, web1, 22), r},
		{"several: world destination", cidrs, flow(web1, outside, 22), nil},
		{"several: host to prod", cidrs, flow(hostIP, db1, 22), nil},
		{"several: host to staging", cidrs, flow(hostIP, web2, 22), r},
		{"several: none", cidrs, flow(outside, web2, 22), r},
	})
}

func TestBuiltinDeniedRule(t *testing.T) {
	cases := []struct {
		name    string
		builtin alert.Builtin
		flows   []flowrecord.Record
		want    int // alerts
	}{
		{"off", alert.Builtin{}, []flowrecord.Record{flow(outside, db1, 22)}, 0},
		{"denied", alert.Builtin{Denied: true}, []flowrecord.Record{flow(outside, db1, 22)}, 1},
		{"denied, any protocol and ends", alert.Builtin{Denied: true}, []flowrecord.Record{
			flow(outside, db1, 22), flow(web1, outside, 0, proto("ICMP")), flow(hostIP, web2, 53, proto("UDP")),
			flow(admin, guest, 443), flow(web1v6, "fd00:10::99", 0, proto("ICMPv6")),
		}, 5},
		{"allowed", alert.Builtin{Denied: true}, []flowrecord.Record{flow(web1, db1, 5432, verdict(ruleset.VerdictAllowed))}, 0},
		{"would-deny", alert.Builtin{Denied: true}, []flowrecord.Record{flow(outside, db1, 22, verdict(ruleset.VerdictWouldDeny))}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, "", c.builtin, 0)
			p := h.observe(t0, c.flows...)
			as := h.alerts()
			if len(as) != c.want || p.Raised[alert.BuiltinDeniedRule] != c.want {
				t.Fatalf("%d alerts, raised %v; want %d", len(as), p.Raised, c.want)
			}
			for _, a := range as {
				if a.Rule != alert.BuiltinDeniedRule || a.Severity != "warning" || a.Window != policy.DefaultAlertWindow ||
					a.Verdict != "denied" || len(a.Notify) != 0 {
					t.Errorf("builtin alert: %+v", a)
				}
			}
			if p.Deliveries != 0 {
				t.Errorf("%d deliveries without webhooks", p.Deliveries)
			}
		})
	}

	// Its settings, next to an operator's rule.
	b := alert.Builtin{Denied: true, Severity: policy.SeverityCritical, Window: time.Minute, Notify: []string{"security-team", "gone"}}
	h := newHarness(t, sshRule, b, 0)
	if got := h.e.Policy().Rules(); !slices.Equal(got, []string{"unexpected-ssh", alert.BuiltinDeniedRule}) {
		t.Errorf("rules: %q", got)
	}
	h.observe(t0, flow(outside, db1, 22), flow(outside, web1, 80))
	as := h.alerts()
	var builtin []store.Alert
	for _, a := range as {
		if a.Rule == alert.BuiltinDeniedRule {
			builtin = append(builtin, a)
		}
	}
	if len(as) != 3 || len(builtin) != 2 {
		t.Fatalf("alerts: %+v", as)
	}
	for _, a := range builtin {
		if a.Severity != "critical" || a.Window != time.Minute || !slices.Equal(a.Notify, []string{"security-team", "gone"}) {
			t.Errorf("builtin alert: %+v", a)
		}
	}
	// Its window is its own: a repeat 2 minutes later is a new builtin
	// alert but the same unexpected-ssh one.
	later := t0.Add(2 * time.Minute)
	p := h.observe(later, flow(outside, db1, 22, sport(40001), func(r *flowrecord.Record) { r.FirstSeen, r.LastSeen = later, later }))
	if p.Raised[alert.BuiltinDeniedRule] != 1 || p.Raised["unexpected-ssh"] != 0 {
		t.Errorf("repeat after the builtin window: raised %v", p.Raised)
	}
	// An unknown webhook still gets its delivery queued (the deliverer
	// skips it): the flag outlives policies.
	var toGone int
	for _, d := range h.deliveries() {
		if strings.HasSuffix(d, " gone firing") {
			toGone++
		}
	}
	if toGone != 3 {
		t.Errorf("%d firing deliveries to the unknown webhook, want 3: %q", toGone, h.deliveries())
	}
}
