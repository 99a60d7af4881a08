package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// errInterfaceGone: the interface disappeared between lookup and attach.
var errInterfaceGone = errors.New("interface vanished")

// hook is one tcx attachment point.
type hook struct {
	ifindex uint32
	egress  bool
}

func (h hook) String() string {
	dir := "ingress"
	if h.egress {
		dir = "egress"
	}
	return fmt.Sprintf("tcx-%d-%s", h.ifindex, dir)
}

func (h hook) attachType() ebpf.AttachType {
	if h.egress {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

func (d *Datapath) pinPath(h hook) string {
	return filepath.Join(d.cfg.BPFFSDir, linksDir, h.String())
}

func (d *Datapath) program(h hook) *ebpf.Program {
	if h.egress {
		return d.objs.EgTcEgress
	}
	return d.objs.EgTcIngress
}

func hooksOf(ifindex uint32) [2]hook {
	return [2]hook{{ifindex, false}, {ifindex, true}}
}

func (d *Datapath) attached(ifindex uint32) bool {
	_, in := d.links[hook{ifindex, false}]
	_, out := d.links[hook{ifindex, true}]
	return in && out
}

// attach puts both programs on an interface and pins the links, so they
// outlive this process. Called with d.mu held.
func (d *Datapath) attach(b binding) error {
	for _, h := range hooksOf(b.ifindex) {
		if _, ok := d.links[h]; ok {
			continue
		}
		var l link.Link
		err := inNetNS(d.netns(), func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{Interface: int(b.ifindex), Program: d.program(h), Attach: h.attachType()})
			if err == nil {
				d.preceding[h], _ = precedingNow(h, d.progIDs[boolIndex(h.egress)]) // what another tool put there first
				d.settling[h] = time.Now()
			}
			return err
		})
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("attach to %s (ifindex %d): %w", b.ifname, b.ifindex, errInterfaceGone)
		}
		if err != nil {
			return fmt.Errorf("attach to %s (ifindex %d): %w", b.ifname, b.ifindex, err)
		}
		path := d.pinPath(h)
		_ = os.Remove(path) // a stale pin of a vanished interface with a reused index
		if err := l.Pin(path); err != nil {
			l.Close()
			return fmt.Errorf("pin link %s: %w", path, err)
		}
		d.links[h] = l
	}
	d.log.Debug("attached", zap.String("interface", b.ifname), zap.Uint32("ifindex", b.ifindex))
	return nil
}

// detach removes our programs from an interface. Called with d.mu held.
func (d *Datapath) detach(ifindex uint32) {
	for _, h := range hooksOf(ifindex) {
		l, ok := d.links[h]
		if !ok {
			continue
		}
		if err := l.Unpin(); err != nil {
			d.log.Warn("unpin link", zap.String("link", h.String()), zap.Error(err))
		}
		if err := l.Close(); err != nil {
			d.log.Warn("close link", zap.String("link", h.String()), zap.Error(err))
		}
		delete(d.links, h)
		delete(d.preceding, h)
		delete(d.settling, h)
	}
}

// adoptLinks opens the links an earlier agent pinned. With switchNow, the
// links are moved to our programs at once (BPF_LINK_UPDATE is atomic);
// otherwise finishUpgrade does it after the first Apply.
func (d *Datapath) adoptLinks(switchNow bool) error {
	dir := filepath.Join(d.cfg.BPFFSDir, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read pinned links: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("open pinned link %s: %w", path, err)
		}
		info, err := l.Info()
		var tcx *link.TCXInfo
		if err == nil {
			tcx = info.TCX()
		}
		if tcx == nil || tcx.Ifindex == 0 {
			// The interface is gone; the kernel already detached it.
			d.log.Info("removing pin of a detached link", zap.String("pin", path))
			_ = l.Unpin()
			l.Close()
			continue
		}
		h := hook{tcx.Ifindex, ebpf.AttachType(tcx.AttachType) == ebpf.AttachTCXEgress}
		if switchNow {
			if err := l.Update(d.program(h)); err != nil {
				l.Close()
				return fmt.Errorf("switch pinned link %s to the new programs: %w", path, err)
			}
		}
		d.links[h] = l
		running := info.Program // the previous agent's, until finishUpgrade
		if switchNow {
			running = d.progIDs[boolIndex(h.egress)]
		}
		_ = inNetNS(d.netns(), func() error {
			d.preceding[h], _ = precedingNow(h, running)
			return nil
		})
	}
	return nil
}

// finishUpgrade completes an upgrade that replaced incompatible maps: once
// the new maps hold a rule set, the adopted links switch to the new
// programs and the new maps take over the pins. Called with d.mu held.
func (d *Datapath) finishUpgrade() error {
	if len(d.replaced) == 0 {
		return nil
	}
	// The conntrack first, while the old programs still run on the old
	// maps (see migrateCT): a failure here changes nothing.
	if len(d.oldCT) > 0 {
		n, err := d.migrateCT(d.oldCT, false)
		if err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
		d.log.Info("upgrade: conntrack entries copied to the new maps", zap.Int("entries", n))
	}
	if d.ctReconcile {
		if err := d.reconcileCT(); err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
		d.ctReconcile = false
	}
	for h, l := range d.links {
		if err := l.Update(d.program(h)); err != nil {
			return fmt.Errorf("switch link %s to the new programs: %w", h, err)
		}
	}
	byName := d.objs.mapsByName()
	for _, name := range slices.Sorted(maps.Keys(d.replaced)) {
		path := filepath.Join(d.cfg.BPFFSDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace pin %s: %w", path, err)
		}
		if err := byName[name].Pin(path); err != nil {
			return fmt.Errorf("pin %s: %w", path, err)
		}
		delete(d.replaced, name)
	}
	if len(d.oldCT) > 0 {
		// What the old programs added between the copy and the switch.
		n, err := d.migrateCT(d.oldCT, true)
		if err != nil {
			d.log.Warn("upgrade: second conntrack copy incomplete; flows opened during the switch are decided anew", zap.Error(err))
		}
		d.log.Info("upgrade: conntrack entries added during the switch copied", zap.Int("entries", n))
		for _, m := range d.oldCT {
			m.Close()
		}
		d.oldCT = nil
	}
	d.log.Info("upgrade finished: new maps pinned, links switched to the new programs")
	return nil
}

// resolve binds the rule set's endpoints to interfaces present now.
func (d *Datapath) resolve(rs *ruleset.RuleSet) (map[uint32]binding, []string, error) {
	var links []netlink.Link
	err := inNetNS(d.netns(), func() error {
		var err error
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list interfaces: %w", err)
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	bindings := make(map[uint32]binding)
	var pending []string
	containerIfaces := make(map[string]bool)
	var host *ruleset.Endpoint
	var auto []ruleset.Endpoint
	for i, e := range rs.Endpoints {
		if e.HostMode() {
			host = &rs.Endpoints[i]
			continue
		}
		if e.Auto() {
			auto = append(auto, e)
			continue
		}
		containerIfaces[e.Interface] = true
		l, ok := byName[e.Interface]
		if !ok {
			pending = append(pending, e.Interface)
			continue
		}
		b, err := bindingOf(l.Attrs(), e.ID)
		if err != nil {
			return nil, nil, fmt.Errorf("endpoint %d (workload %q): %w", e.ID, e.Workload, err)
		}
		bindings[b.ifindex] = b
	}
	if len(auto) > 0 {
		var view *liveView
		err := inNetNS(d.netns(), func() error {
			var err error
			view, err = newLiveView(links)
			if err != nil {
				return err
			}
			for _, e := range auto {
				b, ok := d.resolveAutoEndpoint(view, e, bindings)
				if !ok {
					pending = append(pending, pendingName(e))
					continue
				}
				bindings[b.ifindex] = b
				containerIfaces[b.ifname] = true
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("resolve interface auto: %w", err)
		}
	}
	if host != nil {
		explicit := len(d.cfg.HostInterfaces) > 0
		for _, name := range d.hostInterfaces(links, containerIfaces, len(auto) > 0) {
			l, ok := byName[name]
			if !ok {
				pending = append(pending, name)
				continue
			}
			b, err := bindingOf(l.Attrs(), host.ID)
			if err != nil {
				if explicit {
					return nil, nil, fmt.Errorf("host interface: %w", err)
				}
				d.log.Warn("host mode skips an interface it cannot parse", zap.Error(err))
				continue
			}
			bindings[b.ifindex] = b
		}
	}
	d.guardUnclaimed(links, bindings)
	return bindings, pending, nil
}

// resolveAutoEndpoint finds an auto endpoint's interface in view. It is
// not bound (false) when none is found, when the interface is already
// another endpoint's, or when its link type cannot be enforced. Runs in
// the datapath's network namespace.
func (d *Datapath) resolveAutoEndpoint(view *liveView, e ruleset.Endpoint, bound map[uint32]binding) (binding, bool) {
	log := d.log.With(zap.String("workload", e.Workload), zap.String("pending-interface", pendingName(e)))
	ifindex, err := resolveAuto(view, e.Addresses)
	if err != nil {
		if !errors.Is(err, errUnresolved) {
			log.Warn("interface auto: not resolved", zap.Error(err))
		}
		return binding{}, false
	}
	l, ok := view.links[ifindex]
	if !ok {
		return binding{}, false
	}
	if other, clash := bound[uint32(ifindex)]; clash && !other.isGuard() {
		// Never take an interface from the endpoint it is bound to: a
		// workload answering for another's address must not get its policy.
		// A guard is no endpoint: taking its interface over is the point.
		log.Warn("interface auto: the interface found is already another endpoint's",
			zap.String("interface", l.Attrs().Name), zap.Uint32("endpoint", uint32(other.endpoint)))
		return binding{}, false
	}
	b, err := bindingOf(l.Attrs(), e.ID)
	if err != nil {
		log.Warn("interface auto: cannot enforce the interface found", zap.Error(err))
		return binding{}, false
	}
	return b, true
}

// bindingOf binds an interface, refusing link types whose frames the
// parser does not understand rather than guessing where the IP header is.
func bindingOf(a *netlink.LinkAttrs, ep ruleset.EndpointID) (binding, error) {
	b := binding{ifindex: uint32(a.Index), ifname: a.Name, endpoint: ep}
	switch a.EncapType {
	case "ether", "loopback":
		// Ethernet header at tc.
	case "none", "ipip", "sit", "tunnel6":
		// tun, wireguard and IP-in-IP tunnels: the packet starts with IP.
		b.l3 = true
	default:
		return binding{}, fmt.Errorf("interface %s has link type %q; the datapath supports Ethernet, loopback and IP tunnel devices", a.Name, a.EncapType)
	}
	return b, nil
}

// hostInterfaces lists the interfaces a host-mode endpoint is enforced on.
// Without an explicit list, that is every interface but loopback and the
// workloads'; with auto endpoints in the rule set, veths are left out too
// (hostModeSkips): a workload's veth not resolved yet must not be taken by
// the node, or its own endpoint could never bind it.
func (d *Datapath) hostInterfaces(links []netlink.Link, container map[string]bool, auto bool) []string {
	if len(d.cfg.HostInterfaces) > 0 {
		return slices.DeleteFunc(slices.Clone(d.cfg.HostInterfaces), func(n string) bool { return container[n] })
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if isLoopback(a) || container[a.Name] || d.hostModeSkips(l, auto) {
			continue
		}
		out = append(out, a.Name)
	}
	return out
}

// hostModeSkips says whether implicit host mode leaves l alone because
// l is a veth, a workload's interface, and the rule set has auto
// endpoints or l's name matches a guard pattern (it is guarded until its
// workload claims it; the node taking it would keep the workload off it).
func (d *Datapath) hostModeSkips(l netlink.Link, auto bool) bool {
	return l.Type() == "veth" && (auto || d.guards(l))
}

// isLoopback says whether an interface is a loopback device. netlink's
// LinkAttrs.Flags is Go's net.Flags, not the kernel's IFF_ bits: there
// unix.IFF_LOOPBACK (0x8) is net.FlagPointToPoint, which would skip tun
// and other point-to-point devices and enforce lo instead.
func isLoopback(a *netlink.LinkAttrs) bool { return a.Flags&net.FlagLoopback != 0 }

// netns is the network namespace the datapath was opened in; every
// interface operation happens there, whatever thread runs it.
func (d *Datapath) netns() netns.NsHandle { return d.ns }

// inNetNS runs f on an OS thread in ns. Interface indexes, netlink and tcx
// attach all resolve in the calling thread's namespace, and Go may run a
// goroutine on any thread.
func inNetNS(ns netns.NsHandle, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get network namespace: %w", err)
	}
	defer cur.Close()
	if cur.Equal(ns) {
		return f()
	}
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := netns.Set(cur); err != nil {
		// This thread is in the wrong namespace now; keep it locked so
		// the runtime throws it away instead of reusing it.
		runtime.LockOSThread()
		return errors.Join(ferr, fmt.Errorf("restore network namespace: %w", err))
	}
	return ferr
}

// NodeAddresses lists the addresses configured on the node's interfaces
// (in the datapath's network namespace), loopback excluded: the agent
// gives them the host identity when the rule set does not know them.
func (d *Datapath) NodeAddresses() ([]netip.Addr, error) {
	var addrs []netlink.Addr
	err := inNetNS(d.netns(), func() error {
		var err error
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLoopback() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}
