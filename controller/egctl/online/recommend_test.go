package online

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"gopkg.in/yaml.v3"
)

// TestOnlineRecommend: egctl recommend prints the controller's YAML as
// is (valid policy), its notes on standard error, the diff as a table or
// YAML, the whole answer as JSON, and refuses bad flags before calling.
func TestOnlineRecommend(t *testing.T) {
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret") // the shop fixture's webhook
	st := eventController(t)
	st.Apply(readFile(t, shop))
	now := time.Now().UTC()
	rec := func(src, dst string, port uint16, v ruleset.Verdict) flowrecord.Record {
		names := map[string]string{"10.10.0.5": "lb-1", "10.10.0.11": "web-1", "10.10.0.12": "web-2", "10.10.0.21": "db-1"}
		return flowrecord.Record{Time: now.Add(-time.Minute), Node: "node-b", Direction: ruleset.Ingress, Protocol: "TCP",
			SrcAddr: netip.MustParseAddr(src), SrcPort: 40000, SrcWorkload: names[src], DstAddr: netip.MustParseAddr(dst),
			DstPort: port, DstWorkload: names[dst], Verdict: v, Rule: "default-deny", Packets: 1, Bytes: 60,
			FirstSeen: now.Add(-time.Minute), LastSeen: now.Add(-time.Minute), State: flowrecord.StateNew}
	}
	st.InsertFlows(
		rec("10.10.0.11", "10.10.0.21", 5432, ruleset.VerdictAllowed),
		rec("10.10.0.12", "10.10.0.21", 6432, ruleset.VerdictWouldDeny),
		rec("10.10.0.11", "10.10.0.21", 22, ruleset.VerdictDenied),
	)

	code, out, errs := egctl(t, "recommend", "--group-by", "role")
	if code != exitOK {
		t.Fatalf("recommend: exit %d\n%s\n%s", code, out, errs)
	}
	set, diags := policy.ParseAndValidate("out.yaml", []byte(out))
	if diags.HasErrors() || len(set.Policies) != 1 || set.Policies[0].Name != "recommended" {
		t.Fatalf("recommend's output is not one valid policy: %v\n%s", diags, out)
	}
	r := set.Policies[0].Rules
	if len(r) != 1 || r[0].Name != "web-to-db" || len(r[0].Ports) != 2 || r[0].Ports[0].Port != 5432 || r[0].Ports[1].Port != 6432 {
		t.Errorf("rules %+v\n%s", r, out)
	}
	if !strings.Contains(out, "# 2 flows (1 allowed, 1 would-deny, 0 denied), first seen") {
		t.Errorf("no evidence comment:\n%s", out)
	}

	// Denied flows only when asked; the policy's name.
	code, out, _ = egctl(t, "recommend", "--group-by", "role", "--include-denied", "--name", "observed")
	if code != exitOK || !strings.Contains(out, "name: observed") || !strings.Contains(out, "port: 22") {
		t.Errorf("--include-denied --name observed: exit %d\n%s", code, out)
	}

	// By app every workload has the same group: one rule shop -> shop.
	code, out, _ = egctl(t, "recommend")
	if code != exitOK || !strings.Contains(out, "name: shop-to-shop") {
		t.Errorf("recommend (group by app): exit %d\n%s", code, out)
	}

	// A workload without the label: a note on standard error.
	code, _, errs = egctl(t, "recommend", "--group-by", "tier")
	if code != exitOK || !strings.Contains(errs, "note: workload web-1 has no label tier: selected by its full label set") {
		t.Errorf("--group-by tier: exit %d, stderr %s", code, errs)
	}

	code, out, errs = egctl(t, "recommend", "--diff")
	if code != exitOK || !strings.Contains(out, "break under enforce): 1") || !strings.Contains(out, "web-2") ||
		!strings.Contains(out, "TCP/6432") || !strings.Contains(out, "default-deny") ||
		!strings.Contains(out, "candidates to remove): ") || !strings.Contains(out, "shop/lb-to-web") {
		t.Errorf("--diff: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, _ = egctl(t, "recommend", "--diff", "-o", "yaml")
	var d struct {
		NotAllowed []struct{ Port uint16 } `yaml:"notAllowed"`
	}
	if code != exitOK || yaml.Unmarshal([]byte(out), &d) != nil || len(d.NotAllowed) != 1 || d.NotAllowed[0].Port != 6432 {
		t.Errorf("--diff -o yaml: exit %d %+v\n%s", code, d, out)
	}
	code, out, _ = egctl(t, "recommend", "--workload", "web-2", "-o", "json")
	var full apiclient.Recommendation
	if code != exitOK || json.Unmarshal([]byte(out), &full) != nil || len(full.Rules) != 1 || full.Workload != "web-2" ||
		full.Rules[0].Evidence.Flows != 1 || full.Diff != nil {
		t.Errorf("--workload web-2 -o json: exit %d %+v\n%s", code, full, out)
	}

	// Nothing observed: nothing printed, said on standard error.
	code, out, errs = egctl(t, "recommend", "--since", "2h", "--until", "1h")
	if code != exitOK || out != "" || !strings.Contains(errs, "no flow to recommend from") {
		t.Errorf("an empty range: exit %d, %q, %s", code, out, errs)
	}

	for _, tc := range []struct {
		args []string
		code int
		errs string
	}{
		{[]string{"--group-by", "a b"}, exitBadInput, "--group-by: label key"},
		{[]string{"--since", "yesterday"}, exitBadInput, "--since:"},
		{[]string{"--name", "bad/name"}, exitBadInput, "--name:"},
		{[]string{"-o", "table"}, exitBadInput, "-o \"table\""},
		{[]string{"extra"}, exitBadInput, "unexpected arguments"},
		{[]string{"--workload", "nobody"}, exitBadInput, "no workload \"nobody\""},
	} {
		code, out, errs := egctl(t, append([]string{"recommend"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errs, tc.errs) || out != "" {
			t.Errorf("recommend %q: exit %d, want %d; stdout %q; stderr %q lacks %q", tc.args, code, tc.code, out, errs, tc.errs)
		}
	}
}
