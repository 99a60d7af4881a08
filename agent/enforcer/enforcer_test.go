package enforcer_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// fakeDatapath is an enforcer.Datapath without a kernel: it records what
// it is asked to apply and fails when told to.
type fakeDatapath struct {
	mu        sync.Mutex
	addrs     []netip.Addr
	addrErr   error
	applyErr  error
	updateErr error
	applied   []*ruleset.RuleSet
	updates   []ipcacheUpdate
	watch     chan struct{} // WatchAddresses's channel; nil: it fails
	gen       uint32
	last      *datapath.ApplyResult
	// Drift checks: each call takes the next of drifts (none when they
	// run out) and records its options; requests is CheckRequests.
	drifts   [][]datapath.Drift
	checks   []datapath.CheckOptions
	requests chan struct{}
}

func (d *fakeDatapath) Check(opts datapath.CheckOptions) ([]datapath.Drift, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checks = append(d.checks, opts)
	if len(d.drifts) == 0 {
		return nil, nil
	}
	ds := d.drifts[0]
	d.drifts = d.drifts[1:]
	return ds, nil
}

func (d *fakeDatapath) CheckRequests() <-chan struct{} { return d.requests }

func (d *fakeDatapath) checkCalls() []datapath.CheckOptions {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.checks)
}

// ipcacheUpdate is one UpdateIPCache call.
type ipcacheUpdate struct {
	upsert []ruleset.IPCacheEntry
	remove []netip.Prefix
}

var _ enforcer.Datapath = (*fakeDatapath)(nil)

func (d *fakeDatapath) Apply(rs *ruleset.RuleSet) (*datapath.ApplyResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applyErr != nil {
		return nil, d.applyErr
	}
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	d.applied = append(d.applied, rs)
	d.gen++
	d.last = &datapath.ApplyResult{Generation: d.gen, Version: rs.Version, Hash: rs.Hash(), Pending: []string{"eg1-later"}}
	return d.last, nil
}

func (d *fakeDatapath) UpdateIPCache(upsert []ruleset.IPCacheEntry, remove []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.updateErr != nil {
		return d.updateErr
	}
	d.updates = append(d.updates, ipcacheUpdate{slices.Clone(upsert), slices.Clone(remove)})
	return nil
}

func (d *fakeDatapath) WatchAddresses(ctx context.Context) (<-chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.watch == nil {
		return nil, errors.New("no netlink here")
	}
	out := make(chan struct{})
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.watch:
				select {
				case out <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

func (d *fakeDatapath) setAddrs(addrs ...netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs = addrs
}

func (d *fakeDatapath) ipcacheUpdates() []ipcacheUpdate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.updates)
}

func (d *fakeDatapath) NodeAddresses() ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.addrErr != nil {
		return nil, d.addrErr
	}
	return slices.Clone(d.addrs), nil
}

func (d *fakeDatapath) Status() datapath.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return datapath.Status{}
	}
	return datapath.Status{Generation: d.last.Generation, Version: d.last.Version, EffectiveHash: d.last.Hash}
}

func (d *fakeDatapath) appliedRuleSets() []*ruleset.RuleSet {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.applied)
}

func (d *fakeDatapath) fail(applyErr, addrErr error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applyErr, d.addrErr = applyErr, addrErr
}

var (
	webAddr  = netip.MustParseAddr("10.250.17.2")
	nodeAddr = netip.MustParseAddr("192.168.7.10")
)

// ruleSet is a valid rule set for node-a; port and rule name tell
// versions apart.
func ruleSet(version uint64, port uint16, ruleName string) *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node: "node-a", Version: version,
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "eg1-web", Identity: 256}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: netip.PrefixFrom(webAddr, 32), Identity: 256}},
		Entries:   []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Protocol: ruleset.ProtocolTCP, Port: port, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules:     []ruleset.RuleName{{ID: 1, Name: ruleName}},
	}
}

func openState(t *testing.T, path string) *state.Dir {
	t.Helper()
	st, err := state.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newEnforcer(t *testing.T, st *state.Dir) (*enforcer.Enforcer, *fakeDatapath) {
	t.Helper()
	dp := &fakeDatapath{addrs: []netip.Addr{nodeAddr}}
	return enforcer.New(dp, st, zaptest.NewLogger(t)), dp
}

// savedRuleSet returns what the state directory holds now.
func savedRuleSet(t *testing.T, st *state.Dir) *ruleset.RuleSet {
	t.Helper()
	rs, err := st.LoadRuleSet()
	if err != nil {
		t.Fatalf("state dir: %v", err)
	}
	return rs
}

func TestRestoreAppliesSavedRuleSet(t *testing.T) {
	dir := t.TempDir()
	v7 := ruleSet(7, 443, "p/https")

	// An earlier run applied v7.
	first, _ := newEnforcer(t, openState(t, dir))
	if _, err := first.Apply(v7, nil); err != nil {
		t.Fatal(err)
	}

	// The next run restores it before any source speaks.
	e, dp := newEnforcer(t, openState(t, dir))
	if e.Current() != nil {
		t.Fatalf("Current before Restore: %+v", e.Current())
	}
	if err := e.Restore(); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	applied := dp.appliedRuleSets()
	if len(applied) != 1 {
		t.Fatalf("datapath applies: %d, want 1", len(applied))
	}
	if want := enforcer.WithNodeAddresses(v7, []netip.Addr{nodeAddr}).Hash(); applied[0].Version != 7 || applied[0].Hash() != want {
		t.Errorf("datapath got version %d hash %s, want version 7 hash %s (v7 with the node's address)", applied[0].Version, applied[0].Hash(), want)
	}
	cur := e.Current()
	if cur == nil || cur.Version != 7 || cur.Hash() != v7.Hash() {
		t.Fatalf("Current after Restore: %+v, want v7 as saved", cur)
	}
	if st := e.Status(); st.Version != 7 || st.LastError != "" || st.AppliedAt.IsZero() || st.Datapath.Generation != 1 {
		t.Errorf("Status after Restore: %+v", st)
	}
}

func TestRestoreWithoutSavedRuleSet(t *testing.T) {
	e, dp := newEnforcer(t, openState(t, t.TempDir()))
	if err := e.Restore(); err != nil {
		t.Fatalf("Restore with nothing saved: %v", err)
	}
	if n := len(dp.appliedRuleSets()); n != 0 {
		t.Errorf("datapath applies: %d, want none", n)
	}
	if e.Current() != nil {
		t.Errorf("Current: %+v, want nil", e.Current())
	}
	if st := e.Status(); st.Version != 0 || st.Hash != "" || st.LastError != "" || !st.AppliedAt.IsZero() {
		t.Errorf("Status: %+v, want nothing applied", st)
	}

	// Without a state directory there is nothing to restore either.
	e, dp = newEnforcer(t, nil)
	if err := e.Restore(); err != nil || len(dp.appliedRuleSets()) != 0 {
		t.Errorf("Restore without state dir: err %v, %d applies", err, len(dp.appliedRuleSets()))
	}
}

func TestRestoreCorruptSavedRuleSet(t *testing.T) {
	st := openState(t, t.TempDir())
	if err := st.SaveRuleSet(ruleSet(3, 80, "p/http")); err != nil {
		t.Fatal(err)
	}
	files, err := os.ReadDir(st.Path())
	if err != nil || len(files) != 1 {
		t.Fatalf("state dir holds %v (%v), want the one rule set file", files, err)
	}
	path := filepath.Join(st.Path(), files[0].Name())

	for _, tc := range []struct {
		name, content string
		want          []string
	}{
		{"truncated", `{"node": "node-a", "endpoints": [`, []string{"last known good rule set", path}},
		{"invalid", `{"node": ""}`, []string{"last known good rule set", path, "empty node name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			e, dp := newEnforcer(t, st)
			err := e.Restore()
			if err == nil {
				t.Fatal("Restore of a corrupt file: no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Restore: %q does not say %q", err, w)
				}
			}
			if n := len(dp.appliedRuleSets()); n != 0 || e.Current() != nil {
				t.Errorf("a corrupt file was enforced: %d applies, Current %+v", n, e.Current())
			}
		})
	}
}

func TestRestoreRefusedByDatapath(t *testing.T) {
	dir := t.TempDir()
	st := openState(t, dir)
	if err := st.SaveRuleSet(ruleSet(3, 80, "p/http")); err != nil {
		t.Fatal(err)
	}
	e, dp := newEnforcer(t, st)
	dp.fail(errors.New("map full"), nil)
	err := e.Restore()
	if err == nil || !strings.Contains(err.Error(), "restore last known good rule set") || !strings.Contains(err.Error(), "map full") {
		t.Fatalf("Restore refused by the datapath: %v", err)
	}
	if e.Current() != nil {
		t.Errorf("Current: %+v, want nil", e.Current())
	}
	// The saved rule set is still there for the next run.
	if got := savedRuleSet(t, st); got.Version != 3 {
		t.Errorf("saved version %d, want 3", got.Version)
	}
}

func TestApplyFailureKeepsPrevious(t *testing.T) {
	dir := t.TempDir()
	st := openState(t, dir)
	e, dp := newEnforcer(t, st)
	v1, v2 := ruleSet(1, 80, "p/http"), ruleSet(2, 443, "p/https")

	res, err := e.Apply(v1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 1 || !slices.Equal(res.Pending, []string{"eg1-later"}) {
		t.Errorf("result: %+v", res)
	}
	good := e.Status()

	boom := errors.New("policy map full")
	dp.fail(boom, nil)
	res, err = e.Apply(v2, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("Apply with the datapath failing: err %v, want %v", err, boom)
	}
	if res != nil {
		t.Errorf("result of a failed apply: %+v", res)
	}
	if cur := e.Current(); cur != v1 {
		t.Errorf("Current after a failed apply: %+v, want v1", cur)
	}
	if got := savedRuleSet(t, st); got.Version != 1 || got.Hash() != v1.Hash() {
		t.Errorf("state dir holds version %d, want 1", got.Version)
	}
	s := e.Status()
	if s.LastError != boom.Error() {
		t.Errorf("Status.LastError %q, want %q", s.LastError, boom.Error())
	}
	if s.Version != 1 || s.Hash != good.Hash || s.Hash == "" {
		t.Errorf("Status after a failed apply: version %d hash %q, want version 1 hash %q", s.Version, s.Hash, good.Hash)
	}
	if s.AppliedAt.Before(good.AppliedAt) {
		t.Errorf("Status.AppliedAt went back: %v < %v", s.AppliedAt, good.AppliedAt)
	}

	// A restart restores v1, not v2.
	next, ndp := newEnforcer(t, openState(t, dir))
	if err := next.Restore(); err != nil {
		t.Fatal(err)
	}
	if cur := next.Current(); cur == nil || cur.Version != 1 || cur.Hash() != v1.Hash() {
		t.Errorf("restored after a failed apply: %+v, want v1", cur)
	}
	if a := ndp.appliedRuleSets(); len(a) != 1 || a[0].Version != 1 {
		t.Errorf("restored datapath applies: %d", len(a))
	}

	// The next good apply clears the error.
	dp.fail(nil, nil)
	if _, err := e.Apply(v2, nil); err != nil {
		t.Fatal(err)
	}
	if s := e.Status(); s.LastError != "" || s.Version != 2 {
		t.Errorf("Status after recovering: %+v", s)
	}
	if got := savedRuleSet(t, st); got.Version != 2 {
		t.Errorf("state dir holds version %d, want 2", got.Version)
	}
}

func TestApplyAddsNodeAddresses(t *testing.T) {
	st := openState(t, t.TempDir())
	e, dp := newEnforcer(t, st)
	v1 := ruleSet(1, 80, "p/http")
	linkLocal := netip.MustParseAddr("fe80::1%eth0")
	// The workload's own address is already in the rule set: it keeps
	// its identity, it does not become the host.
	dp.addrs = []netip.Addr{nodeAddr, linkLocal, webAddr, nodeAddr}

	if _, err := e.Apply(v1, nil); err != nil {
		t.Fatal(err)
	}
	applied := dp.appliedRuleSets()
	if len(applied) != 1 {
		t.Fatalf("datapath applies: %d", len(applied))
	}
	want := []ruleset.IPCacheEntry{
		{Prefix: netip.PrefixFrom(webAddr, 32), Identity: 256},
		{Prefix: netip.PrefixFrom(nodeAddr, 32), Identity: ruleset.IdentityHost},
		{Prefix: netip.MustParsePrefix("fe80::1/128"), Identity: ruleset.IdentityHost},
	}
	if got := applied[0].IPCache; !slices.Equal(got, want) {
		t.Errorf("datapath ipcache:\n got %v\nwant %v", got, want)
	}
	// The rule set as received is what Current returns and what is saved.
	if cur := e.Current(); cur != v1 {
		t.Errorf("Current is not the rule set received: %+v", cur)
	}
	if len(v1.IPCache) != 1 {
		t.Errorf("the caller's rule set was modified: ipcache %v", v1.IPCache)
	}
	if got := savedRuleSet(t, st); !slices.Equal(got.IPCache, v1.IPCache) || got.Hash() != v1.Hash() {
		t.Errorf("saved ipcache %v, want the rule set as received %v", got.IPCache, v1.IPCache)
	}
}

func TestWithNodeAddresses(t *testing.T) {
	rs := ruleSet(1, 80, "p/http")
	if got := enforcer.WithNodeAddresses(rs, nil); got != rs {
		t.Errorf("no addresses: got a copy")
	}
	if got := enforcer.WithNodeAddresses(rs, []netip.Addr{webAddr}); got != rs {
		t.Errorf("only known addresses: got a copy with %v", got.IPCache)
	}
	v6 := netip.MustParseAddr("2001:db8::10")
	got := enforcer.WithNodeAddresses(rs, []netip.Addr{v6})
	if got == rs || len(got.IPCache) != 2 || got.IPCache[1] != (ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(v6, 128), Identity: ruleset.IdentityHost}) {
		t.Errorf("IPv6 node address: %v", got.IPCache)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("completed rule set invalid: %v", err)
	}
	if len(rs.IPCache) != 1 {
		t.Errorf("input modified: %v", rs.IPCache)
	}
}

func TestNodeAddressesFailureChangesNothing(t *testing.T) {
	st := openState(t, t.TempDir())
	e, dp := newEnforcer(t, st)
	v1, v2 := ruleSet(1, 80, "p/http"), ruleSet(2, 443, "p/https")
	book1 := enforcer.AddressBook{webAddr: "web-1"}
	if _, err := e.Apply(v1, book1); err != nil {
		t.Fatal(err)
	}

	boom := errors.New("netlink: address dump interrupted")
	dp.fail(nil, boom)
	if _, err := e.Apply(v2, enforcer.AddressBook{webAddr: "web-2"}); !errors.Is(err, boom) {
		t.Fatalf("Apply with NodeAddresses failing: err %v, want %v", err, boom)
	}
	if n := len(dp.appliedRuleSets()); n != 1 {
		t.Errorf("datapath applies: %d, want 1 (the failed one must not reach it)", n)
	}
	if cur := e.Current(); cur != v1 {
		t.Errorf("Current: %+v, want v1", cur)
	}
	if got := savedRuleSet(t, st); got.Version != 1 {
		t.Errorf("state dir holds version %d, want 1", got.Version)
	}
	if s := e.Status(); s.Version != 1 || s.LastError != boom.Error() {
		t.Errorf("Status: %+v", s)
	}
	if _, workloads := e.Names(); workloads(webAddr) != "web-1" {
		t.Errorf("address book replaced by a failed apply: %q", workloads(webAddr))
	}
}

func TestApplyStateSaveFailureIsNotFatal(t *testing.T) {
	root := t.TempDir()
	st := openState(t, filepath.Join(root, "state"))
	e, _ := newEnforcer(t, st)
	if err := os.RemoveAll(st.Path()); err != nil {
		t.Fatal(err)
	}
	v1 := ruleSet(1, 80, "p/http")
	if _, err := e.Apply(v1, nil); err != nil {
		t.Fatalf("Apply with an unusable state dir: %v", err)
	}
	if e.Current() != v1 || e.Status().LastError != "" {
		t.Errorf("enforced rule set not reported: Current %+v, Status %+v", e.Current(), e.Status())
	}
}

func TestNames(t *testing.T) {
	e, dp := newEnforcer(t, openState(t, t.TempDir()))

	rules, workloads := e.Names()
	if got := rules(ruleset.RuleDefaultDeny); got != ruleset.DefaultDenyName {
		t.Errorf("before any apply: rule 0 = %q", got)
	}
	if got := rules(5); got != "rule-5" {
		t.Errorf("before any apply: rule 5 = %q", got)
	}
	if got := workloads(webAddr); got != "" {
		t.Errorf("before any apply: %s = %q", webAddr, got)
	}

	v1 := ruleSet(1, 80, "payments/allow-http")
	v1.Rules = append(v1.Rules, ruleset.RuleName{ID: 7, Name: "payments/deny-db"})
	other := netip.MustParseAddr("10.250.9.9")
	if _, err := e.Apply(v1, enforcer.AddressBook{webAddr: "payments/web", other: "db/postgres"}); err != nil {
		t.Fatal(err)
	}
	rules, workloads = e.Names()
	for id, want := range map[ruleset.RuleID]string{
		1: "payments/allow-http", 7: "payments/deny-db", ruleset.RuleDefaultDeny: ruleset.DefaultDenyName, 9: "rule-9",
	} {
		if got := rules(id); got != want {
			t.Errorf("rule %d = %q, want %q", id, got, want)
		}
	}
	for a, want := range map[netip.Addr]string{webAddr: "payments/web", other: "db/postgres", nodeAddr: ""} {
		if got := workloads(a); got != want {
			t.Errorf("workload of %s = %q, want %q", a, got, want)
		}
	}

	// A rule set without an address book keeps the book in force; the
	// rule names follow the new rule set.
	if _, err := e.Apply(ruleSet(2, 443, "payments/allow-https"), nil); err != nil {
		t.Fatal(err)
	}
	rules, workloads = e.Names()
	if got := rules(1); got != "payments/allow-https" {
		t.Errorf("after v2: rule 1 = %q", got)
	}
	if got := rules(7); got != "rule-7" {
		t.Errorf("after v2: rule 7 (gone) = %q", got)
	}
	if got := workloads(webAddr); got != "payments/web" {
		t.Errorf("after v2 without a book: %s = %q", webAddr, got)
	}

	// A failed apply changes neither.
	dp.fail(errors.New("no"), nil)
	if _, err := e.Apply(ruleSet(3, 8080, "x/y"), enforcer.AddressBook{webAddr: "x/web"}); err == nil {
		t.Fatal("failed apply: no error")
	}
	rules, workloads = e.Names()
	if rules(1) != "payments/allow-https" || workloads(webAddr) != "payments/web" {
		t.Errorf("after a failed apply: rule 1 = %q, %s = %q", rules(1), webAddr, workloads(webAddr))
	}
}

func TestObserveOncePerApply(t *testing.T) {
	dir := t.TempDir()
	first, _ := newEnforcer(t, openState(t, dir))
	if _, err := first.Apply(ruleSet(1, 80, "p/http"), nil); err != nil {
		t.Fatal(err)
	}

	e, dp := newEnforcer(t, openState(t, dir))
	var observed []error
	e.Observe = func(d time.Duration, err error) {
		if d < 0 {
			t.Errorf("negative duration %v", d)
		}
		observed = append(observed, err)
	}
	if err := e.Restore(); err != nil {
		t.Fatal(err)
	}
	if len(observed) != 1 || observed[0] != nil {
		t.Fatalf("after Restore: observed %v, want [nil]", observed)
	}

	applyErr := errors.New("verifier refused")
	dp.fail(applyErr, nil)
	e.Apply(ruleSet(2, 443, "p/https"), nil)
	addrErr := errors.New("no addresses")
	dp.fail(nil, addrErr)
	e.Apply(ruleSet(2, 443, "p/https"), nil)
	dp.fail(nil, nil)
	if _, err := e.Apply(ruleSet(2, 443, "p/https"), nil); err != nil {
		t.Fatal(err)
	}
	want := []error{nil, applyErr, addrErr, nil}
	if !slices.Equal(observed, want) {
		t.Errorf("observed %v, want %v", observed, want)
	}
}

func TestConcurrentUse(t *testing.T) {
	e, _ := newEnforcer(t, openState(t, t.TempDir()))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for v := range 20 {
				if _, err := e.Apply(ruleSet(uint64(i*100+v+1), uint16(1000+v), "p/r"), nil); err != nil {
					t.Error(err)
					return
				}
				_ = e.Status()
				rules, _ := e.Names()
				if got := rules(1); got != "p/r" {
					t.Errorf("rule 1 = %q", got)
				}
				if e.Current() == nil {
					t.Error("Current nil after an apply")
				}
			}
		})
	}
	wg.Wait()
	if s := e.Status(); s.Datapath.Generation != 80 || s.LastError != "" {
		t.Errorf("after 80 applies: %+v", s)
	}
}

// TestSyncNodeAddresses: an address the node gains after the rule set was
// applied becomes the host identity in place (UpdateIPCache, no new
// apply), one it loses stops being it; addresses the rule set itself
// names are never touched, and nothing happens before the first apply.
func TestSyncNodeAddresses(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	e.SyncNodeAddresses() // nothing applied yet: nothing to update
	if n := len(dp.ipcacheUpdates()); n != 0 {
		t.Fatalf("updates before any apply: %d", n)
	}
	if _, err := e.Apply(ruleSet(1, 443, "p/https"), nil); err != nil {
		t.Fatal(err)
	}
	host := func(a netip.Addr) ruleset.IPCacheEntry {
		return ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: ruleset.IdentityHost}
	}
	vip, ll := netip.MustParseAddr("192.168.7.77"), netip.MustParseAddr("fe80::1")
	steps := []struct {
		name   string
		addrs  []netip.Addr
		want   *ipcacheUpdate // nil: no update
		update error
	}{
		{"unchanged", []netip.Addr{nodeAddr}, nil, nil},
		{"a VIP and a link-local address appear", []netip.Addr{nodeAddr, vip, ll},
			&ipcacheUpdate{upsert: []ruleset.IPCacheEntry{host(vip), host(ll)}}, nil},
		{"an address the rule set names appears: its entry stays", []netip.Addr{nodeAddr, vip, ll, webAddr}, nil, nil},
		{"the first address goes", []netip.Addr{vip, ll, webAddr},
			&ipcacheUpdate{remove: []netip.Prefix{netip.PrefixFrom(nodeAddr, 32)}}, nil},
		{"the update fails", []netip.Addr{ll}, nil, errors.New("map full")},
		{"the next change retries what failed", []netip.Addr{ll},
			&ipcacheUpdate{remove: []netip.Prefix{netip.PrefixFrom(vip, 32)}}, nil},
	}
	for _, s := range steps {
		before := len(dp.ipcacheUpdates())
		dp.setAddrs(s.addrs...)
		dp.mu.Lock()
		dp.updateErr = s.update
		dp.mu.Unlock()
		e.SyncNodeAddresses()
		got := dp.ipcacheUpdates()[before:]
		switch {
		case s.want == nil && len(got) != 0:
			t.Errorf("%s: updates %+v, want none", s.name, got)
		case s.want != nil && (len(got) != 1 || !slices.Equal(got[0].upsert, s.want.upsert) || !slices.Equal(got[0].remove, s.want.remove)):
			t.Errorf("%s: updates %+v, want %+v", s.name, got, *s.want)
		}
	}
	dp.mu.Lock()
	dp.updateErr = nil
	dp.mu.Unlock()
	if n := len(dp.appliedRuleSets()); n != 1 {
		t.Errorf("rule sets applied: %d, want 1 (changes in place only)", n)
	}

	// A new rule set is applied with the addresses of the moment, and
	// later changes are relative to it.
	if _, err := e.Apply(ruleSet(2, 443, "p/https"), nil); err != nil {
		t.Fatal(err)
	}
	before := len(dp.ipcacheUpdates())
	e.SyncNodeAddresses()
	if got := dp.ipcacheUpdates()[before:]; len(got) != 0 {
		t.Errorf("updates right after an apply: %+v", got)
	}
}

// TestFollowNodeAddresses: FollowNodeAddresses catches up at once, updates
// on every reported change, and returns when ctx is done; without a watch
// it says so.
func TestFollowNodeAddresses(t *testing.T) {
	e, dp := newEnforcer(t, nil)
	if err := e.FollowNodeAddresses(context.Background()); err == nil {
		t.Errorf("FollowNodeAddresses without a watch: no error")
	}
	dp.watch = make(chan struct{})
	if _, err := e.Apply(ruleSet(1, 443, "p/https"), nil); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("192.168.7.77")
	dp.setAddrs(nodeAddr, vip) // before the watch starts
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.FollowNodeAddresses(ctx) }()
	testutil.Eventually(t, 5*time.Second, "the change before the watch", func() error {
		if n := len(dp.ipcacheUpdates()); n != 1 {
			return fmt.Errorf("%d updates", n)
		}
		return nil
	})
	dp.setAddrs(nodeAddr)
	dp.watch <- struct{}{}
	testutil.Eventually(t, 5*time.Second, "the reported change", func() error {
		u := dp.ipcacheUpdates()
		if len(u) != 2 || len(u[1].remove) != 1 || u[1].remove[0] != netip.PrefixFrom(vip, 32) {
			return fmt.Errorf("updates %+v", u)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("FollowNodeAddresses: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("FollowNodeAddresses did not return after ctx was done")
	}
}
