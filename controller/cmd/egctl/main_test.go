package main

import (
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"
)

func TestHelpOnEveryCommand(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.Name, "--help"}, {c.Name, "-h"}, {"help", c.Name}} {
			code, out, errs := egctl(t, args...)
			if code != exitOK || strings.Count(out, "Usage: egctl "+c.Name) != 1 || !strings.Contains(out, "Examples:") || errs != "" {
				t.Errorf("egctl %s: exit %d, output:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
			}
		}
		// A bad flag: the error and the usage once, on stderr only.
		code, out, errs := egctl(t, c.Name, "--no-such-flag")
		if code != exitBadInput || out != "" || !strings.Contains(errs, "no-such-flag") || strings.Count(errs, "Usage: egctl "+c.Name) != 1 {
			t.Errorf("egctl %s --no-such-flag: exit %d, stdout %q, stderr:\n%s", c.Name, code, out, errs)
		}
	}
	code, out, _ := egctl(t, "--help")
	if code != exitOK || !strings.Contains(out, "validate") || !strings.Contains(out, "explain") {
		t.Errorf("egctl --help: exit %d\n%s", code, out)
	}
	if code, _, errs := egctl(t, "frobnicate"); code != exitBadInput || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %s", code, errs)
	}
}

// TestVersion: egctl --version (and egctl version) prints the stamped
// version (make build sets it) and exits 0.
func TestVersion(t *testing.T) {
	testutil.CheckVersionFlag(t, "egctl", &version, run)
	testutil.CheckVersionFlag(t, "egctl", &version, run, "version")
}
