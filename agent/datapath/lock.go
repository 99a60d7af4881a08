package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInUse is matched (errors.Is) by an *InUseError: a running agent holds
// the bpffs directory.
var ErrInUse = errors.New("bpffs directory in use by a running agent")

// InUseError says which process holds a bpffs directory.
type InUseError struct {
	Dir string
	PID int // 0 when it could not be found out
}

func (e *InUseError) Error() string {
	who := "an eastguard-agent"
	if e.PID > 0 {
		who = fmt.Sprintf("an eastguard-agent (PID %d)", e.PID)
	}
	return fmt.Sprintf("%s is running on %s", who, e.Dir)
}

func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// dirLock is an exclusive flock on a pin directory. An agent holds one on
// its --bpffs-dir for as long as it runs, so that a second agent, or an
// --uninstall, on the same directory is refused instead of pulling pins
// from under it. The kernel drops the lock when the process dies, however
// it dies, so a crashed agent never leaves the directory locked.
type dirLock struct{ f *os.File }

// lockDir takes the lock on dir, an existing directory, without waiting.
// A directory removed and made again while the lock was being taken (an
// uninstall finishing as the agent starts) is locked again.
func lockDir(dir string) (*dirLock, error) {
	for range 3 {
		f, err := os.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &InUseError{Dir: dir, PID: lockHolder(dir)}
			}
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		var locked, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &locked); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if err := unix.Stat(dir, &now); err == nil && now.Ino == locked.Ino && now.Dev == locked.Dev {
			return &dirLock{f: f}, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock %s: the directory keeps being replaced", dir)
}

// release drops the lock. Safe on nil.
func (l *dirLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
	return err
}

// lockHolder finds the process holding the flock on dir in /proc/locks
// (fields: id, FLOCK, ADVISORY, WRITE, pid, major:minor:inode, ...); 0 if
// it cannot tell.
func lockHolder(dir string) int {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" {
			continue // waiters ("->") and POSIX locks are not ours
		}
		if fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil {
			return pid
		}
	}
	return 0
}
