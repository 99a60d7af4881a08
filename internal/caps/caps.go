// Package caps reads the process's effective Linux capabilities: the agent
// checks them before it touches the kernel, and the privileged tests before
// they run. It must not import anything of the project.
package caps

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
)

// Capability numbers (linux/capability.h).
const (
	NetAdmin = 12
	SysAdmin = 21
	Perfmon  = 38
	BPF      = 39
)

// Set is a capability bit set.
type Set uint64

// Has reports whether c is in the set.
func (s Set) Has(c uint) bool { return s&(1<<c) != 0 }

// Effective returns the effective capabilities of this process.
func Effective() (Set, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return Set(n), err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// CanLoadBPF reports whether s may create maps, load and attach tc
// programs: CAP_SYS_ADMIN, or CAP_BPF with CAP_NET_ADMIN and CAP_PERFMON.
func (s Set) CanLoadBPF() bool {
	return s.Has(SysAdmin) || s.Has(BPF) && s.Has(NetAdmin) && s.Has(Perfmon)
}
