package datapath

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// DefaultBPFFSDir is where an agent pins its objects unless told otherwise.
const DefaultBPFFSDir = "/sys/fs/bpf/eastguard"

// Timeouts are the conntrack lifetimes. Zero fields take the defaults.
type Timeouts struct {
	TCPSyn         time.Duration // until the first reply
	TCPEstablished time.Duration // idle time of an established connection
	TCPClose       time.Duration // after RST or FIN from both sides
	Other          time.Duration // UDP, ICMP and everything else, idle
	Fragment       time.Duration // first fragment's verdict, for the rest
}

// Config configures the datapath. Zero fields take the defaults.
type Config struct {
	// BPFFSDir is the pin directory; each agent on a machine has its own.
	BPFFSDir string
	// DefaultMode applies to interfaces that carry our programs but have
	// no endpoint in the current rule set (being added or removed).
	DefaultMode ruleset.Mode
	// Limits caps the per-rule-set maps; a rule set that does not fit is
	// refused whole.
	Limits ruleset.Limits
	// CTEntries and CT6Entries are the IPv4 and IPv6 conntrack
	// capacities. Nothing is evicted: the GC deletes expired entries, and
	// a full table refuses new flows (counted, reason conntrack-full)
	// while established ones go on.
	CTEntries  uint32
	CT6Entries uint32
	// CTEndpointPercent is the share of each conntrack map one endpoint
	// may hold (default 25, at most 100): past it, that endpoint's new
	// flows are refused (counted) and the others' still get in.
	CTEndpointPercent uint32
	// CTGCInterval is the longest time between two conntrack GC sweeps
	// (default 10 s); a sweep that finds the maps filling comes sooner.
	CTGCInterval time.Duration
	// RingBufBytes is what the flow event rings hold, all CPUs together:
	// each CPU has a ring of its own (bpf/maps.h), of the largest power
	// of two of 64-byte slots that fits its share. 0 takes the default,
	// 4 MiB or 256 KiB a CPU where that is more (with 2 CPUs, 2 MiB a
	// CPU: about 32,000 IPv4 events, a third of a second of one CPU's
	// 100,000 new flows per second). A ring's size does not change the
	// cost of an event (BenchmarkEventRingSize).
	RingBufBytes uint32
	// DenyEventsPerSecond and DenyEventsBurst rate-limit denied and
	// would-deny events per CPU (a SYN flood must not drown the ring);
	// suppressed events are counted. 0 per second means no limit.
	DenyEventsPerSecond uint32
	DenyEventsBurst     uint32
	// EventsWakeupBytes batches reader wake-ups: the reader is woken when
	// this much is queued, and polls every 100 ms below that. 1 wakes it
	// for every event; 0 takes the default, 4 KiB (about 46 events). A
	// wake-up per event costs an inter-processor interrupt per new flow
	// (in a VM, an exit): on this project's 2-vCPU machines
	// BenchmarkEventPath sustains 100,000 new flows/s with 4 KiB, and
	// 66,000 to 99,000 from run to run with 1.
	EventsWakeupBytes uint32
	// KeepEstablished keeps established flows after a rule-set change
	// instead of re-checking them against the new rules.
	KeepEstablished bool
	// NoFlowAccounting turns off per-flow packet and byte counts.
	NoFlowAccounting bool
	Timeouts         Timeouts
	// HostInterfaces are the interfaces a host-mode endpoint is enforced
	// on. Empty means every interface except loopback and the container
	// endpoints' interfaces, including ones that appear later.
	HostInterfaces []string
	// GuardInterfaces are shell globs (path.Match) of interface names:
	// every veth that matches one and that no endpoint claims is guarded,
	// denied both ways until an endpoint claims it (guard.go). Empty: no
	// guard. Host mode without HostInterfaces leaves matching veths alone.
	GuardInterfaces []string
	Logger          *zap.Logger

	// ctEarlyDropAge is how old a never answered conntrack entry must be
	// for the GC's early drop (5 s; tests shorten it).
	ctEarlyDropAge time.Duration

	// synExpiresAtOnce makes conntrack entries of unanswered TCP flows
	// expire immediately, so a repeated SYN stays a new flow. Only the
	// benchmarks set it, to measure the new-flow path with repeated runs.
	synExpiresAtOnce bool
}

func (c *Config) setDefaults() {
	if c.BPFFSDir == "" {
		c.BPFFSDir = DefaultBPFFSDir
	}
	if c.Limits == (ruleset.Limits{}) {
		c.Limits = ruleset.DefaultLimits()
	}
	if c.CTEntries == 0 {
		c.CTEntries = 262144
	}
	if c.CT6Entries == 0 {
		c.CT6Entries = max(c.CTEntries/2, 1024)
	}
	if c.CTEndpointPercent == 0 {
		c.CTEndpointPercent = 25
	}
	if c.CTGCInterval <= 0 {
		c.CTGCInterval = 10 * time.Second
	}
	if c.ctEarlyDropAge == 0 {
		c.ctEarlyDropAge = 5 * time.Second
	}
	if c.RingBufBytes == 0 {
		c.RingBufBytes = 4 << 20
		if cpus, err := ebpf.PossibleCPU(); err == nil && cpus > 16 {
			c.RingBufBytes = uint32(cpus) * 256 << 10
		}
	}
	if c.EventsWakeupBytes == 0 {
		c.EventsWakeupBytes = 4 << 10
	}
	if c.DenyEventsPerSecond == 0 && c.DenyEventsBurst == 0 {
		c.DenyEventsPerSecond, c.DenyEventsBurst = 2000, 500
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Timeouts.TCPSyn, time.Minute)
	def(&c.Timeouts.TCPEstablished, 6*time.Hour)
	def(&c.Timeouts.TCPClose, 10*time.Second)
	def(&c.Timeouts.Other, time.Minute)
	def(&c.Timeouts.Fragment, 30*time.Second)
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// jiffies converts a duration to kernel ticks, at least one.
func jiffies(d time.Duration, hz uint32) uint32 {
	return uint32(max(int64(d)*int64(hz)/int64(time.Second), 1))
}

// Datapath owns the kernel objects of one agent. Its methods are safe for
// concurrent use.
type Datapath struct {
	cfg  Config
	log  *zap.Logger
	spec *ebpf.CollectionSpec

	ns    netns.NsHandle // the network namespace Open ran in
	lock  *dirLock       // on cfg.BPFFSDir, until Close (or Uninstall)
	hz    uint32         // kernel HZ: the datapath's clock ticks
	probe *ebpf.Program  // reads jiffies for clock
	clock *Clock         // converts event times

	// mu serialises changes to the kernel objects. Lock order: mu, then
	// Clock.mu (never the other way round).
	mu       sync.Mutex
	objs     bpfObjects
	replaced map[string]bool      // pinned after the first Apply; see loaded
	oldCT    map[string]*ebpf.Map // the replaced conntrack maps' old pins, until finishUpgrade
	// ctReconcile: the conntrack quota must be recounted from the maps
	// (its maps are new, or the conntrack was replaced).
	ctReconcile bool
	ctSlots     *ctSlots
	gc          gcState
	word        uint32         // generation word last written (eg_state)
	gens        [2]*generation // inner maps of the generation in a slot, if we built it
	// preparing delivers the empty maps being installed in the inactive
	// slot (see swap); nil when nothing is being prepared.
	preparing chan *prepared
	current   *applied           // what the active generation holds
	links     map[hook]link.Link // our attachments
	// shadow is our copy of what the active generation's inner maps
	// hold (nil until this process applied a rule set), innerIDs those
	// maps' ids, progIDs the ids of the programs we loaded (ingress,
	// egress): what Check compares the kernel's objects with.
	shadow   *shadow
	seed     maphash.Seed
	innerIDs [numInner]ebpf.MapID
	progIDs  [2]ebpf.ProgramID
	// preceding are, per hook, the other programs that ran before ours
	// when we attached (or adopted) it: a program put ahead of ours later
	// is drift (prog-preceded), one that was there before is not ours to
	// judge (another tool's, e.g. a CNI's).
	preceding map[hook][]ebpf.ProgramID
	// settling are the hooks attached less than precedeSettle ago, by
	// when: programs a CNI puts ahead of ours right after creating the
	// interface join the baseline meanwhile.
	settling map[hook]time.Time
	kicks    chan struct{} // CheckRequests
	watch    *linkWatch
	stopped  chan struct{} // closed by Close: address watches end
	closed   bool
	closeErr error
}

// Open loads the programs and maps, adopting whatever an earlier agent
// pinned under cfg.BPFFSDir: pinned links are switched to the newly loaded
// programs atomically, so enforcement has no gap across restarts and
// upgrades. Nothing is attached to a new interface until Apply.
func Open(cfg Config) (*Datapath, error) {
	cfg.setDefaults()
	log := cfg.Logger.With(zap.String("bpffs-dir", cfg.BPFFSDir))
	if err := CheckGuardPatterns(cfg.GuardInterfaces); err != nil {
		return nil, fmt.Errorf("guard interfaces: %w", err)
	}
	if cfg.CTEndpointPercent > 100 {
		return nil, fmt.Errorf("conntrack share per endpoint %d%%: want 1 to 100", cfg.CTEndpointPercent)
	}
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.BPFFSDir, log); err != nil {
		return nil, err
	}
	// Held until Close: one agent per pin directory, and no --uninstall
	// under a running agent.
	lock, err := lockDir(cfg.BPFFSDir)
	if err != nil {
		if errors.Is(err, ErrInUse) {
			return nil, fmt.Errorf("%w; each agent needs its own --bpffs-dir", err)
		}
		return nil, err
	}
	probe, err := newJiffyProbe()
	if err != nil {
		lock.release()
		return nil, err
	}
	hz, err := kernelHZ(probe)
	if err != nil {
		probe.Close()
		lock.release()
		return nil, err
	}
	spec, err := loadSpec(&cfg, hz)
	if err != nil {
		probe.Close()
		lock.release()
		return nil, err
	}
	ns, err := netns.Get()
	if err != nil {
		probe.Close()
		lock.release()
		return nil, fmt.Errorf("get network namespace: %w", err)
	}
	l, err := loadObjects(spec, cfg.BPFFSDir, log)
	if err != nil {
		probe.Close()
		ns.Close()
		lock.release()
		return nil, err
	}
	d := &Datapath{
		lock:      lock,
		ns:        ns,
		hz:        hz,
		probe:     probe,
		clock:     newClock(probe, hz),
		cfg:       cfg,
		log:       log,
		spec:      spec,
		objs:      l.objs,
		replaced:  l.replaced,
		oldCT:     l.oldCT,
		links:     make(map[hook]link.Link),
		stopped:   make(chan struct{}),
		seed:      maphash.MakeSeed(),
		preceding: make(map[hook][]ebpf.ProgramID),
		settling:  make(map[hook]time.Time),
		kicks:     make(chan struct{}, 1),
	}
	for i, p := range []*ebpf.Program{d.objs.EgTcIngress, d.objs.EgTcEgress} {
		info, err := p.Info()
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("read program info: %w", err)
		}
		d.progIDs[i], _ = info.ID()
	}
	d.ctReconcile = needsReconcile(l)
	if d.ctSlots, err = newCTSlots(d.objs.EgCtSlots, log); err != nil {
		d.Close()
		return nil, err
	}
	var g bpfEgGeneration
	if err := d.objs.EgState.Lookup(uint32(0), &g); err != nil {
		d.Close()
		return nil, fmt.Errorf("read eg_state: %w", err)
	}
	d.word = g.Word
	if err := d.adoptLinks(len(l.replaced) == 0); err != nil {
		d.Close()
		return nil, err
	}
	if len(l.replaced) == 0 && d.ctReconcile {
		// Our programs run already (no upgrade to finish): recount now.
		if err := d.reconcileCT(); err != nil {
			d.Close()
			return nil, err
		}
		d.ctReconcile = false
	}
	if err := d.startWatch(); err != nil {
		d.Close()
		return nil, err
	}
	if len(cfg.GuardInterfaces) > 0 && d.word>>1 == 0 {
		// Nothing was ever enforced here: guard what exists now, denied
		// whatever --default-mode says, until a source speaks. (On a
		// restart, the pinned generation stays in force instead, and
		// the last known good rule set follows at once: Restore.)
		if _, err := d.Apply(guardOnlyRuleSet()); err != nil {
			d.Close()
			return nil, fmt.Errorf("guard interfaces: %w", err)
		}
	}
	log.Info("datapath open",
		zap.Uint32("generation", d.word>>1),
		zap.Uint32("hz", hz),
		zap.Int("adopted-links", len(d.links)),
		zap.Strings("new-maps", l.fresh),
		zap.Strings("replaced-maps", slices.Sorted(maps.Keys(l.replaced))))
	return d, nil
}

// Generation returns the number of the active rule-set generation (0: none
// applied yet on this machine).
func (d *Datapath) Generation() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.word >> 1
}

// Close releases this process's handles. Enforcement stays in place: links
// and maps are pinned. Close is idempotent.
func (d *Datapath) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return d.closeErr
	}
	d.closed = true
	close(d.stopped)
	watch := d.watch
	d.mu.Unlock()

	var errs []error
	if watch != nil {
		watch.stop() // outside mu: the watcher takes it
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for h, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link %s: %w", h, err))
		}
	}
	if p := d.takePrepared(); p != nil {
		errs = append(errs, p.gen.close())
	}
	if p := d.takePrepared(); p != nil {
		errs = append(errs, p.gen.close())
	}
	for _, g := range d.gens {
		if g != nil {
			errs = append(errs, g.close())
		}
	}
	// A GC sweep in progress finishes before its maps are closed (lock
	// order: mu, then gc.mu).
	d.gc.mu.Lock()
	defer d.gc.mu.Unlock()
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close eBPF objects: %w", err))
	}
	for _, m := range d.oldCT {
		m.Close()
	}
	if d.gc.high != nil {
		d.gc.high.Close()
	}
	if err := d.probe.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close jiffies probe: %w", err))
	}
	if err := d.ns.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close network namespace handle: %w", err))
	}
	if err := d.lock.release(); err != nil { // nil once Uninstall took it
		errs = append(errs, fmt.Errorf("release the lock on %s: %w", d.cfg.BPFFSDir, err))
	}
	d.closeErr = errors.Join(errs...)
	return d.closeErr
}

// errClosed is returned by methods called after Close.
var errClosed = errors.New("datapath is closed")
