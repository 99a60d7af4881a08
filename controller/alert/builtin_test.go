package alert

import (
	"slices"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
)

// TestBuiltinRulesReserved: the built-in node alerts' rule names are the
// ones the policy language refuses as AlertRule names, so no flow alert
// can pass for one.
func TestBuiltinRulesReserved(t *testing.T) {
	for _, r := range []string{BuiltinTamperedRule, BuiltinSilentRule} {
		if !slices.Contains(policy.BuiltinAlertRules, r) {
			t.Errorf("built-in rule %q is not in policy.BuiltinAlertRules %q: an AlertRule could take its name", r, policy.BuiltinAlertRules)
		}
	}
}
