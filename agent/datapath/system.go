package datapath

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/caps"
)

// Sentinel errors callers (and the agent's exit code) branch on.
var (
	ErrPrivileges  = errors.New("insufficient privileges")
	ErrUnsupported = errors.New("kernel not supported")
)

// checkPrivileges fails early, with the capabilities named, instead of
// letting the first map creation fail with a bare EPERM.
func checkPrivileges() error {
	eff, err := caps.Effective()
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	if eff.CanLoadBPF() {
		return nil
	}
	return fmt.Errorf("%w: the datapath needs root, CAP_SYS_ADMIN, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (effective set is %#x)",
		ErrPrivileges, uint64(eff))
}

// checkKernel refuses kernels without BTF or tcx, naming what is missing.
// tcx (Linux 6.6) is what lets us pin links so enforcement survives the
// agent; BTF is required for the typed maps of our object.
func checkKernel() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fmt.Errorf("%w: no kernel BTF (/sys/kernel/btf/vmlinux; build with CONFIG_DEBUG_INFO_BTF=y): %v", ErrUnsupported, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "eg_probe_tcx",
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: load a probe program: %v", ErrPrivileges, err)
		}
		return fmt.Errorf("%w: cannot load a tc program: %v", ErrUnsupported, err)
	}
	defer prog.Close()
	// An interface index that cannot exist: a kernel with tcx answers
	// ENODEV, one without it answers that the attach type is unknown.
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("%w: no tcx (Linux 6.6 or later is required)", ErrUnsupported)
	}
	if errors.Is(err, unix.ENODEV) {
		return nil
	}
	return fmt.Errorf("probe tcx: %w", err)
}

const bpffsMagic = 0xcafe4a11

// ensureBPFFS makes sure dir exists on a bpffs mount. When /sys/fs/bpf has
// no bpffs (as on minimal VMs), it mounts one there, as Cilium does, and
// says so.
func ensureBPFFS(dir string, log *zap.Logger) error {
	dir = filepath.Clean(dir)
	root := findBPFFSRoot(dir)
	if root == "" {
		const def = "/sys/fs/bpf"
		if !strings.HasPrefix(dir+"/", def+"/") {
			return fmt.Errorf("%s is not on a bpffs mount; use a directory under a mounted bpffs (e.g. %s)", dir, def)
		}
		if err := os.MkdirAll(def, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", def, err)
		}
		if err := unix.Mount("bpf", def, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", def, err)
		}
		log.Info("mounted bpffs: none was mounted", zap.String("path", def))
	}
	if err := os.MkdirAll(filepath.Join(dir, linksDir), 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	return nil
}

// findBPFFSRoot returns the closest existing ancestor of dir (or dir) that
// is on a bpffs, or "" if the closest existing ancestor is not.
func findBPFFSRoot(dir string) string {
	for p := dir; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			if uint32(st.Type) == bpffsMagic {
				return p
			}
			return ""
		}
		if p == "/" {
			return ""
		}
	}
}
