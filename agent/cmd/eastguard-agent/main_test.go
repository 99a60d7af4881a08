package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
	tnetns "github.com/eastguard/eastguard/internal/testutil/netns"
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
		{"token and file", []string{"--node", "a", "--controller", "ctl:7443", "--join-token", tok.String(), "--join-token-file", tokFile}, "not several", nil},
		{"token without controller", []string{"--node", "a", "--policy-dir", dir, "--join-token", tok.String()}, "go with --controller", nil},
		{"service account token and CA, files not there yet", []string{"--node", "a", "--controller", "ctl:7443",
			"--join-service-account-token-file", filepath.Join(dir, "sa-missing"), "--ca-file", filepath.Join(dir, "ca-missing")}, "",
			func(o *flags) bool {
				return o.JoinServiceAccountTokenFile == filepath.Join(dir, "sa-missing") && o.CAFile == filepath.Join(dir, "ca-missing")
			}},
		{"service account token without CA", []string{"--node", "a", "--controller", "ctl:7443", "--join-service-account-token-file", tokFile},
			"needs --ca-file", nil},
		{"service account token and join token", []string{"--node", "a", "--controller", "ctl:7443", "--join-service-account-token-file", tokFile,
			"--ca-file", tokFile, "--join-token-file", tokFile}, "not several", nil},
		{"service account token without controller", []string{"--node", "a", "--policy-dir", dir, "--join-service-account-token-file", tokFile,
			"--ca-file", tokFile}, "go with --controller", nil},
		{"guard interfaces", []string{"--node", "a", "--policy-dir", dir, "--guard-interfaces", "cali*, lxc*", "--guard-interfaces=veth?x,cni[0-9]*"}, "",
			func(o *flags) bool {
				return strings.Join(o.GuardInterfaces, " ") == "cali* lxc* veth?x cni[0-9]*"
			}},
		{"guard interfaces: bad glob", []string{"--node", "a", "--policy-dir", dir, "--guard-interfaces", "cali*,lxc[", "--guard-interfaces", "veth*"},
			`invalid value "cali*,lxc[" for flag -guard-interfaces: pattern 2 "lxc[": bad guard interface pattern: syntax error in pattern`, nil},
		{"uninstall needs nothing else", []string{"--uninstall"}, "", nil},
		{"conntrack size and share", []string{"--node", "a", "--policy-dir", dir, "--conntrack-entries", "1048576", "--conntrack-endpoint-percent", "10"}, "",
			func(o *flags) bool { return o.ConntrackEntries == 1<<20 && o.ConntrackEndpointPercent == 10 }},
		{"conntrack too small", []string{"--node", "a", "--policy-dir", dir, "--conntrack-entries", "100"}, "--conntrack-entries 100: want between 1024", nil},
		{"conntrack share over 100", []string{"--node", "a", "--policy-dir", dir, "--conntrack-endpoint-percent", "101"}, "--conntrack-endpoint-percent 101: want between 1 and 100", nil},
		{"conntrack share 0", []string{"--node", "a", "--policy-dir", dir, "--conntrack-endpoint-percent", "0"}, "want more than 0", nil},
		{"conntrack size not a number", []string{"--node", "a", "--policy-dir", dir, "--conntrack-entries", "1M"}, "want a whole number", nil},
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

// TestPrivilegedRefusals: --uninstall exits 1, saying why and removing
// nothing, on a directory that is not on a bpffs and on the pin directory
// of a running agent (naming its PID), where a second agent refuses to
// start too; it exits 0 once that agent has stopped.
func TestPrivilegedRefusals(t *testing.T) {
	testutil.RequirePrivileged(t)
	notBPFFS := t.TempDir()
	keep := filepath.Join(notBPFFS, "precious.db")
	os.WriteFile(keep, []byte("keep me"), 0o600)
	var stderr strings.Builder
	if code := run([]string{"--uninstall", "--bpffs-dir", notBPFFS}, io.Discard, &stderr); code != exitFailure {
		t.Errorf("uninstall of a non-bpffs directory: exit %d, want %d", code, exitFailure)
	}
	if !strings.Contains(stderr.String(), "uninstall refused") || !strings.Contains(stderr.String(), "not on a bpffs") {
		t.Errorf("the refusal does not say why: %s", stderr.String())
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("uninstall removed a file of a non-bpffs directory: %v", err)
	}

	// A running agent: an open datapath in a namespace of the test's.
	ns := tnetns.New(t, "agent")
	dir := "/sys/fs/bpf/eg-test-" + tnetns.Suffix()
	var dp *datapath.Datapath
	if err := ns.Do(func() error {
		var err error
		dp, err = datapath.Open(datapath.Config{BPFFSDir: dir, Logger: zaptest.NewLogger(t)})
		return err
	}); err != nil {
		t.Fatalf("open the datapath: %v", err)
	}
	t.Cleanup(func() { dp.Uninstall() })
	stderr.Reset()
	if code := run([]string{"--uninstall", "--bpffs-dir", dir}, io.Discard, &stderr); code != exitFailure {
		t.Errorf("uninstall under a running agent: exit %d, want %d", code, exitFailure)
	}
	if want := fmt.Sprintf("PID %d", os.Getpid()); !strings.Contains(stderr.String(), want) {
		t.Errorf("the refusal does not name the agent's %s: %s", want, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "eg_state")); err != nil {
		t.Errorf("the refused uninstall removed pins: %v", err)
	}
	// A second agent on the same directory refuses to start, naming it.
	stderr.Reset()
	second := []string{"--node", "node-a", "--rule-set", filepath.Join(t.TempDir(), "rs.json"), "--bpffs-dir", dir, "--state-dir", t.TempDir()}
	if code := run(second, io.Discard, &stderr); code != exitFailure {
		t.Errorf("a second agent on %s: exit %d, want %d", dir, code, exitFailure)
	}
	if want := fmt.Sprintf("PID %d", os.Getpid()); !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "own --bpffs-dir") {
		t.Errorf("the second agent does not say why it refused, naming %s: %s", want, stderr.String())
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	if code := run([]string{"--uninstall", "--bpffs-dir", dir}, io.Discard, &stderr); code != exitOK {
		t.Errorf("uninstall after the agent stopped: exit %d, want 0: %s", code, stderr.String())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after uninstall: %v", dir, err)
	}
}
