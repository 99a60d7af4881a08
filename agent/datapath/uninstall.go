package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrUninstallRefused is matched (errors.Is) when Uninstall refused and
// changed nothing: the directory is not on a bpffs (it cannot hold an
// agent's pins, and whatever it holds is not the agent's to remove), or an
// agent runs on it (then ErrInUse matches too).
var ErrUninstallRefused = errors.New("refusing to uninstall")

// linkPinName is the name of a link pin the agent makes (hook.String).
var linkPinName = regexp.MustCompile(`^tcx-[0-9]+-(ingress|egress)$`)

// Uninstall removes an agent's enforcement: it detaches every program the
// agent pinned under dir and removes the agent's pins. It works without
// an open Datapath (eastguard-agent --uninstall) and is idempotent: a
// missing dir is nothing to do.
//
// It refuses, changing nothing (ErrUninstallRefused), when dir is not a
// directory on a bpffs, or when an agent runs on it (ErrInUse, naming its
// PID: removing the pins under a running agent would not even stop
// enforcement until it exits, and it would then claim to leave it).
// Only the names the agent creates are removed (its maps, links/tcx-*);
// anything else under dir is left, and so is dir then.
func Uninstall(dir string, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	dir = filepath.Clean(dir)
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		log.Info("nothing to uninstall", zap.String("bpffs-dir", dir))
		return nil
	}
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory; --bpffs-dir is the agent's pin directory", ErrUninstallRefused, dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("uninstall: statfs %s: %w", dir, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("%w: %s is not on a bpffs (filesystem magic %#x, want %#x), so it holds no agent's pins; --bpffs-dir is the agent's pin directory",
			ErrUninstallRefused, dir, uint32(st.Type), uint32(bpffsMagic))
	}
	lock, err := lockDir(dir)
	if err != nil {
		if errors.Is(err, ErrInUse) {
			return fmt.Errorf("%w: %w; stop it first (enforcement would stay until it exits)", ErrUninstallRefused, err)
		}
		return fmt.Errorf("uninstall: %w", err)
	}
	defer lock.release()
	return removePins(dir, log)
}

// removePins detaches the agent's links and removes its pins under dir;
// the caller holds dir's lock.
func removePins(dir string, log *zap.Logger) error {
	names, err := pinnedMapNames()
	if err != nil {
		return err
	}
	var errs []error
	linkDir := filepath.Join(dir, linksDir)
	entries, err := os.ReadDir(linkDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read pinned links: %w", err)
	}
	detached := 0
	for _, e := range entries {
		if !linkPinName.MatchString(e.Name()) {
			continue
		}
		path := filepath.Join(linkDir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned link %s: %w", path, err))
			continue
		}
		// Removing the pin and our last descriptor detaches the program.
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", path, err))
		}
		detached++
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Unlinking the map pins frees the maps.
	for _, name := range names {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin %s: %w", filepath.Join(dir, name), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	_ = os.Remove(linkDir) // fails when something not ours is left in it
	err = os.Remove(dir)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		log.Info("uninstalled: programs detached, pins removed", zap.String("bpffs-dir", dir), zap.Int("links", detached))
		return nil
	}
	left := entriesUnder(dir)
	if len(left) == 0 {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	log.Info("uninstalled: programs detached, pins removed", zap.String("bpffs-dir", dir), zap.Int("links", detached))
	log.Warn("left in place: pins and files the agent did not create, and the directory holding them",
		zap.String("bpffs-dir", dir), zap.Strings("left", left))
	return nil
}

// entriesUnder lists what is in dir, and in its links directory.
func entriesUnder(dir string) []string {
	var out []string
	for _, d := range []string{dir, filepath.Join(dir, linksDir)} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if d == dir && e.Name() == linksDir {
				continue
			}
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

// pinnedMapNames are the maps the agent pins, by name, as the eBPF object
// declares them: what Uninstall may remove.
func pinnedMapNames() ([]string, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load eBPF object: %w", err)
	}
	var names []string
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Uninstall closes d and removes its enforcement (see the package
// function). It keeps d's lock on the directory from Close to the end, so
// no other agent starts on it in between.
func (d *Datapath) Uninstall() error {
	d.mu.Lock()
	lock := d.lock
	d.lock = nil
	d.mu.Unlock()
	err := d.Close()
	if lock == nil { // closed before: the lock is gone
		return errors.Join(err, Uninstall(d.cfg.BPFFSDir, d.log))
	}
	defer lock.release()
	return errors.Join(err, removePins(d.cfg.BPFFSDir, d.log))
}

// CheckPins says whether the pins that keep enforcement in place after
// this process are still there and still this datapath's: the pin of
// every link it holds and of every map. An error names the ones that are
// gone or replaced; closing then ends enforcement on those interfaces
// (the kernel detaches a link whose last pin and descriptor are gone),
// and an agent started later finds no state to adopt.
func (d *Datapath) CheckPins() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	var gone []string
	for h, l := range d.links {
		path := d.pinPath(h)
		if !samePinnedLink(path, l) {
			gone = append(gone, path)
		}
	}
	for name, m := range d.objs.mapsByName() {
		if d.replaced[name] {
			continue // pinned only after the first rule set (finishUpgrade)
		}
		path := filepath.Join(d.cfg.BPFFSDir, name)
		if !samePinnedMap(path, m) {
			gone = append(gone, path)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	slices.Sort(gone)
	return fmt.Errorf("pins removed or replaced under the running agent: %v", gone)
}

func samePinnedLink(path string, l link.Link) bool {
	pinned, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return false
	}
	defer pinned.Close()
	a, errA := pinned.Info()
	b, errB := l.Info()
	return errA == nil && errB == nil && a.ID == b.ID
}

func samePinnedMap(path string, m *ebpf.Map) bool {
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return false
	}
	defer pinned.Close()
	a, errA := pinned.Info()
	b, errB := m.Info()
	if errA != nil || errB != nil {
		return false
	}
	idA, okA := a.ID()
	idB, okB := b.ID()
	return okA && okB && idA == idB
}
