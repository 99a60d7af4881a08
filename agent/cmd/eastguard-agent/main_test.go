package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/pki"
)

func TestParseFlags(t *testing.T) {
	tok, err := pki.NewJoinToken(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "node-a")
	os.WriteFile(tokFile, []byte(tok.String()+"\n"), 0o600)
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("nope"), 0o600)

	cases := []struct {
		name    string
		args    []string
		wantErr string
		check   func(*flags) bool
	}{
		{"standalone", []string{"--node", "a", "--policy-dir", dir}, "", nil},
		{"no node", []string{"--policy-dir", dir}, "--node is required", nil},
		{"two sources", []string{"--node", "a", "--policy-dir", dir, "--rule-set", "f"}, "exactly one of", nil},
		{"bad mode", []string{"--node", "a", "--policy-dir", dir, "--default-mode", "open"}, `--default-mode "open"`, nil},
		{"token from file", []string{"--node", "a", "--controller", "ctl:7443", "--join-token-file", tokFile}, "",
			func(o *flags) bool { return o.JoinToken == tok.String() }},
		{"token file not there yet", []string{"--node", "a", "--controller", "ctl:7443", "--join-token-file", filepath.Join(dir, "missing")}, "",
			func(o *flags) bool { return o.JoinToken == "" }},
		{"bad token in file", []string{"--node", "a", "--controller", "ctl:7443", "--join-token-file", bad}, "--join-token: join token", nil},
		{"token and file", []string{"--node", "a", "--controller", "ctl:7443", "--join-token", tok.String(), "--join-token-file", tokFile}, "not both", nil},
		{"token without controller", []string{"--node", "a", "--policy-dir", dir, "--join-token", tok.String()}, "goes with --controller", nil},
		{"uninstall needs nothing else", []string{"--uninstall"}, "", nil},
		{"reset-state needs nothing else", []string{"--reset-state", "--state-dir", dir}, "",
			func(o *flags) bool { return o.resetState && !o.uninstall && o.StateDir == dir }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if tc.check != nil && !tc.check(o) {
				t.Errorf("options %+v", o)
			}
		})
	}
}

func TestRunExitCodes(t *testing.T) {
	if code := run([]string{"--bogus"}, io.Discard, io.Discard); code != exitUsage {
		t.Errorf("bad flag: exit %d, want %d", code, exitUsage)
	}
	if code := run([]string{"--help"}, io.Discard, io.Discard); code != exitOK {
		t.Errorf("--help: exit %d, want 0", code)
	}
	if code := run([]string{"--uninstall", "--bpffs-dir", filepath.Join(t.TempDir(), "absent")}, io.Discard, io.Discard); code != exitOK {
		t.Errorf("uninstall of nothing: exit %d, want 0", code)
	}
}

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
