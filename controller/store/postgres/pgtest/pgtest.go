// Package pgtest gives tests a throw-away PostgreSQL: one cluster per
// test binary, made with initdb in a temporary directory and started on
// first use, listening only on a Unix socket in that directory; a fresh
// database per test (DSN), dropped when the test ends. Main stops the
// cluster and removes its directory when the tests end, also when they
// fail; should the test binary die instead, the server gets SIGQUIT
// (the kernel's parent-death signal) and stops by itself.
//
// EG_PG_SETTINGS adds server settings (name=value, separated by spaces)
// for benchmarks.
//
// As root, the server runs as the postgres user (initdb refuses root).
// Where the PostgreSQL binaries are missing (no initdb under
// /usr/lib/postgresql/*/bin nor on PATH), the tests that need one are
// skipped with a reason that says so; any other failure fails them.
//
// Only tests import it; it imports no Eastguard package.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// cluster is the running server.
type cluster struct {
	dir  string // socket directory, parent of the data directory
	cmd  *exec.Cmd
	done chan struct{} // closed when the server exits
}

var (
	mu      sync.Mutex // guards the variables below
	running *cluster
	// startErr is why the cluster could not start (sticky); errMissing
	// if the binaries are missing.
	startErr error
	started  bool
)

var errMissing = errors.New("PostgreSQL binaries not found (initdb and postgres under /usr/lib/postgresql/*/bin or on PATH; Debian: apt-get install postgresql)")

// Main runs the tests, then stops the cluster if one was started. Use it
// as: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if running != nil {
		if err := running.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			if code == 0 {
				code = 1
			}
		}
		running = nil
	}
	return code
}

// binDir finds the directory of initdb and postgres: the newest
// /usr/lib/postgresql/N/bin, else PATH's.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	return "", errMissing
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// get starts the cluster once; it skips t if the binaries are missing.
func get(t testing.TB) *cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !started {
		started = true
		running, startErr = start()
	}
	if errors.Is(startErr, errMissing) {
		t.Skipf("skipped: %v", startErr)
	}
	if startErr != nil {
		t.Fatalf("throw-away PostgreSQL: %v", startErr)
	}
	return running
}

func start() (*cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "eastguard-pg-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	// As root, everything runs as postgres, which must own the directory.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, the server runs as the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
		"--encoding=UTF8", "--locale=C.UTF-8")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// Unix socket only (no TCP port to collide or expose); the server
	// gets SIGQUIT (an immediate shutdown) if this process dies.
	args := []string{"-D", data, "-k", dir, "-c", "listen_addresses=", "-c", "max_connections=200", "-c", "shared_buffers=128MB"}
	// Benchmarks of a server tuned as docs/OPERATIONS.md advises set
	// more (later settings win), e.g. EG_PG_SETTINGS='shared_buffers=2GB
	// max_wal_size=8GB'.
	for _, kv := range strings.Fields(os.Getenv("EG_PG_SETTINGS")) {
		if !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("EG_PG_SETTINGS: %q is not name=value", kv)
		}
		args = append(args, "-c", kv)
	}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
	c.cmd.Dir = dir
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), c.dsn("postgres"))
		if err == nil {
			conn.Close(context.Background())
			break
		}
		select {
		case <-c.done:
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			return nil, fmt.Errorf("postgres exited at start: %s", log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("postgres not accepting connections after 60s: %w", err)
		}
	}
	ok = true
	return c, nil
}

// dsn is the URL of database db on the cluster's socket.
func (c *cluster) dsn(db string) string {
	return "postgres:///" + db + "?host=" + url.QueryEscape(c.dir) + "&user=postgres&sslmode=disable"
}

// stop shuts the server down (fast: SIGINT) and removes its directory.
func (c *cluster) stop() error {
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	return os.RemoveAll(c.dir)
}

// DSN creates a fresh, empty database for the test and returns its URL
// (a Unix socket, user postgres, no password). The database is dropped
// when the test ends; close every pool on it before (t.Cleanup runs last
// registered first, so open pools after calling DSN).
func DSN(t testing.TB) string {
	t.Helper()
	c := get(t)
	var b [6]byte
	rand.Read(b[:])
	name := "eg_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	admin := func(stmt string) error {
		conn, err := pgx.Connect(ctx, c.dsn("postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, stmt)
		return err
	}
	if err := admin("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		if err := admin("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return c.dsn(name)
}

// ServerCPU is the CPU time (user and system) the throw-away cluster's
// processes have used so far: the postmaster, its live children (the
// backends, the WAL writer, the checkpointer, ...) and the children it has
// reaped. Benchmarks take the difference over a run, to tell the
// server's share of the work from the Go side's (the test binary's own
// rusage).
func ServerCPU(tb testing.TB) time.Duration {
	tb.Helper()
	c := get(tb)
	pid := c.cmd.Process.Pid
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatalf("server CPU: %v", err)
	}
	var ticks int64
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(p)
		if err != nil {
			continue // gone meanwhile
		}
		switch {
		case p == pid:
			// utime, stime, cutime, cstime: its own and its reaped children's.
			ticks += f[13] + f[14] + f[15] + f[16]
		case f[3] == int64(pid):
			ticks += f[13] + f[14]
		}
	}
	// Linux reports these in clock ticks of USER_HZ, 100 on every
	// architecture Go supports on Linux.
	return time.Duration(ticks) * 10 * time.Millisecond
}

// procStat reads /proc/PID/stat as numbers, field i at index i (0-based,
// as proc(5) numbers them from 1: f[3] is the parent, f[13] utime); the
// command, which may hold spaces, is left out.
func procStat(pid int) ([]int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := []int64{int64(pid), 0}
	for _, w := range strings.Fields(s[end+1:]) {
		n, _ := strconv.ParseInt(w, 10, 64)
		f = append(f, n)
	}
	if len(f) < 17 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}
