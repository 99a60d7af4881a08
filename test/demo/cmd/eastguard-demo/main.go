// Command eastguard-demo is `make demo`: it plays test/demo's scenario
// (the same one TestPrivilegedDemo checks) with the binaries in --bin,
// narrating on stdout, then forwards a host loopback port to the
// controller's dashboard and prints its URL and the admin token. With
// DEMO_KEEP=1 it keeps everything running until Ctrl-C; otherwise, and on
// Ctrl-C, it removes every namespace, pin and process it made.
//
// Each run records what it makes, as it makes it, in
// /run/eastguard-demo/PID/resources (--state-dir); `eastguard-demo --clean` (make
// demo-clean) stops any run still going and removes what the recorded
// runs left: their processes (by PID, checked to be ours), pins
// (eastguard-agent --uninstall), namespaces and files.
//
// It is a test tool: it imports test/demo and the test helpers, never
// agent/... or controller/... directly.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/test/demo"
	"github.com/eastguard/eastguard/test/harness"
)

func main() {
	bin := flag.String("bin", "bin", "directory of eastguard-controller, eastguard-agent and egctl")
	clean := flag.Bool("clean", false, "stop any running demo and remove what every recorded run left, then exit")
	stateRoot := flag.String("state-dir", "/run/eastguard-demo", "where each run records what it makes (a directory per run, named by its PID), for --clean")
	listen := flag.String("listen", "127.0.0.1:8080", "host address the dashboard is forwarded from (a free port is taken if it is busy)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the demo needs root (network namespaces, eBPF): sudo make demo")
		os.Exit(1)
	}
	if *clean {
		os.Exit(cleanAll(*stateRoot, *bin))
	}
	os.Exit(play(*stateRoot, *bin, *listen, os.Getenv("DEMO_KEEP") == "1"))
}

func play(stateRoot, binDir, listen string, keep bool) int {
	start := time.Now()
	bin := map[string]string{}
	for _, b := range []string{"eastguard-controller", "eastguard-agent", "egctl"} {
		p, err := filepath.Abs(filepath.Join(binDir, b))
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "eastguard-demo: %s: %v (run make build first)\n", b, err)
			return 1
		}
		bin[b] = p
	}
	state := filepath.Join(stateRoot, strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(state, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "eastguard-demo: %v\n", err)
		return 1
	}
	rec, err := newRecorder(filepath.Join(state, "resources"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "eastguard-demo: %v\n", err)
		return 1
	}
	work, err := os.MkdirTemp("", "eastguard-demo-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "eastguard-demo: %v\n", err)
		return 1
	}
	rec.record("dir", work)

	t := newTB(os.Stderr)
	t.onTemp = func(dir string) { rec.record("dir", dir) }
	t.Cleanup(func() {
		os.RemoveAll(work)
		rec.close()
		os.RemoveAll(state)
	})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)

	var res *demo.Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		res = demo.Run(t, demo.Config{Bin: bin, WorkDir: work, Out: os.Stdout, Color: isTerminal(os.Stdout), Record: rec.record})
	}()
	select {
	case <-done:
	case s := <-sigs:
		fmt.Printf("\n%s: cleaning up\n", s)
		t.runCleanups()
		return 130
	}
	if t.Failed() {
		fmt.Println("\nThe demo failed (above: what and where). Cleaning up.")
		t.runCleanups()
		return 1
	}

	lis, err := forward(listen, res.ControlNS)
	if err != nil {
		t.Errorf("dashboard forward: %v", err)
		t.runCleanups()
		return 1
	}
	t.Cleanup(func() { lis.Close() })
	url := "http://" + lis.Addr().String() + "/"
	heading := "== The dashboard"
	if isTerminal(os.Stdout) {
		heading = "\033[1m" + heading + "\033[0m"
	}
	fmt.Printf("\n%s\n   %s   (forwarded into the controller's namespace, %s there)\n", heading, url, harness.ControllerHTTP)
	fmt.Printf("   admin token: %s   (from %s)\n", res.AdminToken, res.AdminConf)
	fmt.Printf("\n   measured: SSH attempt to signed alert %v; policy change on both nodes %v; whole run %v\n",
		res.AlertDelay.Round(time.Millisecond), res.Propagation.Round(time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	if keep {
		fmt.Printf("\n   DEMO_KEEP=1: everything stays up. Try, in another terminal:\n")
		fmt.Printf("     sudo nsenter --net=/run/netns/%s -- env EGCTL_CONFIG=%s %s flows\n", res.ControlNS.Name, res.AdminConf, bin["egctl"])
		fmt.Printf("   Ctrl-C (or sudo make demo-clean) stops it and removes everything.\n")
		s := <-sigs
		fmt.Printf("\n%s: cleaning up\n", s)
	}
	t.runCleanups()
	fmt.Println("\nCleaned up. The same scenario, with assertions: sudo make e2e")
	return 0
}

// forward listens on the host's addr (or any free loopback port if it is
// busy) and copies each connection to the controller's HTTP listener
// inside ns: the dial is made on a thread inside the namespace.
func forward(addr string, ns *netns.NS) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		if lis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
	}
	netns.Forward(lis, func() (up net.Conn, err error) {
		err = ns.Do(func() (err error) {
			up, err = net.DialTimeout("tcp", harness.ControllerHTTP, 5*time.Second)
			return err
		})
		return up, err
	})
	return lis, nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// recorder appends "kind value" lines to the run's resources file, synced
// at once: a run killed a moment later still leaves the line for --clean.
type recorder struct {
	mu sync.Mutex
	f  *os.File
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &recorder{f: f}, nil
}

func (r *recorder) record(kind, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	fmt.Fprintf(r.f, "%s %s\n", kind, value)
	r.f.Sync()
}

func (r *recorder) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// cleanAll stops every run still going (SIGTERM: it cleans up after
// itself) and removes what the recorded runs left.
func cleanAll(stateRoot, binDir string) int {
	runs, _ := filepath.Glob(filepath.Join(stateRoot, "*"))
	status := 0
	for _, dir := range runs {
		if pid, err := strconv.Atoi(filepath.Base(dir)); err == nil && isOurs(pid, "eastguard-demo") {
			syscall.Kill(pid, syscall.SIGTERM)
			waitGone(pid, 15*time.Second)
		}
		if err := cleanRun(dir, binDir); err != nil {
			fmt.Fprintf(os.Stderr, "eastguard-demo --clean: %s: %v\n", dir, err)
			status = 1
		}
	}
	fmt.Printf("demo cleaned up (%d recorded runs)\n", len(runs))
	return status
}

func cleanRun(dir, binDir string) error {
	f, err := os.Open(filepath.Join(dir, "resources"))
	if errors.Is(err, os.ErrNotExist) {
		return os.RemoveAll(dir)
	} else if err != nil {
		return err
	}
	byKind := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if kind, value, ok := strings.Cut(sc.Text(), " "); ok {
			byKind[kind] = append(byKind[kind], value)
		}
	}
	f.Close()
	var errs []error
	// Processes first: an agent must be gone before --uninstall (it
	// refuses while an agent holds the directory). A recorded PID is only
	// signalled while it still runs one of our binaries: PIDs are reused.
	for _, p := range byKind["pid"] {
		if pid, err := strconv.Atoi(p); err == nil && (isOurs(pid, "eastguard-") || isOurs(pid, "nsenter")) {
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
	agent := filepath.Join(binDir, "eastguard-agent")
	for _, d := range byKind["bpffs"] {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if out, err := exec.Command(agent, "--uninstall", "--bpffs-dir", d).CombinedOutput(); err != nil {
			// Without the agent binary, removing the pins detaches what
			// they hold.
			if rerr := os.RemoveAll(d); rerr != nil {
				errs = append(errs, fmt.Errorf("uninstall %s: %v: %s; remove: %w", d, err, out, rerr))
			}
		}
	}
	for _, ns := range byKind["netns"] {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, out))
		}
	}
	for _, d := range byKind["dir"] {
		if strings.HasPrefix(d, os.TempDir()+"/eastguard-demo-") {
			os.RemoveAll(d)
		}
	}
	if len(errs) == 0 {
		return os.RemoveAll(dir)
	}
	return errors.Join(errs...)
}

// isOurs reports whether pid runs a program whose name starts with prefix.
func isOurs(pid int, prefix string) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(comm)), prefix)
}

func waitGone(pid int, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		// A zombie child still answers signal 0; its stat says Z.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
	}
}

// tb is the testing.TB the scenario gets outside `go test`: failures are
// printed, FailNow ends the scenario's goroutine (as in a test), and
// cleanups run, last registered first, when runCleanups is called.
// The embedded interface is nil: it only supplies testing.TB's unexported
// method; every exported one is defined below.
type tb struct {
	testing.TB
	out    io.Writer
	ctx    context.Context
	cancel context.CancelFunc
	// onTemp is told each directory TempDir makes.
	onTemp func(dir string)

	mu       sync.Mutex
	failed   bool
	cleanups []func()
	tmp      int
	once     sync.Once
}

func newTB(out io.Writer) *tb {
	ctx, cancel := context.WithCancel(context.Background())
	return &tb{out: out, ctx: ctx, cancel: cancel}
}

func (t *tb) runCleanups() {
	t.once.Do(func() {
		t.cancel()
		for {
			t.mu.Lock()
			if len(t.cleanups) == 0 {
				t.mu.Unlock()
				return
			}
			f := t.cleanups[len(t.cleanups)-1]
			t.cleanups = t.cleanups[:len(t.cleanups)-1]
			t.mu.Unlock()
			func() {
				defer func() {
					if r := recover(); r != nil {
						fmt.Fprintf(t.out, "cleanup: %v\n", r)
					}
				}()
				f()
			}()
		}
	})
}

func (t *tb) ArtifactDir() string { return t.TempDir() }
func (t *tb) Attr(_, _ string)    {}
func (t *tb) Cleanup(f func())    { t.mu.Lock(); t.cleanups = append(t.cleanups, f); t.mu.Unlock() }
func (t *tb) Error(args ...any)   { t.Log(args...); t.Fail() }
func (t *tb) Errorf(f string, a ...any) {
	t.Logf(f, a...)
	t.Fail()
}
func (t *tb) Fail()                     { t.mu.Lock(); t.failed = true; t.mu.Unlock() }
func (t *tb) FailNow()                  { t.Fail(); runtime.Goexit() }
func (t *tb) Failed() bool              { t.mu.Lock(); defer t.mu.Unlock(); return t.failed }
func (t *tb) Fatal(args ...any)         { t.Log(args...); t.FailNow() }
func (t *tb) Fatalf(f string, a ...any) { t.Logf(f, a...); t.FailNow() }
func (t *tb) Helper()                   {}
func (t *tb) Log(args ...any)           { fmt.Fprintln(t.out, append([]any{"eastguard-demo:"}, args...)...) }
func (t *tb) Logf(f string, a ...any)   { fmt.Fprintf(t.out, "eastguard-demo: "+f+"\n", a...) }
func (t *tb) Name() string              { return "eastguard-demo" }
func (t *tb) Setenv(k, v string)        { os.Setenv(k, v) }
func (t *tb) Chdir(dir string)          { os.Chdir(dir) }
func (t *tb) Skip(args ...any)          { t.Log(args...); t.SkipNow() }
func (t *tb) SkipNow()                  { runtime.Goexit() }
func (t *tb) Skipf(f string, a ...any)  { t.Logf(f, a...); t.SkipNow() }
func (t *tb) Skipped() bool             { return false }
func (t *tb) Context() context.Context  { return t.ctx }
func (t *tb) Output() io.Writer         { return t.out }
func (t *tb) TempDir() string {
	t.mu.Lock()
	t.tmp++
	n := t.tmp
	t.mu.Unlock()
	dir, err := os.MkdirTemp("", fmt.Sprintf("eastguard-demo-tmp%d-", n))
	if err != nil {
		t.Fatalf("TempDir: %v", err)
	}
	if t.onTemp != nil {
		t.onTemp(dir)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
