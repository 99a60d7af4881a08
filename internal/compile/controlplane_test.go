package compile

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// controlPlanePolicy: n1's host-mode workload h1 may reach 192.0.2.0/24
// on 7443; n2's (h2) may reach nothing. The controller is at 192.0.2.5
// (n1 allowed) or 198.51.100.5 (neither).
var controlPlanePolicy = cluster + policyDoc("nodes", "", `    - {name: h1-out, from: [{selector: {role: node}}], to: [{cidr: 192.0.2.0/24}], ports: [{port: 7443}]}
    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
`)

func TestControlPlaneWarnings(t *testing.T) {
	set, res := mustCompile(t, controlPlanePolicy)
	allowed, blocked := netip.MustParseAddrPort("192.0.2.5:7443"), netip.MustParseAddrPort("198.51.100.5:7443")

	// h1 and h2 both have the role node: the rule allows both to 192.0.2.0/24.
	if ds := ControlPlaneWarnings(set, res, []netip.AddrPort{allowed}); len(ds) != 0 {
		t.Errorf("controller allowed: warnings %v", ds)
	}
	ds := ControlPlaneWarnings(set, res, []netip.AddrPort{allowed, blocked, netip.MustParseAddrPort("192.0.2.5:22")})
	if len(ds) != 4 {
		t.Fatalf("warnings: %v, want 4 (h1 and h2, for 198.51.100.5:7443 and 192.0.2.5:22)", ds)
	}
	for _, d := range ds {
		s := d.String()
		for _, want := range []string{"test.yaml:", "metadata.name: warning: host-mode workload h", "reach the controller at ", "denied by default-deny", ruleset.FailsafeName} {
			if !strings.Contains(s, want) {
				t.Errorf("warning %q does not say %q", s, want)
			}
		}
	}
	if !strings.Contains(ds[0].String(), "test.yaml:4:") {
		t.Errorf("first warning %q is not at h1's name (line 4)", ds[0])
	}
	// The controller on the node itself, or in one of its containers,
	// is not reached through the node's interfaces: no warning for h1.
	// From n2 both are reached through its interfaces and no rule allows
	// them: two for h2. (web-1's fd00:1::10 has the labels of n2's web-2;
	// it is still another node's workload.)
	ds = ControlPlaneWarnings(set, res, []netip.AddrPort{netip.MustParseAddrPort("10.0.1.1:7443"), netip.MustParseAddrPort("[fd00:1::10]:7443")})
	if len(ds) != 2 || !strings.Contains(ds[0].Message, "workload h2") || !strings.Contains(ds[1].Message, "workload h2") {
		t.Errorf("controller on n1: warnings %v, want two for h2", ds)
	}
}

// TestRuleNamedFailsafeWarns: a rule may not pass itself
// off as the failsafe unnoticed.
func TestRuleNamedFailsafeWarns(t *testing.T) {
	_, res := mustCompile(t, cluster+policyDoc("failsafe", "", "    - {name: control-plane, from: [{selector: {role: web}}], to: [{selector: {role: db}}]}\n"))
	found := false
	for _, d := range res.Warnings {
		found = found || strings.Contains(d.String(), "rules[0].name: warning: rule failsafe/control-plane has the name of the agent's failsafe")
	}
	if !found {
		t.Errorf("no warning about the rule's name: %v", res.Warnings)
	}
}

func TestExplainWithFailsafe(t *testing.T) {
	set, res := mustCompile(t, controlPlanePolicy)
	q := Query{From: "h2", To: "198.51.100.5", Protocol: ruleset.ProtocolTCP, Port: 7443}
	x, err := Explain(set, res, q)
	if err != nil {
		t.Fatal(err)
	}
	if x.Verdict != ruleset.VerdictDenied || x.Rule != ruleset.DefaultDenyName {
		t.Fatalf("without the failsafe: %s by %s, want denied by default-deny", x.Verdict, x.Rule)
	}
	if err := res.WithFailsafe([]netip.AddrPort{netip.MustParseAddrPort("198.51.100.5:7443")}); err != nil {
		t.Fatal(err)
	}
	x, err = Explain(set, res, q)
	if err != nil {
		t.Fatal(err)
	}
	if x.Verdict != ruleset.VerdictAllowed || x.Rule != ruleset.FailsafeName || x.Source.PeerName != FailsafeIdentityName {
		t.Errorf("with the failsafe: %s by %s (peer %q), want allowed by %s", x.Verdict, x.Rule, x.Source.PeerName, ruleset.FailsafeName)
	}
	// Other ports, and containers, stay as the policy says.
	for _, q := range []Query{
		{From: "h2", To: "198.51.100.5", Protocol: ruleset.ProtocolTCP, Port: 22},
		{From: "web-2", To: "198.51.100.5", Protocol: ruleset.ProtocolTCP, Port: 7443},
	} {
		if x, err := Explain(set, res, q); err != nil || x.Verdict != ruleset.VerdictDenied {
			t.Errorf("%+v: %+v %v, want denied", q, x, err)
		}
	}
	if err := res.WithFailsafe([]netip.AddrPort{netip.MustParseAddrPort("198.51.100.5:7443"), netip.MustParseAddrPort("198.51.100.6:7444")}); err == nil {
		t.Error("two controller ports accepted")
	}
}
