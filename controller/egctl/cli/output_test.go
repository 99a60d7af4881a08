package cli

import (
	"testing"
)

func TestCount(t *testing.T) {
	for n, want := range map[int]string{0: "0 policies", 1: "1 policy", 2: "2 policies"} {
		if got := count(n, "policy"); got != want {
			t.Errorf("count(%d, policy) = %q, want %q", n, got, want)
		}
	}
	if got := count(3, "alert rule"); got != "3 alert rules" {
		t.Errorf("count(3, alert rule) = %q", got)
	}
}
