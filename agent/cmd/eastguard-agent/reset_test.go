package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResetState: --reset-state removes the last known good rule set and
// nothing else of the state directory (the node reconnects without a
// token), exits 0 also when there is nothing to remove, and 1 when the
// directory cannot be used; with --uninstall it removes enforcement too.
func TestResetState(t *testing.T) {
	dir := t.TempDir()
	keep := []string{"node.pem", "ca.crt", "node.json", "flows/id", "flows/1-10-0.batch"}
	for _, f := range append(keep, "ruleset.json") {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stderr strings.Builder
	absent := filepath.Join(t.TempDir(), "absent")
	if code := run([]string{"--reset-state", "--state-dir", dir, "--bpffs-dir", absent}, io.Discard, &stderr); code != exitOK {
		t.Fatalf("--reset-state: exit %d\n%s", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "ruleset.json")); !os.IsNotExist(err) {
		t.Errorf("ruleset.json still there: %v", err)
	}
	for _, f := range keep {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || string(b) != f {
			t.Errorf("%s not kept: %v", f, err)
		}
	}
	if !strings.Contains(stderr.String(), "last known good rule set removed") || !strings.Contains(stderr.String(), "add --uninstall") {
		t.Errorf("log does not say what was done:\n%s", stderr.String())
	}

	// Again: nothing to remove is not an error; with --uninstall of
	// nothing pinned, neither.
	stderr.Reset()
	if code := run([]string{"--reset-state", "--uninstall", "--state-dir", dir, "--bpffs-dir", absent}, io.Discard, &stderr); code != exitOK {
		t.Errorf("second --reset-state --uninstall: exit %d\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "nothing to reset") {
		t.Errorf("log:\n%s", stderr.String())
	}
	// A state directory that is not one: exit 1, saying so.
	notDir := filepath.Join(dir, "node.pem")
	stderr.Reset()
	if code := run([]string{"--reset-state", "--state-dir", notDir}, io.Discard, &stderr); code != exitFailure {
		t.Errorf("--reset-state of a file: exit %d, want %d", code, exitFailure)
	}
	if !strings.Contains(stderr.String(), "state not reset") || !strings.Contains(stderr.String(), "not a directory") {
		t.Errorf("log:\n%s", stderr.String())
	}
}
