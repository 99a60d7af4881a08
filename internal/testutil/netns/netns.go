// Package netns builds throw-away network topologies for tests: network
// namespaces, veth pairs, addresses and routes, removed when the test ends,
// also when it fails. Names start with "eg" plus a random suffix, so
// concurrent runs do not collide. Tests only use addresses in
// 10.250.0.0/16 and fd0e::/16 inside namespaces made here.
//
// Two ways to run a program in a namespace, and the difference matters:
// Exec uses `ip netns exec`, which also gives the program a private mount
// namespace with a fresh sysfs, so it cannot see the host's bpffs; fine for
// traffic tools. Nsenter enters only the network namespace; agents must be
// started that way or their pins vanish with them.
//
// Only tests import it; it must not import anything under agent/ or
// controller/.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// NS is a named network namespace (/run/netns/<Name>).
type NS struct {
	Name string
}

// Suffix returns a short random hex string for unique names.
func Suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a namespace with loopback up and deletes it (and every
// interface in it) at the end of the test.
func New(t testing.TB, label string) *NS {
	t.Helper()
	n := &NS{Name: fmt.Sprintf("eg%s-%s", Suffix(), label)}
	Run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.Name, err, out)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// Path is the namespace's bind mount.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// IP runs `ip -n <ns> args...` and fails the test on error.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec returns a command running in the namespace under `ip netns exec`
// (see the package comment: not for agents).
func (n *NS) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Nsenter returns a command that enters only the network namespace and
// keeps the host's mounts, bpffs included.
func (n *NS) Nsenter(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Do runs f on an OS thread inside the namespace.
func (n *NS) Do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // never reuse a thread left in the wrong namespace
		return fmt.Errorf("restore namespace: %w (after %v)", err, ferr)
	}
	return ferr
}

// Veth creates a veth pair with one end in each namespace, both up.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	Run(t, "ip", "link", "add", aName, "netns", a.Name, "type", "veth", "peer", "name", bName, "netns", b.Name)
	a.IP(t, "link", "set", aName, "up")
	b.IP(t, "link", "set", bName, "up")
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Forward copies every connection lis accepts to one that dial makes,
// both ways (a half-close passes through), until lis is closed. The
// listener and the dial may each be in any namespace: a socket keeps the
// namespace it was made in, so a listener made inside n.Do serves that
// namespace, and a dial made inside one reaches it.
func Forward(lis net.Listener, dial func() (net.Conn, error)) {
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial()
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, c)
					if w, ok := up.(interface{ CloseWrite() error }); ok {
						w.CloseWrite()
					}
				}()
				io.Copy(c, up)
			}()
		}
	}()
}
