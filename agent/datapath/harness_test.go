package datapath

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	tnetns "github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

const (
	retPass = -1 // TCX_NEXT
	retDrop = 2  // TCX_DROP

	retError = -1000 // prog.Run failed; the error is reported
)

// harness is a datapath opened inside a throw-away network namespace that
// holds veth interfaces, on a throw-away bpffs directory.
type harness struct {
	t       testing.TB
	ns      *tnetns.NS
	d       *Datapath
	ifindex map[string]uint32
	ring    *EventReader
	clock   *Clock
}

func newHarness(t testing.TB, cfg Config, ifaces ...string) *harness {
	t.Helper()
	testutil.RequirePrivileged(t)
	h := &harness{t: t, ns: tnetns.New(t, "dp"), ifindex: make(map[string]uint32)}
	// No IPv6 on the interfaces: the kernel would otherwise send its own
	// router solicitations and MLD reports on them (retransmitted up to a
	// second or more after link up), which the programs count as
	// neighbour traffic between a test's before and after. The tests'
	// packets are injected with prog.Run, which needs none of it.
	topo.Sysctl(t, h.ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	for _, name := range ifaces {
		// veth, because not every kernel has the dummy driver.
		h.ns.IP(t, "link", "add", "name", name, "type", "veth", "peer", "name", name+"p")
		h.ns.IP(t, "link", "set", name, "up")
		h.ns.IP(t, "link", "set", name+"p", "up")
	}
	cfg.BPFFSDir = "/sys/fs/bpf/eg-test-" + tnetns.Suffix()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	// Registered before Open: an Open that fails after pinning maps (a
	// program the verifier refuses) leaves them, and they must go too.
	t.Cleanup(func() {
		var err error
		if h.d != nil {
			err = h.d.Uninstall()
		} else {
			err = Uninstall(cfg.BPFFSDir, nil)
		}
		if err != nil {
			t.Errorf("Uninstall: %v", err)
		}
		if _, err := os.Stat(cfg.BPFFSDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin directory %s still there after Uninstall", cfg.BPFFSDir)
		}
	})
	var err error
	if h.d, err = h.open(cfg); err != nil {
		t.Fatalf("Open: %v", err)
	}
	h.clock = h.d.clock
	for _, name := range ifaces {
		h.ifindex[name] = h.linkIndex(name)
	}
	rd, err := h.d.NewEventReader()
	if err != nil {
		t.Fatalf("event reader: %v", err)
	}
	h.ring = rd
	t.Cleanup(func() { rd.Close() })
	return h
}

// open opens a datapath with cfg in the harness's namespace, as an agent
// started there would.
func (h *harness) open(cfg Config) (*Datapath, error) {
	var d *Datapath
	err := h.ns.Do(func() error {
		var err error
		d, err = Open(cfg)
		return err
	})
	return d, err
}

func (h *harness) linkIndex(name string) uint32 {
	var idx uint32
	if err := h.ns.Do(func() error {
		i, err := interfaceIndex(name)
		idx = i
		return err
	}); err != nil {
		h.t.Fatalf("interface %s: %v", name, err)
	}
	return idx
}

func (h *harness) apply(rs *ruleset.RuleSet) *ApplyResult {
	h.t.Helper()
	res, err := h.d.Apply(rs)
	if err != nil {
		h.t.Fatalf("Apply: %v", err)
	}
	return res
}

// run runs prog on pkt as if it were on iface and returns the verdict.
func (h *harness) run(prog *ebpf.Program, iface string, pkt []byte) int32 {
	h.t.Helper()
	idx, ok := h.ifindex[iface]
	if !ok {
		h.t.Fatalf("unknown interface %q", iface)
	}
	var ret uint32
	err := inNetNS(h.d.ns, func() error {
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{Data: pkt, Context: runContext{Ifindex: idx}})
		return err
	})
	if err != nil {
		// Errorf, not Fatalf: run is called from subtests too.
		h.t.Errorf("prog.Run: %v", err)
		return retError
	}
	return int32(ret)
}

// Directions are the workload's: on a container's host-side interface tc
// egress delivers to the workload, tc ingress carries what it sends. On a
// host-mode interface they are the node's own.
func (h *harness) toWorkload(iface string, pkt []byte) int32 {
	return h.run(h.d.objs.EgTcEgress, iface, pkt)
}

func (h *harness) fromWorkload(iface string, pkt []byte) int32 {
	return h.run(h.d.objs.EgTcIngress, iface, pkt)
}

func (h *harness) toHost(iface string, pkt []byte) int32 {
	return h.run(h.d.objs.EgTcIngress, iface, pkt)
}

// drain returns the events in the ring. Programs write them before
// prog.Run returns, so nothing is waited for.
func (h *harness) drain() []FlowEvent {
	h.t.Helper()
	return readEvents(h.t, h.ring)
}

// readEvents returns the events waiting in the rings, without waiting
// for more.
func readEvents(t testing.TB, rd *EventReader) []FlowEvent {
	t.Helper()
	var out []FlowEvent
	if _, err := rd.Drain(func(ev *FlowEvent) { out = append(out, *ev) }); err != nil {
		t.Fatalf("read events: %v", err)
	}
	return out
}

func (h *harness) counters() Counters {
	h.t.Helper()
	c, err := h.d.Counters()
	if err != nil {
		h.t.Fatalf("Counters: %v", err)
	}
	return c
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ptr[T any](v T) *T { return &v }

func interfaceIndex(name string) (uint32, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

// runContext is the head of struct __sk_buff up to ifindex.
type runContext struct {
	_       [40]byte
	Ifindex uint32
	_       uint32
}
