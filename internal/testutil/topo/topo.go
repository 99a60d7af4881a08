// Package topo builds small simulated clusters for end-to-end tests: each
// node is a network namespace that routes for its workloads, each workload
// a namespace joined to its node by a veth pair whose host side carries the
// agent's programs. Nodes can be linked to each other. Everything is
// removed when the test ends.
//
// Addresses (all inside namespaces made here): workload j of node i has
// 10.250.(16i+j).2/24 and fd0e:i:j::2/64, its node side .1 and ::1. Nodes
// are linked over 10.250.0.0/24 and fd0e::/64, node i at .i and ::i.
//
// Only tests import it; it must not import anything under agent/ or
// controller/.
package topo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/netns"
)

// Node is a simulated host.
type Node struct {
	Name      string
	Index     int
	NS        *netns.NS
	Workloads map[string]*Workload
	// BPFFSDir is where this node's agent pins; unique per test run.
	BPFFSDir string
	// Fabric addresses (set once linked).
	Addr4, Addr6 netip.Addr
}

// Workload is a simulated container.
type Workload struct {
	Name      string
	Node      *Node
	NS        *netns.NS
	HostIface string // on the node side
	Addr4     netip.Addr
	Addr6     netip.Addr
}

// Quick is how long a probe that should be dropped waits: a dropped SYN
// shows as a timeout.
const Quick = 700 * time.Millisecond

// MustPass fails the test, naming what, unless the probe's err is nil.
func MustPass(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: want it to pass, got %v", what, err)
	}
}

// MustDrop fails the test, naming what, unless the probe got no answer.
func MustDrop(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrNoAnswer) {
		t.Errorf("%s: want it dropped (no answer), got %v", what, err)
	}
}

// Lab is the workload as testutil.LabPolicy places it.
func (w *Workload) Lab() testutil.LabWorkload {
	return testutil.LabWorkload{Name: w.Name, Node: w.Node.Name, Interface: w.HostIface,
		Addrs: []string{w.Addr4.String(), w.Addr6.String()}}
}

// LabPolicy is testutil.LabPolicy for these workloads.
func LabPolicy(full bool, ws ...*Workload) string {
	lab := testutil.Lab{Full: full}
	for _, w := range ws {
		lab.Workloads = append(lab.Workloads, w.Lab())
	}
	return testutil.LabPolicy(lab)
}

// NewNode creates a node namespace that forwards IPv4 and IPv6.
func NewNode(t testing.TB, name string, index int) *Node {
	t.Helper()
	n := &Node{
		Name:      name,
		Index:     index,
		NS:        netns.New(t, name),
		Workloads: map[string]*Workload{},
		BPFFSDir:  "/sys/fs/bpf/eg-e2e-" + netns.Suffix() + "-" + name,
	}
	Sysctl(t, n.NS, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	noDAD(t, n.NS)
	return n
}

// Sysctl sets kernel parameters inside a namespace.
func Sysctl(t testing.TB, ns *netns.NS, kv ...string) {
	t.Helper()
	for _, s := range kv {
		if out, err := ns.Exec(context.Background(), "sysctl", "-q", "-w", s).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v: %s", s, ns.Name, err, out)
		}
	}
}

// noDAD turns off duplicate address detection for interfaces created in
// ns from now on: tests start traffic at once, and a link-local address
// still tentative delays neighbour discovery by a second.
func noDAD(t testing.TB, ns *netns.NS) {
	t.Helper()
	Sysctl(t, ns, "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
}

// newWorkload makes workload number index (1..15) of the node: its
// namespace and the veth pair to the node, with its gateway addresses.
func (n *Node) newWorkload(t testing.TB, name string, index int) (w *Workload, gw4, gw6 netip.Addr) {
	t.Helper()
	if index < 1 || index > 15 {
		t.Fatalf("workload index %d out of 1..15", index)
	}
	w = &Workload{
		Name:      name,
		Node:      n,
		NS:        netns.New(t, name),
		HostIface: fmt.Sprintf("eg%d-%s", n.Index, name),
		Addr4:     netip.AddrFrom4([4]byte{10, 250, byte(16*n.Index + index), 2}),
		Addr6:     netip.MustParseAddr(fmt.Sprintf("fd0e:%d:%d::2", n.Index, index)),
	}
	if len(w.HostIface) > 15 {
		t.Fatalf("interface name %q too long", w.HostIface)
	}
	noDAD(t, w.NS)
	netns.Veth(t, n.NS, w.HostIface, w.NS, "eth0")
	gw4 = netip.AddrFrom4([4]byte{10, 250, byte(16*n.Index + index), 1})
	gw6 = netip.MustParseAddr(fmt.Sprintf("fd0e:%d:%d::1", n.Index, index))
	return w, gw4, gw6
}

// AddWorkload creates workload number index (1..15) on the node.
func (n *Node) AddWorkload(t testing.TB, name string, index int) *Workload {
	t.Helper()
	w, gw4, gw6 := n.newWorkload(t, name, index)
	n.NS.IP(t, "addr", "add", gw4.String()+"/24", "dev", w.HostIface)
	n.NS.IP(t, "-6", "addr", "add", gw6.String()+"/64", "dev", w.HostIface, "nodad")
	w.NS.IP(t, "addr", "add", w.Addr4.String()+"/24", "dev", "eth0")
	w.NS.IP(t, "-6", "addr", "add", w.Addr6.String()+"/64", "dev", "eth0", "nodad")
	w.NS.IP(t, "route", "add", "default", "via", gw4.String())
	w.NS.IP(t, "-6", "route", "add", "default", "via", gw6.String())
	n.Workloads[name] = w
	return w
}

// AddBridgedWorkload creates workload number index (1..15) on the node's
// bridge, as flannel or the bridge CNI plugin make them: its veth a port
// of the bridge egbr<node index>, which holds the workload's gateway
// addresses (the same as AddWorkload's), the workload's MAC in the
// bridge's neighbour table and forwarding database. HostIface is the
// bridge port.
func (n *Node) AddBridgedWorkload(t testing.TB, name string, index int) *Workload {
	t.Helper()
	br := fmt.Sprintf("egbr%d", n.Index)
	if _, err := n.NS.Exec(context.Background(), "ip", "link", "show", br).Output(); err != nil {
		n.NS.IP(t, "link", "add", br, "type", "bridge")
		n.NS.IP(t, "link", "set", br, "up")
	}
	w, gw4, gw6 := n.newWorkload(t, name, index)
	n.NS.IP(t, "addr", "add", gw4.String()+"/24", "dev", br)
	n.NS.IP(t, "-6", "addr", "add", gw6.String()+"/64", "dev", br, "nodad")
	n.NS.IP(t, "link", "set", w.HostIface, "master", br)
	w.NS.IP(t, "addr", "add", w.Addr4.String()+"/24", "dev", "eth0")
	w.NS.IP(t, "-6", "addr", "add", w.Addr6.String()+"/64", "dev", "eth0", "nodad")
	w.NS.IP(t, "route", "add", "default", "via", gw4.String())
	w.NS.IP(t, "-6", "route", "add", "default", "via", gw6.String())
	f := strings.Fields(w.NS.IP(t, "-br", "link", "show", "eth0"))
	if len(f) < 3 {
		t.Fatalf("ip -br link show eth0 in %s: %q", w.NS.Name, f)
	}
	mac := f[2]
	for _, a := range []netip.Addr{w.Addr4, w.Addr6} {
		n.NS.IP(t, "neigh", "replace", a.String(), "lladdr", mac, "dev", br, "nud", "permanent")
	}
	netns.Run(t, "bridge", "-n", n.NS.Name, "fdb", "replace", mac, "dev", w.HostIface, "master", "static")
	n.Workloads[name] = w
	return w
}

// Link connects two nodes and routes each one's workloads through the
// other.
func Link(t testing.TB, a, b *Node) {
	t.Helper()
	ia, ib := fmt.Sprintf("eg-to%d", b.Index), fmt.Sprintf("eg-to%d", a.Index)
	netns.Veth(t, a.NS, ia, b.NS, ib)
	for _, x := range []struct {
		n     *Node
		iface string
	}{{a, ia}, {b, ib}} {
		x.n.Addr4 = netip.AddrFrom4([4]byte{10, 250, 0, byte(x.n.Index)})
		x.n.Addr6 = netip.MustParseAddr(fmt.Sprintf("fd0e::%d", x.n.Index))
		x.n.NS.IP(t, "addr", "add", x.n.Addr4.String()+"/24", "dev", x.iface)
		x.n.NS.IP(t, "-6", "addr", "add", x.n.Addr6.String()+"/64", "dev", x.iface, "nodad")
	}
	for _, x := range []struct{ from, to *Node }{{a, b}, {b, a}} {
		x.from.NS.IP(t, "route", "add", fmt.Sprintf("10.250.%d.0/20", 16*x.to.Index), "via", x.to.Addr4.String())
		x.from.NS.IP(t, "-6", "route", "add", fmt.Sprintf("fd0e:%d::/32", x.to.Index), "via", x.to.Addr6.String())
	}
}

// Listen opens a TCP echo server on every port given, on all the
// workload's addresses. Servers stop when the test ends.
func (w *Workload) Listen(t testing.TB, ports ...int) {
	t.Helper()
	ListenOn(t, w.NS, ports...)
}

// Listen is Workload.Listen on the node itself (its own addresses).
func (n *Node) Listen(t testing.TB, ports ...int) {
	t.Helper()
	ListenOn(t, n.NS, ports...)
}

// ListenOn opens a TCP echo server on every port given, on all the
// addresses of ns. Servers stop when the test ends.
func ListenOn(t testing.TB, ns *netns.NS, ports ...int) {
	t.Helper()
	for _, p := range ports {
		var ln net.Listener
		if err := ns.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", p))
			return err
		}); err != nil {
			t.Fatalf("%s: listen tcp %d: %v", ns.Name, p, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					buf := make([]byte, 256)
					for {
						c.SetDeadline(time.Now().Add(5 * time.Second))
						n, err := c.Read(buf)
						if err != nil {
							return
						}
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
}

// ListenUDP opens a UDP echo server on each port.
func (w *Workload) ListenUDP(t testing.TB, ports ...int) {
	t.Helper()
	for _, p := range ports {
		var pc net.PacketConn
		if err := w.NS.Do(func() error {
			var err error
			pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", p))
			return err
		}); err != nil {
			t.Fatalf("%s: listen udp %d: %v", w.Name, p, err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 256)
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], addr)
			}
		}()
	}
}

// Get fetches url over HTTP from inside the node's namespace (agents there
// listen on the node's loopback). The connection is opened on the thread
// inside the namespace: http.Transport would dial from a goroutine of its
// own, in whatever namespace its thread is.
func (n *Node) Get(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	var conn net.Conn
	if err := n.NS.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", u.Host, 2*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := c.Get(rawURL)
	if err != nil {
		conn.Close()
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", rawURL, resp.Status)
	}
	return string(b), nil
}

// ErrNoAnswer is returned when a connection attempt gets no answer in
// time: what a dropped packet looks like.
var ErrNoAnswer = errors.New("no answer")

// Dial opens a TCP connection from w to addr:port, sends a line and waits
// for its echo. It returns nil on success, ErrNoAnswer on a timeout, or the
// error (e.g. connection refused).
func (w *Workload) Dial(addr netip.Addr, port int, timeout time.Duration) error {
	return DialFrom(w.NS, addr, port, timeout)
}

// Dial is Workload.Dial from the node itself.
func (n *Node) Dial(addr netip.Addr, port int, timeout time.Duration) error {
	return DialFrom(n.NS, addr, port, timeout)
}

// DialFrom is Workload.Dial from any namespace.
func DialFrom(ns *netns.NS, addr netip.Addr, port int, timeout time.Duration) error {
	var conn net.Conn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), timeout)
		return err
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ErrNoAnswer
		}
		return err
	}
	defer conn.Close()
	return echo(conn, timeout)
}

// DialUDP sends one datagram from w and waits for its echo.
func (w *Workload) DialUDP(addr netip.Addr, port int, timeout time.Duration) error {
	var conn net.Conn
	err := w.NS.Do(func() error {
		var err error
		conn, err = net.Dial("udp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	return echo(conn, timeout)
}

func echo(conn net.Conn, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	msg := []byte("eastguard\n")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := conn.Read(buf); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ErrNoAnswer
		}
		return err
	}
	if string(buf) != string(msg) {
		return fmt.Errorf("echo mismatch: %q", buf)
	}
	return nil
}

// Process is a program a test started (an agent, a controller).
type Process struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // combined output
	done chan struct{}
	err  error
	mu   sync.Mutex
}

// Start runs cmd, its output going to a file in dir, and makes sure it is
// killed (by its PID) when the test ends.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: cmd, Log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.Log)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			t.Logf("--- %s output ---\n%s", name, lastLines(string(b), 60))
		}
	})
	return p
}

// Kill sends SIGKILL to the process (by its PID) and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout, then kills.
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not stop within %v", p.Name, timeout)
	}
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output returns what the process wrote so far.
func (p *Process) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// BuildBinary compiles a main package of this module into dir.
func BuildBinary(t testing.TB, pkg, dir string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, "github.com/eastguard/eastguard/"+pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return out
}
