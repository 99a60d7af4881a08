package deploy

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil/readme"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// A join token of the form pki.ParseJoinToken accepts; its secret part is
// what must never show up in an argument list or the env file.
const (
	testTokenSecret = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"
	testToken       = "eg1.0a1b2c3d4e5f6071." + testTokenSecret + ".aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

// installRig is a scratch directory laid out like a checkout (deploy/ is
// the repository's, bin/eastguard-agent freshly built) so that the
// script's defaults and the README's commands work from it unchanged.
type installRig struct {
	dir, script, agent string
}

func newInstallRig(t *testing.T) installRig {
	t.Helper()
	dir := t.TempDir()
	deployDir, err := filepath.Abs(filepath.Join("..", "..", "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(deployDir, filepath.Join(dir, "deploy")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	agent := topo.BuildBinary(t, "agent/cmd/eastguard-agent", filepath.Join(dir, "bin"))
	if err := os.WriteFile(filepath.Join(dir, "node-a.token"), []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return installRig{dir: dir, script: filepath.Join(dir, "deploy", "install.sh"), agent: agent}
}

type scriptResult struct {
	code           int
	stdout, stderr string
}

// run runs `sh -c command` in the rig with DESTDIR=destdir (none if
// empty) and stdin.
func (r installRig) run(t *testing.T, destdir, stdin, command string) scriptResult {
	t.Helper()
	cmd := exec.Command("bash", "-c", command)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "DESTDIR="+destdir)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := scriptResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", command, err)
	}
	return res
}

func (r installRig) mustRun(t *testing.T, destdir, stdin, command string) scriptResult {
	t.Helper()
	res := r.run(t, destdir, stdin, command)
	if res.code != 0 {
		t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", command, res.code, res.stdout, res.stderr)
	}
	return res
}

// tree lists the files under root (relative path -> mode), directories
// excluded.
func tree(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	files := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files["/"+rel] = info.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var installedFiles = map[string]fs.FileMode{
	"/usr/local/bin/eastguard-agent":              0o755,
	"/etc/eastguard/agent.env":                    0o600,
	"/etc/eastguard/join-token":                   0o600,
	"/etc/systemd/system/eastguard-agent.service": 0o644,
}

// checkInstalled checks every file the installer writes: exactly these,
// with these modes, the binary and unit as shipped, the token in its own
// file and only a reference to it in the env file, whose flags are all
// the agent's.
func checkInstalled(t *testing.T, r installRig, dest, wantEnv string) {
	t.Helper()
	got := tree(t, dest)
	if len(got) != len(installedFiles) {
		t.Errorf("installed %v, want %v", got, installedFiles)
	}
	for f, mode := range installedFiles {
		if got[f] != mode {
			t.Errorf("%s: mode %v, want %v", f, got[f], mode)
		}
	}
	if readFile(t, filepath.Join(dest, "usr/local/bin/eastguard-agent")) != readFile(t, r.agent) {
		t.Error("the installed binary is not the built one")
	}
	if readFile(t, filepath.Join(dest, "etc/systemd/system/eastguard-agent.service")) != readFile(t, filepath.Join(r.dir, "deploy/systemd/eastguard-agent.service")) {
		t.Error("the installed unit is not deploy/systemd/eastguard-agent.service")
	}
	if tok := readFile(t, filepath.Join(dest, "etc/eastguard/join-token")); strings.TrimSpace(tok) != testToken {
		t.Errorf("join-token holds %q, want the token", tok)
	}
	env := readFile(t, filepath.Join(dest, "etc/eastguard/agent.env"))
	if strings.Contains(env, testTokenSecret) {
		t.Errorf("agent.env holds the token:\n%s", env)
	}
	var vars []string
	for line := range strings.Lines(env) {
		if !strings.HasPrefix(line, "#") {
			vars = append(vars, strings.TrimSpace(line))
		}
	}
	if got := strings.Join(vars, "\n"); got != wantEnv {
		t.Errorf("agent.env:\n%s\nwant:\n%s", got, wantEnv)
	}
	checkFlags(t, "agent.env", env, acceptedFlags(t, r.agent))
}

// TestInstallScript runs deploy/install.sh against scratch roots
// (DESTDIR): what it installs, what it refuses, --dry-run, --uninstall.
func TestInstallScript(t *testing.T) {
	r := newInstallRig(t)
	const (
		full = "deploy/install.sh --node web-1 --controller ctl.example.com:7443 --join-token-file node-a.token" +
			" --default-mode monitor --guard-interfaces 'veth*,cali*' --metrics-listen 127.0.0.1:9791"
		fullEnv = "EASTGUARD_NODE=web-1\nEASTGUARD_ARGS=--controller ctl.example.com:7443 --join-token-file /etc/eastguard/join-token" +
			" --default-mode monitor --guard-interfaces veth*,cali* --metrics-listen 127.0.0.1:9791"
	)

	t.Run("token file, every setting", func(t *testing.T) {
		dest := t.TempDir()
		res := r.mustRun(t, dest, "", full)
		checkInstalled(t, r, dest, fullEnv)
		if strings.Contains(res.stdout+res.stderr, testTokenSecret) {
			t.Errorf("the output shows the token:\n%s%s", res.stdout, res.stderr)
		}
		// Installing again (an upgrade) replaces, and changes nothing else.
		r.mustRun(t, dest, "", full)
		checkInstalled(t, r, dest, fullEnv)
	})

	t.Run("token on stdin, defaults", func(t *testing.T) {
		dest := t.TempDir()
		host, err := os.Hostname()
		if err != nil {
			t.Fatal(err)
		}
		r.mustRun(t, dest, testToken+"\n", "deploy/install.sh --controller [fd00::1]:7443 --join-token-stdin")
		checkInstalled(t, r, dest, "EASTGUARD_NODE="+host+
			"\nEASTGUARD_ARGS=--controller [fd00::1]:7443 --join-token-file /etc/eastguard/join-token")
	})

	t.Run("several controllers (Failover)", func(t *testing.T) {
		dest := t.TempDir()
		r.mustRun(t, dest, testToken+"\n", "deploy/install.sh --node web-1 --controller ctl-1.example.com:7443,[fd00::2]:7443 --join-token-stdin")
		checkInstalled(t, r, dest, "EASTGUARD_NODE=web-1"+
			"\nEASTGUARD_ARGS=--controller ctl-1.example.com:7443,[fd00::2]:7443 --join-token-file /etc/eastguard/join-token")
		res := r.run(t, t.TempDir(), testToken+"\n", "deploy/install.sh --node web-1 --controller ctl-1.example.com:7443, --join-token-stdin")
		if res.code != 2 || !strings.Contains(res.stderr, "want HOST:PORT") {
			t.Errorf("a trailing comma: exit %d\n%s", res.code, res.stderr)
		}
	})

	// The token is never an argument of any process the script starts:
	// every execve, with its whole argument list, is traced.
	t.Run("token in no argument list", func(t *testing.T) {
		strace, err := exec.LookPath("strace")
		if err != nil {
			t.Skip("strace is not installed (apt-get install strace): cannot trace the script's processes")
		}
		for _, c := range []struct{ stdin, command string }{
			{"", full},
			{testToken + "\n", strings.Replace(full, "--join-token-file node-a.token", "--join-token-stdin", 1)},
		} {
			trace := filepath.Join(t.TempDir(), "trace")
			r.mustRun(t, t.TempDir(), c.stdin, strace+" -f -qq -e trace=execve -s 100000 -o "+trace+" "+c.command)
			execs := readFile(t, trace)
			if n := strings.Count(execs, "execve("); n < 5 {
				t.Fatalf("the trace has %d execve calls, want the script's commands:\n%s", n, execs)
			}
			if strings.Contains(execs, testTokenSecret) {
				t.Errorf("%s: the token is in a process's arguments:\n%s", c.command, execs)
			}
		}
	})

	t.Run("refused input changes nothing", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(r.dir, "bad.token"), []byte("eg1.nothex.x.y\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r.dir, "two.token"), []byte(testToken+"\n"+testToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		base := "deploy/install.sh --node web-1 --controller ctl.example.com:7443 "
		for _, c := range []struct {
			args, stdin, want string
			code              int
		}{
			{base + "--join-token " + testToken, "", "/proc/PID/cmdline", 2},
			{base + "--join-token=" + testToken, "", "/proc/PID/cmdline", 2},
			{"deploy/install.sh --node web-1 --join-token-file node-a.token", "", "--controller HOST:PORT is required", 2},
			{base + "--join-token-file missing.token", "", "--join-token-file missing.token: not a readable file", 2},
			{base + "--join-token-file bin", "", "--join-token-file bin: not a readable file", 2},
			{base + "--join-token-file bad.token", "", "is not one line of the form eg1.", 2},
			{base + "--join-token-file two.token", "", "is not one line of the form eg1.", 2},
			{base + "--join-token-stdin", "", "is not one line of the form eg1.", 2},
			{base, "", "a join token is required", 2},
			{base + "--join-token-file node-a.token --join-token-stdin", "", "not both", 2},
			{base + "--join-token-file node-a.token --frobnicate", "", "unknown flag '--frobnicate'", 2},
			{base + "--join-token-file node-a.token --node 'a b'", "", "--node 'a b'", 2},
			{base + "--join-token-file node-a.token --node -x", "", "--node '-x'", 2},
			{"deploy/install.sh --node web-1 --controller 'ctl;reboot' --join-token-file node-a.token", "", "--controller 'ctl;reboot': want HOST:PORT", 2},
			{"deploy/install.sh --node web-1 --controller ctl.example.com --join-token-file node-a.token", "", "want HOST:PORT", 2},
			{base + "--join-token-file node-a.token --default-mode block", "", "--default-mode 'block': want enforce or monitor", 2},
			{base + "--join-token-file node-a.token --guard-interfaces 'veth* x'", "", "--guard-interfaces", 2},
			{base + "--join-token-file node-a.token --metrics-listen 'x y'", "", "--metrics-listen", 2},
			{base + "--join-token-file node-a.token --binary missing", "", "--binary missing: not a readable file", 2},
			{base + "--join-token-file node-a.token --binary node-a.token", "", "not an eastguard-agent", 2},
			{base + "--join-token-file node-a.token --node", "", "--node needs a value", 2},
			{base + "--join-token-file node-a.token --purge", "", "--purge goes with --uninstall", 2},
			{"deploy/install.sh --uninstall --node x", "", "--uninstall takes only", 2},
		} {
			dest := t.TempDir()
			res := r.run(t, dest, c.stdin, c.args)
			if res.code != c.code || !strings.Contains(res.stderr, c.want) {
				t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.args, res.code, res.stderr, c.code, c.want)
			}
			if strings.Contains(res.stdout+res.stderr, testTokenSecret) && !strings.Contains(c.args, testTokenSecret) {
				t.Errorf("%s: the output shows the token", c.args)
			}
			if got := tree(t, dest); len(got) != 0 {
				t.Errorf("%s: refused, but wrote %v", c.args, got)
			}
		}
	})

	t.Run("not root without DESTDIR", func(t *testing.T) {
		if os.Geteuid() != 0 {
			res := r.run(t, "", "", "deploy/install.sh --controller c:1 --join-token-file node-a.token")
			if res.code != 3 || !strings.Contains(res.stderr, "must run as root") {
				t.Errorf("exit %d, stderr %q; want 3 and 'must run as root'", res.code, res.stderr)
			}
			return
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("setpriv (util-linux) is not installed: cannot run the script as another user")
		}
		// A copy nobody can read and run (the rig is private); the root
		// check comes before any other file is needed.
		dir, err := os.MkdirTemp("", "install-nobody")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		script := filepath.Join(dir, "install.sh")
		if err := os.WriteFile(script, []byte(readFile(t, r.script)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		res := r.run(t, "", "", setpriv+" --reuid=65534 --regid=65534 --clear-groups "+script+" --controller c:1 --join-token-file node-a.token")
		if res.code != 3 || !strings.Contains(res.stderr, "must run as root (or with DESTDIR=DIR") {
			t.Errorf("exit %d, stderr %q; want 3 and 'must run as root'", res.code, res.stderr)
		}
	})

	t.Run("dry run", func(t *testing.T) {
		dest := t.TempDir()
		res := r.mustRun(t, dest, "", full+" --dry-run")
		for _, want := range []string{"dry run: nothing is changed", "EASTGUARD_ARGS=--controller ctl.example.com:7443",
			dest + "/etc/eastguard/join-token (0600) from node-a.token", "install -m 0755", dest + "/usr/local/bin/eastguard-agent",
			dest + "/etc/systemd/system/eastguard-agent.service"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("--dry-run output lacks %q:\n%s", want, res.stdout)
			}
		}
		if strings.Contains(res.stdout, testTokenSecret) {
			t.Error("--dry-run shows the token")
		}
		if got := tree(t, dest); len(got) != 0 {
			t.Errorf("--dry-run wrote %v", got)
		}
		r.mustRun(t, dest, "", full)
		res = r.mustRun(t, dest, "", "deploy/install.sh --uninstall --purge --dry-run")
		if !strings.Contains(res.stdout, "+ rm -f "+dest+"/etc/eastguard/agent.env") {
			t.Errorf("--uninstall --dry-run output:\n%s", res.stdout)
		}
		if got := tree(t, dest); len(got) != len(installedFiles) {
			t.Errorf("--uninstall --dry-run removed files: %v left", got)
		}
	})

	t.Run("uninstall", func(t *testing.T) {
		dest := t.TempDir()
		r.mustRun(t, dest, "", full)
		// What the agent and others made: the state and flow log stay
		// without --purge; another file in /etc/eastguard always stays.
		for _, f := range []string{"var/lib/eastguard/node.pem", "var/log/eastguard/flows.jsonl", "etc/eastguard/policy/shop.yaml"} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dest, f)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dest, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// Joined already: reinstalling (an upgrade) needs no token.
		r.mustRun(t, dest, "", "deploy/install.sh --node web-1 --controller ctl.example.com:7443")
		if env := readFile(t, filepath.Join(dest, "etc/eastguard/agent.env")); strings.Contains(env, "--join-token-file") {
			t.Errorf("reinstalled without a token, agent.env still names one:\n%s", env)
		}
		for range 2 { // idempotent
			r.mustRun(t, dest, "", "deploy/install.sh --uninstall")
			want := []string{"/var/lib/eastguard/node.pem", "/var/log/eastguard/flows.jsonl", "/etc/eastguard/policy/shop.yaml"}
			got := tree(t, dest)
			if len(got) != len(want) {
				t.Errorf("after --uninstall: %v, want only %v", got, want)
			}
		}
		if err := os.RemoveAll(filepath.Join(dest, "etc/eastguard/policy")); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			r.mustRun(t, dest, "", "deploy/install.sh --uninstall --purge")
			entries, err := filepath.Glob(filepath.Join(dest, "*", "*", "*"))
			if err != nil {
				t.Fatal(err)
			}
			// Left: the parent directories (/etc/systemd/system,
			// /usr/local/bin, /var/lib, /var/log) as a package leaves them.
			for _, e := range entries {
				rel, _ := filepath.Rel(dest, e)
				if rel != "etc/systemd/system" && rel != "usr/local/bin" {
					t.Errorf("after --uninstall --purge: %s is left", rel)
				}
			}
			if len(tree(t, dest)) != 0 {
				t.Errorf("after --uninstall --purge: %v", tree(t, dest))
			}
			if _, err := os.Stat(filepath.Join(dest, "etc/eastguard")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after --uninstall --purge, the empty /etc/eastguard is left (%v)", err)
			}
		}
	})

	t.Run("help", func(t *testing.T) {
		res := r.mustRun(t, "", "", "deploy/install.sh --help")
		for _, want := range []string{"Exit status:", "  2  bad input", "  3  not root", "  4  installed, but the agent did not join",
			"--join-token-stdin", "--uninstall", "--purge", "--dry-run", "egctl token create --node NAME --ttl 1h"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("--help lacks %q", want)
			}
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed (apt-get install systemd; systemd need not run): unit not verified")
		}
		dest := t.TempDir()
		r.mustRun(t, dest, "", full)
		// verify checks that ExecStart's binary exists: point it at the
		// installed one (the host has none in /usr/local/bin).
		unit := strings.ReplaceAll(readFile(t, filepath.Join(dest, "etc/systemd/system/eastguard-agent.service")),
			"/usr/local/bin/eastguard-agent", filepath.Join(dest, "usr/local/bin/eastguard-agent"))
		path := filepath.Join(t.TempDir(), "eastguard-agent.service")
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		// verify exits 0 even for a line it ignores (an unknown key, a bad
		// value): anything it says is a failure.
		out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
		if err != nil || len(out) != 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})

	t.Run("shellcheck", func(t *testing.T) {
		shellcheck, err := exec.LookPath("shellcheck")
		if err != nil {
			t.Skip("shellcheck is not installed (apt-get install shellcheck): script not linted")
		}
		if out, err := exec.Command(shellcheck, r.script).CombinedOutput(); err != nil {
			t.Errorf("shellcheck deploy/install.sh: %v\n%s", err, out)
		}
	})
}

// TestReadmeInstallCommands runs every `sudo deploy/install.sh` command the
// README shows, in order, against one scratch root (without sudo): each
// must succeed.
func TestReadmeInstallCommands(t *testing.T) {
	r := newInstallRig(t)
	cmds := readme.WithPrefix(readme.Commands(t), "sudo deploy/install.sh ")
	if len(cmds) < 2 {
		t.Fatalf("README shows %d deploy/install.sh commands, want the install and the uninstall", len(cmds))
	}
	dest := t.TempDir()
	var sawInstall, sawUninstall bool
	for _, c := range cmds {
		command := strings.TrimPrefix(c.Text, "sudo ")
		r.mustRun(t, dest, testToken+"\n", command)
		if strings.Contains(command, "--uninstall") {
			sawUninstall = true
			if got := tree(t, dest); len(got) != 0 {
				t.Errorf("%s left %v", command, got)
			}
		} else {
			sawInstall = true
			checkInstalled(t, r, dest, "EASTGUARD_NODE=node-a\nEASTGUARD_ARGS=--controller ctl.example.com:7443 --join-token-file /etc/eastguard/join-token")
		}
	}
	if !sawInstall || !sawUninstall {
		t.Errorf("README's deploy/install.sh commands %v: want an install and an uninstall", cmds)
	}
}
