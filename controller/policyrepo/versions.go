package policyrepo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// compileLocked compiles set for the given nodes (nil: every node the
// controller knows of, and every node a workload names). Nodes without
// workloads get an empty rule set.
func (r *Repo) compileLocked(set *policy.Set, targets []string) (map[string]*ruleset.RuleSet, policy.Diagnostics, error) {
	withWorkloads := make(map[string]bool)
	for _, w := range set.Workloads {
		withWorkloads[w.Node] = true
	}
	all := maps.Clone(withWorkloads)
	known, monitor := r.nodes.CompileTargets()
	for _, name := range known {
		all[name] = true
	}
	if targets == nil {
		targets = slices.Sorted(maps.Keys(all))
	}
	var compileNodes []string
	for _, n := range targets {
		if withWorkloads[n] {
			compileNodes = append(compileNodes, n)
		}
	}
	out := make(map[string]*ruleset.RuleSet, len(targets))
	var warnings policy.Diagnostics
	if len(compileNodes) > 0 {
		res, err := compile.Compile(set, compile.Options{
			Nodes: compileNodes,
			DefaultMode: func(node string) ruleset.Mode {
				if monitor[node] {
					return ruleset.ModeMonitor
				}
				return ruleset.ModeEnforce
			},
		})
		if err != nil {
			return nil, nil, err
		}
		maps.Copy(out, res.RuleSets)
		warnings = res.Warnings
	}
	for _, n := range targets {
		if out[n] == nil {
			out[n] = &ruleset.RuleSet{Node: n}
		}
	}
	return out, warnings, nil
}

// nextVersionsLocked returns a new version for every node whose rule set
// differs from its latest, sorted by node. Unchanged nodes are found by
// comparing the rule sets (cheap); only changed ones are hashed, in
// parallel (hashing is the expensive part of an apply on a large cluster),
// each from its latest version's hash part: a change that keeps a node's
// addresses hashes only its entries and rules.
func (r *Repo) nextVersionsLocked(ruleSets map[string]*ruleset.RuleSet) []*nodes.Version {
	var out []*nodes.Version
	var parts []*ruleset.HashPart
	for _, name := range slices.Sorted(maps.Keys(ruleSets)) {
		rs := ruleSets[name]
		latest := r.nodes.Latest(name)
		v := &nodes.Version{Num: 1, RuleSet: rs}
		var part *ruleset.HashPart
		if latest != nil {
			part = latest.HashPart
			d := ruleset.Diff(latest.RuleSet, rs)
			if d.Empty() {
				continue
			}
			v.Num = latest.Num + 1
			if latest.Shared != "" && slices.Equal(latest.RuleSet.IPCache, rs.IPCache) {
				v.Shared = latest.Shared // stored already: not encoded nor written again
			}
			// A small change is kept for the node's stream (nodes.Version);
			// a large one it diffs itself if it needs to, rather than
			// every node holding a second copy of most of its rule set.
			if d.Len() <= ruleSetItems(rs)/4 {
				v.Change, v.ChangeFrom, v.ChangeFromHash = &d, latest.Num, latest.Hash
			}
		}
		rs.Version = v.Num
		out = append(out, v)
		parts = append(parts, part)
	}
	parallel(len(out), func(i int) { out[i].Hash, out[i].HashPart = out[i].RuleSet.HashFrom(parts[i]) })
	return out
}

// ruleSetItems is how many items a rule set holds, to weigh a delta
// against.
func ruleSetItems(rs *ruleset.RuleSet) int {
	return len(rs.Endpoints) + len(rs.IPCache) + len(rs.Entries) + len(rs.Rules)
}

// parallel runs f(0..n-1) on GOMAXPROCS goroutines and waits for them.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				f(i)
			}
		})
	}
	wg.Wait()
}

// encodeRuleSet is a version's rule set as the store keeps it: its
// protobuf wire form (compact and quick to encode; the version and hash
// are columns), written straight from the rule set (wire.MarshalRuleSet:
// an apply stores every changed node's, 10,000 of them at fleet scale).
// The ipcache, most of a large rule set and alike on many nodes, is
// stored apart once by its hash (store.RuleSetPart): a version that keeps
// its node's ipcache (v.Shared set) refers to the stored one, and one
// with a new ipcache returns it as part, setting v.Shared.
func encodeRuleSet(v *nodes.Version) (data []byte, part store.RuleSetPart) {
	if len(v.RuleSet.IPCache) == 0 {
		return wire.MarshalRuleSet(v.RuleSet, ""), part
	}
	if v.Shared == "" {
		ipc := wire.MarshalIPCache(v.RuleSet.IPCache)
		sum := sha256.Sum256(ipc)
		v.Shared = "sha256:" + hex.EncodeToString(sum[:])
		part = store.RuleSetPart{Key: v.Shared, Data: ipc}
	}
	return wire.MarshalRuleSetOwn(v.RuleSet, ""), part
}

// decodeRuleSet reads a stored version's rule set: its shared part (the
// ipcache), then its own, into one message.
func decodeRuleSet(rec store.RuleSetRecord) (*ruleset.RuleSet, error) {
	var m pb.RuleSet
	if rec.Shared != "" && len(rec.SharedData) == 0 {
		return nil, fmt.Errorf("stored rule set of %s version %d: its shared part %s is missing", rec.Node, rec.Version, rec.Shared)
	}
	if err := proto.Unmarshal(rec.SharedData, &m); err != nil {
		return nil, fmt.Errorf("stored rule set of %s version %d: shared part %s: %w", rec.Node, rec.Version, rec.Shared, err)
	}
	if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(rec.Data, &m); err != nil {
		return nil, fmt.Errorf("stored rule set of %s version %d: %w", rec.Node, rec.Version, err)
	}
	rs, err := wire.ToRuleSet(&m)
	if err != nil {
		return nil, fmt.Errorf("stored rule set of %s version %d: %w", rec.Node, rec.Version, err)
	}
	rs.Version = rec.Version
	return rs, nil
}

// commitLocked persists a change, its versions and its audit records,
// then makes the versions current and wakes the nodes' streams.
func (r *Repo) commitLocked(ctx context.Context, put []store.Resource, del []store.ResourceKey, versions []*nodes.Version,
	records []store.AuditRecord) error {
	now := r.now()
	c := store.PolicyCommit{Put: put, Delete: del, RuleSets: make([]store.RuleSetRecord, len(versions)), Audit: records}
	parts := make([]store.RuleSetPart, len(versions))
	parallel(len(versions), func(i int) {
		v := versions[i]
		v.At = now
		var data []byte
		data, parts[i] = encodeRuleSet(v)
		c.RuleSets[i] = store.RuleSetRecord{Node: v.RuleSet.Node, Version: v.Num, Hash: v.Hash, Data: data, Shared: v.Shared, Created: now}
	})
	// Nodes with the same new ipcache give it once.
	given := make(map[string]bool)
	for _, p := range parts {
		if p.Key != "" && !given[p.Key] {
			given[p.Key] = true
			c.Parts = append(c.Parts, p)
		}
	}
	if err := r.st.CommitPolicy(ctx, c); err != nil {
		return err
	}
	r.nodes.SetLatest(versions)
	return nil
}

// recompileLocked compiles the stored policy for nodes (nil: all) and
// commits the versions that changed.
func (r *Repo) recompileLocked(ctx context.Context, targets []string) ([]*nodes.Version, error) {
	merged, diags := r.mergedLocked(nil)
	if diags.HasErrors() {
		return nil, diags.Err()
	}
	merged.Sort()
	ruleSets, _, err := r.compileLocked(merged, targets)
	if err != nil {
		return nil, err
	}
	versions := r.nextVersionsLocked(ruleSets)
	if len(versions) == 0 {
		return nil, nil
	}
	return versions, r.commitLocked(ctx, nil, nil, versions, nil)
}

// PrepareNode makes sure a connecting agent's node has a rule set
// compiled with the agent's default mode.
func (r *Repo) PrepareNode(ctx context.Context, name, defaultMode string) error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	changedMode := false
	r.nodes.Update(name, func(n *nodes.Node) {
		// Only monitor changes what the compiler does (unset is enforce).
		changedMode = (n.Rec.DefaultMode == ruleset.ModeMonitor.String()) != (defaultMode == ruleset.ModeMonitor.String())
		n.Rec.DefaultMode = defaultMode
	})
	if !changedMode && r.nodes.Latest(name) != nil {
		return nil
	}
	_, err := r.recompileLocked(ctx, []string{name})
	return err
}

// BumpPast gives a node a new version above an agent's: the agent enforces
// a version the controller has not issued (its data was restored from an
// older backup), and versions must only grow from the agent's view.
func (r *Repo) BumpPast(ctx context.Context, name string, agentVersion uint64) (*nodes.Version, error) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	latest := r.nodes.Latest(name)
	if latest == nil {
		return nil, fmt.Errorf("node %s: %w", name, errNoRuleSet)
	}
	if latest.Num > agentVersion {
		return latest, nil
	}
	rs := latest.RuleSet.Clone()
	rs.Version = agentVersion + 1
	v := &nodes.Version{Num: rs.Version, Hash: latest.Hash, RuleSet: rs, Shared: latest.Shared}
	if err := r.commitLocked(ctx, nil, nil, []*nodes.Version{v}, nil); err != nil {
		return nil, err
	}
	r.log.Warn("agent enforces a version this controller never issued; numbering moved past it",
		zap.String("node", name), zap.Uint64("agent-version", agentVersion), zap.Uint64("policy-version", v.Num))
	return v, nil
}

// StoredVersion returns an earlier version of a node's rule set, if the
// store still has it with that hash.
func (r *Repo) StoredVersion(ctx context.Context, name string, num uint64, hash string) *nodes.Version {
	if latest := r.nodes.Latest(name); latest != nil && latest.Num == num && latest.Hash == hash {
		return latest
	}
	rec, err := r.st.RuleSet(ctx, name, num)
	if err != nil || rec.Hash != hash {
		return nil
	}
	rs, err := decodeRuleSet(rec)
	if err != nil {
		r.log.Warn("stored rule set unreadable; sending a full one", zap.String("node", name), zap.Error(err))
		return nil
	}
	return &nodes.Version{Num: num, Hash: hash, RuleSet: rs, At: rec.Created, Shared: rec.Shared}
}

// nodeNames lists the nodes of versions, sorted, for logs: a person needs
// which nodes changed, not how many.
func nodeNames(versions []*nodes.Version) []string {
	names := make([]string, 0, len(versions))
	for _, v := range versions {
		names = append(names, v.RuleSet.Node)
	}
	slices.Sort(names)
	return names
}
