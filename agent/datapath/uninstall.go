package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
)

// Uninstall removes an agent's enforcement: it detaches every program it
// pinned under dir and removes the pins. It works without an open Datapath
// (eastguard-agent --uninstall) and is idempotent.
func Uninstall(dir string, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	linkDir := filepath.Join(dir, linksDir)
	entries, err := os.ReadDir(linkDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read pinned links: %w", err)
	}
	detached := 0
	for _, e := range entries {
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
	// What is left are map pins: unlinking them frees the maps.
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	log.Info("uninstalled: programs detached, pins removed", zap.String("bpffs-dir", dir), zap.Int("links", detached))
	return nil
}

// Uninstall closes d and removes its enforcement (see the package
// function).
func (d *Datapath) Uninstall() error {
	return errors.Join(d.Close(), Uninstall(d.cfg.BPFFSDir, d.log))
}
