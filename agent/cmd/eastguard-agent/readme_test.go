package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil/readme"
)

// TestReadmeAgentCommands: every eastguard-agent line the README shows
// parses with the agent's own flags and means what it says; the
// `install` line that puts the join token in place runs (in bash, /etc/
// moved to a scratch root with no /etc/eastguard yet, as on a fresh
// node) and leaves a token file, mode 0600, that the agent line then
// reads.
func TestReadmeAgentCommands(t *testing.T) {
	cmds := readme.Commands(t)
	tok, err := pki.NewJoinToken(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	dir, root := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "node-a.token"), []byte(tok.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scratch := func(line string) string { return strings.ReplaceAll(line, " /etc/", " "+root+"/etc/") }

	installs := readme.WithPrefix(cmds, "install ")
	if len(installs) == 0 {
		t.Error("README.md shows no `install` line for the join token")
	}
	for _, c := range installs {
		cmd := exec.Command("bash", "-e", "-c", scratch(c.Text))
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", c, err, out)
		}
	}
	if info, err := os.Stat(filepath.Join(root, "etc/eastguard/join-token")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("the install line left /etc/eastguard/join-token %v (%v), want mode 0600", info, err)
	}

	agents := readme.WithPrefix(cmds, "eastguard-agent ")
	if len(agents) < 2 {
		t.Fatalf("README.md shows %d eastguard-agent lines, want the joined and the standalone one", len(agents))
	}
	for _, c := range agents {
		forms, err := readme.Expand(c.Text)
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		for _, form := range forms {
			args := strings.Fields(scratch(form))[1:]
			f, err := parseFlags(args, io.Discard)
			if err != nil {
				t.Errorf("%s: %v", c, err)
				continue
			}
			for flag, got := range map[string]string{"--node": f.Node, "--controller": f.Controller, "--policy-dir": f.PolicyDir,
				"--state-dir": f.StateDir, "--flow-log": f.FlowLog, "--join-token-file": f.JoinTokenFile} {
				if want, ok := flagValue(args, flag); ok && got != want {
					t.Errorf("%s: %s is %q, want %q", c, flag, got, want)
				}
			}
			if _, ok := flagValue(args, "--join-token-file"); ok && f.JoinToken != tok.String() {
				t.Errorf("%s: read join token %q from the installed file, want the one node-a.token held", c, f.JoinToken)
			}
		}
	}
}

// flagValue returns the value following flag in args.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}
