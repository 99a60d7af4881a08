// Package enforcer is the agent's one way of changing what the datapath
// enforces. Rule-set sources (standalone policy files, the controller) hand
// it rule sets; it completes them with what only the node knows (its own
// addresses, as the host identity, followed as they change, and with a
// controller the failsafe for the agent's own control traffic), applies
// them atomically, keeps the last
// applied one on disk as the last known good, and answers what is enforced
// now. Sources never touch the datapath themselves. It must not import
// anything under controller/.
package enforcer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Datapath is what the enforcer needs of agent/datapath.
type Datapath interface {
	Apply(*ruleset.RuleSet) (*datapath.ApplyResult, error)
	// UpdateIPCache changes entries of the rule set in force in place.
	UpdateIPCache(upsert []ruleset.IPCacheEntry, remove []netip.Prefix) error
	NodeAddresses() ([]netip.Addr, error)
	// WatchAddresses reports that the node's addresses changed, until
	// ctx is done.
	WatchAddresses(ctx context.Context) (<-chan struct{}, error)
	Status() datapath.Status
	// Check compares the kernel objects with what the datapath made of
	// them, repairing if told (WatchDrift); CheckRequests asks for a
	// check out of turn.
	Check(datapath.CheckOptions) ([]datapath.Drift, error)
	CheckRequests() <-chan struct{}
}

// AddressBook names the workloads behind addresses, for flow records. A
// standalone agent knows every workload; with a controller, the controller
// names flows itself.
type AddressBook map[netip.Addr]string

// Enforcer applies rule sets. It is safe for concurrent use.
type Enforcer struct {
	dp    Datapath
	state *state.Dir
	log   *zap.Logger

	// Observe, if set before use, is told about every apply (metrics).
	Observe func(d time.Duration, err error)

	// mu serialises applies, node-address updates and failsafe updates.
	// Lock order: mu, then the datapath's own lock (the datapath never
	// calls back).
	mu      sync.Mutex
	current *ruleset.RuleSet // as received (without the node's addresses)
	// nodeAddrs are the entries the enforcer added to current for the
	// node's own addresses, as the datapath holds them now.
	nodeAddrs []ruleset.IPCacheEntry
	// hashOf and hash cache current's hash for Status (metrics scrape it).
	hashOf  *ruleset.RuleSet
	hash    string
	book    AddressBook
	result  *datapath.ApplyResult
	lastErr error
	lastAt  time.Time
	// The failsafe (failsafe.go), also not in current: nil fs means none
	// (standalone). cp is what it opens now; fsEnforced says the rule set
	// in force has it.
	fs         *failsafe
	cp         ruleset.ControlPlane
	fsEnforced bool
}

// New returns an enforcer over dp that persists to st (may be nil).
func New(dp Datapath, st *state.Dir, log *zap.Logger) *Enforcer {
	return &Enforcer{dp: dp, state: st, log: log}
}

// Restore enforces the rule set saved by an earlier run, if there is one:
// the agent's last known good policy, before any source has spoken.
func (e *Enforcer) Restore() error {
	if e.state == nil {
		return nil
	}
	rs, err := e.state.LoadRuleSet()
	if errors.Is(err, state.ErrNone) {
		e.log.Info("no saved rule set: enforcing nothing until a source provides one")
		return nil
	}
	if err != nil {
		return fmt.Errorf("last known good rule set: %w", err)
	}
	if _, err := e.Apply(rs, nil); err != nil {
		return fmt.Errorf("restore last known good rule set: %w", err)
	}
	e.log.Info("last known good rule set enforced", zap.Uint64("policy-version", rs.Version))
	return nil
}

// Apply enforces rs (completed with the node's addresses and the
// failsafe) atomically and saves it as received. On error the previous rule set stays in force and the error is
// kept for status reports.
func (e *Enforcer) Apply(rs *ruleset.RuleSet, book AddressBook) (*datapath.ApplyResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	start := time.Now()
	res, added, err := e.apply(rs)
	if e.Observe != nil {
		e.Observe(time.Since(start), err)
	}
	e.lastAt = time.Now()
	e.lastErr = err
	if err != nil {
		e.log.Error("rule set not applied; the previous one stays in force",
			zap.Uint64("policy-version", rs.Version), zap.Error(err))
		return nil, err
	}
	e.current, e.result, e.nodeAddrs = rs, res, added
	if book != nil {
		e.book = book
	}
	if e.state != nil {
		if err := e.state.SaveRuleSet(rs); err != nil {
			// Enforced, but would not survive a restart without the
			// controller: say so loudly, it is not fatal.
			e.log.Error("applied rule set not saved as last known good", zap.Error(err))
		}
	}
	return res, nil
}

// apply enforces rs as completed for the datapath (the node's addresses,
// then the failsafe), and returns the entries it added for the node's
// addresses; called with e.mu held.
func (e *Enforcer) apply(rs *ruleset.RuleSet) (*datapath.ApplyResult, []ruleset.IPCacheEntry, error) {
	// The reserved ids are the failsafe's alone, with or without one: a
	// source's entry under the failsafe's rule would beat its own denies.
	if err := rs.CheckReserved(); err != nil {
		return nil, nil, err
	}
	addrs, err := e.dp.NodeAddresses()
	if err != nil {
		return nil, nil, err
	}
	extra := nodeAddressEntries(rs, addrs)
	eff := withEntries(rs, extra)
	withFS := eff
	if e.fs != nil {
		// After the node's addresses: the failsafe leaves those alone.
		if withFS, err = ruleset.WithFailsafe(eff, e.cp); err != nil {
			return nil, nil, err
		}
	}
	res, err := e.dp.Apply(withFS)
	if err != nil {
		return nil, nil, err
	}
	e.fsEnforced = withFS != eff
	return res, extra, nil
}

// WithNodeAddresses returns rs with every node address it has no exact
// entry for added as the host identity. A compiled rule set knows the
// node's addresses only if the policy declares the node as a host-mode
// workload; without them, traffic from the node to its workloads would be
// "world" instead of "host", and in host mode traffic to an address the
// datapath does not know as the node's passes as forwarded.
func WithNodeAddresses(rs *ruleset.RuleSet, addrs []netip.Addr) *ruleset.RuleSet {
	return withEntries(rs, nodeAddressEntries(rs, addrs))
}

// nodeAddressEntries are the host-identity entries of the node's addresses
// that rs has no exact entry for (an exact entry of the rule set wins),
// sorted by prefix.
func nodeAddressEntries(rs *ruleset.RuleSet, addrs []netip.Addr) []ruleset.IPCacheEntry {
	known := make(map[netip.Prefix]bool, len(rs.IPCache))
	for _, c := range rs.IPCache {
		known[c.Prefix] = true
	}
	var extra []ruleset.IPCacheEntry
	for _, a := range addrs {
		p := netip.PrefixFrom(a.WithZone(""), a.BitLen())
		if !known[p] {
			known[p] = true
			extra = append(extra, ruleset.IPCacheEntry{Prefix: p, Identity: ruleset.IdentityHost})
		}
	}
	slices.SortFunc(extra, func(a, b ruleset.IPCacheEntry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return extra
}

func withEntries(rs *ruleset.RuleSet, extra []ruleset.IPCacheEntry) *ruleset.RuleSet {
	if len(extra) == 0 {
		return rs
	}
	out := *rs
	out.IPCache = append(append([]ruleset.IPCacheEntry(nil), rs.IPCache...), extra...)
	return &out
}

// FollowNodeAddresses keeps the node's addresses the host identity in the
// rule set in force as they come and go (DHCP and SLAAC renewals, a VIP,
// a new interface or bridge), until ctx is done. Each change is written
// into the active generation in place, within milliseconds of the
// kernel's notification, without a rule-set swap: until then, in host
// mode, traffic to a new address passes as forwarded (not the node's),
// SSH included; a removed address stops being the host's. It returns an
// error only if it cannot watch at all.
func (e *Enforcer) FollowNodeAddresses(ctx context.Context) error {
	changes, err := e.dp.WatchAddresses(ctx)
	if err != nil {
		return err
	}
	e.SyncNodeAddresses() // whatever changed since the last apply
	for range changes {
		e.SyncNodeAddresses()
	}
	return nil
}

// SyncNodeAddresses brings the node's addresses in the rule set in force
// up to date with the addresses the node has now. Failures are logged;
// the next change retries.
func (e *Enforcer) SyncNodeAddresses() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current == nil {
		return // the next apply adds them
	}
	addrs, err := e.dp.NodeAddresses()
	if err != nil {
		e.log.Error("node addresses changed but could not be read; the host identity may be out of date", zap.Error(err))
		return
	}
	want := nodeAddressEntries(e.current, addrs)
	have := make(map[netip.Prefix]bool, len(e.nodeAddrs))
	for _, c := range e.nodeAddrs {
		have[c.Prefix] = true
	}
	var upsert []ruleset.IPCacheEntry
	for _, c := range want {
		if !have[c.Prefix] {
			upsert = append(upsert, c)
		}
		delete(have, c.Prefix)
	}
	remove := slices.SortedFunc(maps.Keys(have), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if len(upsert) == 0 && len(remove) == 0 {
		return
	}
	start := time.Now()
	if err := e.dp.UpdateIPCache(upsert, remove); err != nil {
		e.log.Error("node addresses changed but the host identity could not be updated; the next change retries",
			zap.Stringers("added", prefixes(upsert)), zap.Stringers("removed", remove), zap.Error(err))
		return
	}
	e.nodeAddrs = want
	e.log.Info("node addresses changed: host identity updated",
		zap.Stringers("added", prefixes(upsert)), zap.Stringers("removed", remove), zap.Duration("duration", time.Since(start)))
}

func prefixes(es []ruleset.IPCacheEntry) []netip.Prefix {
	out := make([]netip.Prefix, len(es))
	for i, c := range es {
		out[i] = c.Prefix
	}
	return out
}

// Names resolves rule ids and addresses for flow records, from the rule
// set in force.
func (e *Enforcer) Names() (rules func(ruleset.RuleID) string, workloads func(netip.Addr) string) {
	e.mu.Lock()
	rs, book := e.current, e.book
	e.mu.Unlock()
	rules = func(id ruleset.RuleID) string {
		if rs == nil {
			if id == ruleset.RuleDefaultDeny {
				return ruleset.DefaultDenyName
			}
			return fmt.Sprintf("rule-%d", id)
		}
		return rs.RuleName(id)
	}
	workloads = func(a netip.Addr) string { return book[a] }
	return rules, workloads
}

// Current returns the rule set in force as it was received, without the
// node's addresses and the failsafe (nil: none yet). It is the base the control plane
// applies deltas to; callers must not modify it.
func (e *Enforcer) Current() *ruleset.RuleSet {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.current
}

// Status is what the agent enforces and how the last apply went.
type Status struct {
	Version uint64 `json:"version"`
	// Hash is the rule set's as received (compiled), the one the
	// controller and egctl report; EffectiveHash is of what the datapath
	// enforces, with the node's own addresses (and the failsafe) added.
	Hash          string    `json:"hash,omitempty"`
	EffectiveHash string    `json:"effectiveHash,omitempty"`
	AppliedAt     time.Time `json:"appliedAt,omitzero"`
	LastError     string    `json:"lastError,omitempty"`
	// Failsafe is what the agent's failsafe opens (with a controller).
	Failsafe *FailsafeStatus `json:"failsafe,omitempty"`
	Datapath datapath.Status `json:"datapath"`
}

// Status reports the rule set in force.
func (e *Enforcer) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := Status{AppliedAt: e.lastAt, Datapath: e.dp.Status()}
	if e.result != nil {
		st.Version, st.EffectiveHash = e.result.Version, e.result.Hash
	}
	if e.current != nil {
		if e.hashOf != e.current {
			e.hashOf, e.hash = e.current, e.current.Hash()
		}
		st.Hash = e.hash
	}
	if e.lastErr != nil {
		st.LastError = e.lastErr.Error()
	}
	st.Failsafe = e.failsafeStatus()
	return st
}
