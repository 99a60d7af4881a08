package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
)

// TestPrivilegedDemoProgram runs `make demo`'s program (test/demo/cmd/
// eastguard-demo; test/demo's TestPrivilegedDemo checks the scenario it
// plays) twice at once: one run to its end, which must finish, print the
// dashboard's URL and admin token and leave nothing behind; one killed
// with SIGKILL mid-way, whose namespaces, pins and processes --clean
// (make demo-clean) must then remove.
func TestPrivilegedDemoProgram(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := t.TempDir()
	// Built as make demo builds them: with -trimpath the program has no
	// source tree to read its fixtures from, which a plain go build hides.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("make", "-C", root, "--no-print-directory", "demo-build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make demo-build: %v\n%s", err, out)
	}
	state := t.TempDir()
	demo := func(args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, "eastguard-demo"), append([]string{"--bin", bin, "--state-dir", state, "--listen", "127.0.0.1:0"}, args...)...)
		cmd.Env = append(os.Environ(), "DEMO_KEEP=")
		return cmd
	}
	t.Cleanup(func() { demo("--clean").Run() })

	var wg sync.WaitGroup
	var full []byte
	var fullErr error
	wg.Go(func() {
		cmd := demo()
		timer := time.AfterFunc(3*time.Minute, func() { cmd.Process.Kill() })
		defer timer.Stop()
		full, fullErr = cmd.CombinedOutput()
	})

	// The crashed run: killed once its agents enforce.
	crash := demo()
	var crashOut bytes.Buffer
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	crash.Stdout, crash.Stderr = pw, pw
	if err := crash.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	reached := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			crashOut.WriteString(sc.Text() + "\n")
			if !sent && strings.Contains(sc.Text(), "Traffic the policy allows") {
				reached <- true
				sent = true
			}
		}
		if !sent {
			reached <- false
		}
	}()
	select {
	case ok := <-reached:
		if !ok {
			t.Errorf("the run to be killed ended early:\n%s", crashOut.String())
		}
	case <-time.After(2 * time.Minute):
		t.Errorf("the run to be killed did not reach its traffic in 2 minutes")
	}
	crash.Process.Signal(syscall.SIGKILL)
	crash.Wait()
	runs, _ := filepath.Glob(filepath.Join(state, "*", "resources"))
	var left []string
	for _, r := range runs {
		if filepath.Base(filepath.Dir(r)) != itoa(crash.Process.Pid) {
			continue
		}
		b, _ := os.ReadFile(r)
		left = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	if len(left) < 9 {
		t.Fatalf("the killed run recorded %d resources, want its 9 namespaces and more: %q", len(left), left)
	}
	wg.Wait()
	out := string(full)
	if fullErr != nil {
		t.Errorf("demo: %v\n%s", fullErr, out)
	}
	for _, want := range []string{"receiver: signature valid, firing alert", "count 2, open; deliveries received: 1",
		"http://127.0.0.1:", "admin token: egadm1.", "Cleaned up."} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}

	if out, err := demo("--clean").CombinedOutput(); err != nil {
		t.Errorf("eastguard-demo --clean: %v\n%s", err, out)
	}
	for _, l := range left {
		kind, value, _ := strings.Cut(l, " ")
		path := map[string]string{"netns": "/run/netns/" + value, "bpffs": value, "dir": value}[kind]
		if kind == "pid" {
			// Only a process still running one of ours counts: PIDs
			// are reused.
			if comm, err := os.ReadFile("/proc/" + value + "/comm"); err == nil &&
				(strings.HasPrefix(string(comm), "eastguard-") || strings.HasPrefix(string(comm), "nsenter")) {
				t.Errorf("after --clean, the killed run's process %s (%s) still runs", value, strings.TrimSpace(string(comm)))
			}
			continue
		}
		if _, err := os.Stat(path); err == nil {
			t.Errorf("after --clean, the killed run's %s %s is still there", kind, value)
		}
	}
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("state directory not emptied: %v", entries)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
