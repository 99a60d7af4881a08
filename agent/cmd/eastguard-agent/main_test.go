package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
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
		{"reset-state needs nothing else", []string{"--reset-state", "--state-dir", dir}, "",
			func(o *flags) bool { return o.resetState && !o.uninstall && o.StateDir == dir }},
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

// TestVersion: --version prints the stamped version (make build sets it)
// and exits 0, needing no other flag.
func TestVersion(t *testing.T) {
	testutil.CheckVersionFlag(t, "eastguard-agent", &version, run)
}
