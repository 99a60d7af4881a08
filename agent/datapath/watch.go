package datapath

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// linkWatch follows interfaces appearing and vanishing, so a workload whose
// interface did not exist when its rule set was applied is enforced the
// moment it appears, and a vanished one is reported pending again.
type linkWatch struct {
	done   chan struct{}
	exited chan struct{}
}

func (d *Datapath) startWatch() error {
	ch := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	err := inNetNS(d.netns(), func() error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case <-done:
					// stop closed the socket: the receive error that
					// ends netlink's reader is the clean stop itself.
					return
				default:
				}
				d.log.Warn("interface watch failed", zap.Error(err))
			},
		})
	})
	if err != nil {
		return fmt.Errorf("watch interfaces: %w", err)
	}
	w := &linkWatch{done: done, exited: make(chan struct{})}
	retried := make(chan struct{})
	go func() {
		defer close(retried)
		t := time.NewTicker(autoRetry)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				d.retryAuto()
			}
		}
	}()
	go func() {
		defer close(w.exited)
		for u := range ch { // closed by netlink after done
			d.onLinkUpdate(u)
		}
		<-retried
	}()
	d.watch = w
	return nil
}

func (w *linkWatch) stop() {
	close(w.done)
	<-w.exited
}

func (d *Datapath) onLinkUpdate(u netlink.LinkUpdate) {
	// Any change of an interface is a moment to check ours (a link
	// detached with the interface down and up, a flapped device).
	defer d.requestCheck()
	d.mu.Lock()
	defer d.mu.Unlock()
	cur := d.current
	if d.closed {
		return
	}
	a := u.Attrs()
	ifindex := uint32(a.Index)
	log := d.log.With(zap.String("interface", a.Name), zap.Uint32("ifindex", ifindex))
	if cur == nil || d.gens[d.word&1] == nil {
		// Nothing applied by this process (it adopted an earlier agent's
		// generation and waits for its first Apply, which resolves
		// interfaces): a new veth to guard gets programs now and, having
		// no endpoint in the adopted generation, the default mode until
		// that Apply guards it.
		if u.Header.Type == unix.RTM_NEWLINK && d.guards(u.Link) && !d.attached(ifindex) {
			if err := d.attach(binding{ifindex: ifindex, ifname: a.Name, endpoint: GuardEndpoint}); err != nil {
				log.Error("interface to guard appeared but attaching failed", zap.Error(err))
				return
			}
			log.Debug("interface to guard appeared: programs attached, default mode until the first rule set")
		}
		return
	}
	eps := d.gens[d.word&1][mEndpoints]
	switch u.Header.Type {
	case unix.RTM_NEWLINK:
		if b, bound := cur.bindings[ifindex]; bound {
			if b.isGuard() { // renamed to the name an endpoint claims?
				if ep, ok := d.endpointFor(u.Link); ok {
					if nb, err := bindingOf(a, ep.ID); err == nil {
						d.takeOver([]takeover{{ep, nb}})
					}
				}
			}
			return
		}
		ep, ok := d.endpointFor(u.Link)
		if !ok {
			if d.guards(u.Link) {
				d.guardLive(cur, u.Link, log)
			}
			return
		}
		b, err := bindingOf(a, ep.ID)
		if err != nil {
			log.Error("interface appeared but cannot be enforced", zap.Error(err))
			return
		}
		if d.bindLive(cur, ep, b, a.Name, log) {
			log.Info("interface appeared: enforcing", zap.String("workload", ep.Workload))
		}
	case unix.RTM_DELLINK:
		b, bound := cur.bindings[ifindex]
		if !bound {
			return
		}
		if err := unplaceEndpoint(eps, ifindex, d.shadow); err != nil {
			log.Warn("clearing the endpoint of a vanished interface", zap.Error(err))
		}
		d.detach(ifindex) // the kernel detached it already; drop our pins
		before := cur.bindings
		cur.bindings = maps.Clone(cur.bindings)
		delete(cur.bindings, ifindex)
		if b.isGuard() {
			d.logGuardChanges(before, cur.bindings)
			return
		}
		if ep, ok := cur.rs.Endpoint(b.endpoint); ok && (!ep.HostMode() || len(d.cfg.HostInterfaces) > 0) {
			name := a.Name
			if ep.Auto() {
				name = pendingName(ep) // resolved again by retryAuto
			}
			cur.pending = append(slices.Clone(cur.pending), name)
			slices.Sort(cur.pending)
		}
		log.Warn("interface vanished: its workload is pending until it is back")
	}
}

// bindLive binds an interface to ep in the active generation and attaches
// the programs; pendingAs is removed from the pending list. It reports
// whether it did. Called with d.mu held.
func (d *Datapath) bindLive(cur *applied, ep ruleset.Endpoint, b binding, pendingAs string, log *zap.Logger) bool {
	eps := d.gens[d.word&1][mEndpoints]
	if len(cur.bindings) >= cur.capacity[mEndpoints] {
		log.Error("interface appeared but the endpoint map is full; not enforced until the next rule set",
			zap.String("map", ruleset.MapEndpoints), zap.Int("capacity", cur.capacity[mEndpoints]))
		return false
	}
	slot, err := placeEndpoint(eps, b.ifindex)
	v := endpointValue(ep, b, cur.tables, d.ctSlots.of)
	if err == nil {
		if err = eps.Update(slot, v, ebpf.UpdateAny); err == nil {
			d.shadow.set(mEndpoints, raw(&slot), raw(&v))
		}
	}
	if err != nil {
		log.Error("interface appeared but could not be bound", zap.Error(err))
		return false
	}
	if err := d.attach(b); err != nil {
		tomb := bpfEgEndpoint{Ifindex: epTombstone}
		if eps.Update(slot, tomb, ebpf.UpdateAny) == nil {
			d.shadow.set(mEndpoints, raw(&slot), raw(&tomb))
		}
		log.Error("interface appeared but attaching failed; it stays pending", zap.Error(err))
		return false
	}
	cur.bindings = maps.Clone(cur.bindings)
	cur.bindings[b.ifindex] = b
	cur.pending = slices.DeleteFunc(slices.Clone(cur.pending), func(n string) bool { return n == pendingAs })
	return true
}

// retryAuto resolves the auto endpoints that are pending again, and
// enforces those whose interface is found now.
func (d *Datapath) retryAuto() {
	d.mu.Lock()
	defer d.mu.Unlock()
	cur := d.current
	if d.closed || cur == nil || d.gens[d.word&1] == nil {
		return
	}
	var todo []ruleset.Endpoint
	for _, e := range cur.rs.Endpoints {
		if e.Auto() && slices.Contains(cur.pending, pendingName(e)) {
			todo = append(todo, e)
		}
	}
	if len(todo) == 0 {
		return
	}
	var takeovers []takeover
	err := inNetNS(d.netns(), func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list interfaces: %w", err)
		}
		view, err := newLiveView(links)
		if err != nil {
			return err
		}
		for _, e := range todo {
			b, ok := d.resolveAutoEndpoint(view, e, cur.bindings)
			if !ok {
				continue
			}
			if g, guarded := cur.bindings[b.ifindex]; guarded && g.isGuard() {
				takeovers = append(takeovers, takeover{e, b})
				continue
			}
			log := d.log.With(zap.String("interface", b.ifname), zap.Uint32("ifindex", b.ifindex))
			if d.bindLive(cur, e, b, pendingName(e), log) {
				log.Info("interface auto resolved: enforcing", zap.String("workload", e.Workload))
			}
		}
		return nil
	})
	if err != nil {
		d.log.Warn("interface auto: resolving pending workloads failed; retrying", zap.Error(err))
	}
	d.takeOver(takeovers)
}

// takeover is an endpoint found on a guarded interface.
type takeover struct {
	ep ruleset.Endpoint
	b  binding
}

// takeOver moves guarded interfaces to the endpoints that claim them, in
// one swap of the whole generation: the interfaces keep their programs and
// one store of eg_state moves them from the guard's entry to their
// endpoint's, with its policy already in the maps. (Rewriting the live
// entry in place would not be atomic: an array map's value is copied, and
// a packet could read half the guard's entry and half the endpoint's.)
// Called with d.mu held.
func (d *Datapath) takeOver(ts []takeover) {
	if len(ts) == 0 {
		return
	}
	cur := d.current
	bindings := maps.Clone(cur.bindings)
	pending := slices.Clone(cur.pending)
	for _, t := range ts {
		bindings[t.b.ifindex] = t.b
		pending = slices.DeleteFunc(pending, func(n string) bool { return n == pendingName(t.ep) })
	}
	if err := d.swap(cur.rs, cur.tables, bindings, pending); err != nil {
		d.log.Error("taking guarded interfaces over failed; they stay guarded (denied) until the next retry or rule set", zap.Error(err))
		return
	}
	for _, t := range ts {
		d.log.Info("guarded interface claimed: enforcing its workload",
			zap.String("workload", t.ep.Workload), zap.String("interface", t.b.ifname), zap.Uint32("ifindex", t.b.ifindex))
	}
}

// guardLive guards a new interface in the active generation. Called with
// d.mu held.
func (d *Datapath) guardLive(cur *applied, l netlink.Link, log *zap.Logger) {
	b, err := bindingOf(l.Attrs(), GuardEndpoint)
	if err != nil {
		log.Error("interface to guard appeared but cannot be guarded", zap.Error(err))
		return
	}
	before := cur.bindings
	if d.bindLive(cur, guardEndpoint, b, "", log) {
		d.logGuardChanges(before, cur.bindings)
	}
}

// placeEndpoint finds a free or tombstoned slot for ifindex in a live
// endpoint table.
func placeEndpoint(eps *ebpf.Map, ifindex uint32) (uint32, error) {
	var lookupErr error
	slot, ok := freeSlot(ifindex, func(s uint32) bool {
		var v bpfEgEndpoint
		if err := eps.Lookup(s, &v); err != nil {
			lookupErr = err
			return true
		}
		return v.Ifindex != 0 && v.Ifindex != epTombstone
	})
	if lookupErr != nil {
		return 0, fmt.Errorf("read %s: %w", ruleset.MapEndpoints, lookupErr)
	}
	if !ok {
		return 0, fmt.Errorf("%s: ifindex %d collides with %d others", ruleset.MapEndpoints, ifindex, epProbes)
	}
	return slot, nil
}

// unplaceEndpoint tombstones ifindex's slot: later entries of the same
// probe sequence stay reachable. The write goes into sh too.
func unplaceEndpoint(eps *ebpf.Map, ifindex uint32, sh *shadow) error {
	for i := range uint32(epProbes) {
		s := (ifindex + i) & (epSlots - 1)
		var v bpfEgEndpoint
		if err := eps.Lookup(s, &v); err != nil {
			return err
		}
		if v.Ifindex == 0 {
			return nil
		}
		if v.Ifindex == ifindex {
			tomb := bpfEgEndpoint{Ifindex: epTombstone}
			if err := eps.Update(s, tomb, ebpf.UpdateAny); err != nil {
				return err
			}
			sh.set(mEndpoints, raw(&s), raw(&tomb))
			return nil
		}
	}
	return nil
}

// endpointFor finds the endpoint a newly seen interface belongs to by its
// name (auto endpoints are found by retryAuto, from their addresses).
func (d *Datapath) endpointFor(l netlink.Link) (ruleset.Endpoint, bool) {
	name := l.Attrs().Name
	var host *ruleset.Endpoint
	auto := false
	for i, e := range d.current.rs.Endpoints {
		if e.Interface == name && !e.Auto() {
			return e, true
		}
		if e.HostMode() {
			host = &d.current.rs.Endpoints[i]
		}
		auto = auto || e.Auto()
	}
	if host == nil || isLoopback(l.Attrs()) || (len(d.cfg.HostInterfaces) == 0 && d.hostModeSkips(l, auto)) {
		return ruleset.Endpoint{}, false
	}
	if len(d.cfg.HostInterfaces) == 0 || slices.Contains(d.cfg.HostInterfaces, name) {
		return *host, true
	}
	return ruleset.Endpoint{}, false
}

// WatchAddresses reports changes of the node's addresses (in the
// datapath's network namespace): a value on the channel means they
// changed, and NodeAddresses says what they are now. Changes that come
// together may be reported once. If the subscription is lost (the
// kernel's socket buffer overflowed), it subscribes again and reports a
// change, since some may have been missed. The channel is closed when ctx
// is done or the datapath is closed.
func (d *Datapath) WatchAddresses(ctx context.Context) (<-chan struct{}, error) {
	ctx, cancel := context.WithCancel(ctx)
	sub, err := d.subscribeAddresses()
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default: // one is pending: the reader reads everything anyway
		}
	}
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				sub.stop()
				return
			case <-d.stopped:
				sub.stop()
				return
			case _, ok := <-sub.ch:
				if ok {
					notify()
					continue
				}
			}
			// Lost: subscribe again, once a second until it works.
			sub.stop()
			d.log.Warn("node address watch lost; subscribing again")
			for {
				if sub, err = d.subscribeAddresses(); err == nil {
					break
				}
				d.log.Warn("node address watch: subscribing failed", zap.Error(err))
				select {
				case <-ctx.Done():
					return
				case <-d.stopped:
					return
				case <-time.After(time.Second):
				}
			}
			notify()
		}
	}()
	return out, nil
}

// addrSub is one netlink address subscription.
type addrSub struct {
	ch   chan netlink.AddrUpdate
	done chan struct{}
}

// stop ends the subscription and waits for netlink to close its channel.
func (s *addrSub) stop() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	for range s.ch {
	}
}

func (d *Datapath) subscribeAddresses() (*addrSub, error) {
	d.mu.Lock() // the namespace handle lives until Close
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	s := &addrSub{ch: make(chan netlink.AddrUpdate, 256), done: make(chan struct{})}
	ns := d.netns()
	err := netlink.AddrSubscribeWithOptions(s.ch, s.done, netlink.AddrSubscribeOptions{
		Namespace: &ns,
		ErrorCallback: func(err error) {
			select {
			case <-s.done:
				// stop closed the socket: the receive error that ends
				// netlink's reader is the clean stop itself.
				return
			default:
			}
			d.log.Warn("node address watch", zap.Error(err))
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch node addresses: %w", err)
	}
	return s, nil
}
