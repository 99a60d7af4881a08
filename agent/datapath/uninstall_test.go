package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/testutil"
)

// TestPrivilegedOneAgentPerPinDirectory: while an agent (an open Datapath)
// runs, a second one on the same --bpffs-dir and an uninstall of it are
// refused, naming its PID, and change nothing; once it has stopped both
// work.
func TestPrivilegedOneAgentPerPinDirectory(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	cfg := h.d.cfg
	pid := fmt.Sprintf("PID %d", os.Getpid())

	cfg.Logger = zaptest.NewLogger(t)
	if d, err := h.open(cfg); err == nil {
		d.Close()
		t.Errorf("a second agent opened %s", cfg.BPFFSDir)
	} else if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), pid) {
		t.Errorf("second agent on %s: err = %v, want ErrInUse naming %s", cfg.BPFFSDir, err, pid)
	}

	err := Uninstall(cfg.BPFFSDir, zaptest.NewLogger(t))
	if !errors.Is(err, ErrUninstallRefused) || !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), pid) {
		t.Errorf("uninstall under a running agent: err = %v, want a refusal naming %s", err, pid)
	}
	if _, err := os.Stat(filepath.Join(cfg.BPFFSDir, "eg_state")); err != nil {
		t.Errorf("the refused uninstall removed pins: %v", err)
	}
	if got := attachedPrograms(t, h, h.ifindex["web0"]); len(got) != 2 {
		t.Errorf("the refused uninstall detached programs: %v", got)
	}
	if err := h.d.CheckPins(); err != nil {
		t.Errorf("CheckPins after the refusal: %v", err)
	}

	// Stopped: another agent may take over, and uninstall works.
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if h.d, err = h.open(cfg); err != nil {
		t.Fatalf("Open after the first agent stopped: %v", err)
	}
	h.d.Close()
	if err := Uninstall(cfg.BPFFSDir, zaptest.NewLogger(t)); err != nil {
		t.Errorf("uninstall after the agent stopped: %v", err)
	}
	if _, err := os.Stat(cfg.BPFFSDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after uninstall: %v", cfg.BPFFSDir, err)
	}
}

// TestPrivilegedUninstallRefusesOtherDirectories: --uninstall pointed at a
// directory that is not on a bpffs (the test's ext4 temporary directory,
// a tmpfs) refuses and leaves every file, even ones named like the agent's
// pins.
func TestPrivilegedUninstallRefusesOtherDirectories(t *testing.T) {
	testutil.RequirePrivileged(t)
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, 0) })
	for _, dir := range []string{t.TempDir(), tmpfs} {
		files := []string{"eg_state", "eg_policy", "precious.db", filepath.Join("data", "more.db")}
		for _, f := range files {
			p := filepath.Join(dir, f)
			os.MkdirAll(filepath.Dir(p), 0o700)
			if err := os.WriteFile(p, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		err := Uninstall(dir, zaptest.NewLogger(t))
		if !errors.Is(err, ErrUninstallRefused) || !strings.Contains(err.Error(), "not on a bpffs") {
			t.Errorf("uninstall of %s: err = %v, want a refusal saying it is not on a bpffs", dir, err)
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("uninstall of %s removed %s: %v", dir, f, err)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "eg_state")
	os.WriteFile(file, nil, 0o600)
	if err := Uninstall(file, nil); !errors.Is(err, ErrUninstallRefused) {
		t.Errorf("uninstall of a file: err = %v, want a refusal", err)
	}
}

// TestPrivilegedUninstallLeavesForeignPins: on the agent's bpffs directory,
// uninstall removes the pins the agent made and nothing else: a pin of
// another program beside them, or among the links, stays, and so does the
// directory holding it.
func TestPrivilegedUninstallLeavesForeignPins(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	dir := h.d.cfg.BPFFSDir
	foreign := []string{filepath.Join(dir, "cilium_calls"), filepath.Join(dir, linksDir, "someone-elses")}
	for _, p := range foreign {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "foreign", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		err = m.Pin(p)
		m.Close() // the pin keeps the map
		if err != nil {
			t.Fatal(err)
		}
	}
	// Before the harness's own cleanup, which wants the directory gone.
	t.Cleanup(func() {
		for _, p := range foreign {
			os.Remove(p)
		}
		os.Remove(filepath.Join(dir, linksDir))
		os.Remove(dir)
	})
	for _, p := range foreign {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("foreign pin %s: %v", p, err)
		}
	}

	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(dir, zaptest.NewLogger(t)); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	for _, p := range foreign {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("uninstall removed a pin the agent did not make: %v", err)
		}
	}
	names, err := pinnedMapNames()
	if err != nil || len(names) < 10 {
		t.Fatalf("the agent's map names: %v %v", names, err)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin %s left: %v", name, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, linksDir))
	if len(entries) != 1 || entries[0].Name() != "someone-elses" {
		t.Errorf("links directory holds %v, want only the foreign pin", entries)
	}
	for name, idx := range h.ifindex {
		if got := attachedPrograms(t, h, idx); len(got) != 0 {
			t.Errorf("%s still has programs after Uninstall: %v", name, got)
		}
	}
}
