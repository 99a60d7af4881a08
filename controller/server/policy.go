package server

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// resource is one stored policy resource: its document and the resource
// parsed from it alone.
type resource struct {
	key     store.ResourceKey
	doc     []byte
	set     *policy.Set
	diags   policy.Diagnostics // problems of a stored document (only after an upgrade made the parser stricter)
	updated time.Time
}

// InvalidError is a refused policy change: nothing was applied. Each
// diagnostic is "file:line:col: path: message".
type InvalidError struct {
	Summary     string
	Diagnostics []string
}

func (e *InvalidError) Error() string {
	return e.Summary + ":\n" + strings.Join(e.Diagnostics, "\n")
}

func invalid(summary string, diags []string) *InvalidError {
	return &InvalidError{Summary: summary, Diagnostics: diags}
}

func diagStrings(ds policy.Diagnostics) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func keyString(k store.ResourceKey) string { return k.Kind + "/" + k.Name }

// storedName names a stored document in diagnostics.
func storedName(k store.ResourceKey) string { return keyString(k) + " (stored)" }

// loadPolicy reads the resources and the latest rule sets, then brings the
// rule sets up to date with the compiler.
func (s *Server) loadPolicy(ctx context.Context) error {
	stored, err := s.store.Resources(ctx)
	if err != nil {
		return err
	}
	broken := 0
	for _, r := range stored {
		res := parseStored(r)
		if res.diags.HasErrors() {
			broken++
			s.log.Error("stored policy document no longer valid; re-apply a corrected version",
				zap.String("resource", keyString(r.ResourceKey)), zap.String("diagnostics", res.diags.Errors().Err().Error()))
		}
		s.resources[r.ResourceKey] = res
	}
	merged, _ := s.mergedLocked(nil)
	merged.Sort()
	s.events.setPolicy(merged)
	records, err := s.store.LatestRuleSets(ctx)
	if err != nil {
		return err
	}
	for _, r := range records {
		rs, err := decodeRuleSet(r)
		if err != nil {
			return err
		}
		s.nodeLocked(r.Node).latest = &version{num: r.Version, hash: r.Hash, rs: rs, at: r.Created}
	}
	if broken > 0 {
		s.log.Error("policy not recompiled at start: stored documents are invalid; agents get the last committed rule sets",
			zap.Int("invalid-documents", broken))
		return nil
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	changed, err := s.recompileLocked(ctx, nil)
	if err != nil {
		s.log.Error("policy not recompiled at start; agents get the last committed rule sets", zap.Error(err))
		return nil
	}
	if len(changed) > 0 {
		s.log.Info("rule sets recompiled at start", zap.Int("nodes-changed", len(changed)))
	}
	return nil
}

func parseStored(r store.Resource) *resource {
	set, diags := policy.Parse(storedName(r.ResourceKey), r.Document)
	return &resource{key: r.ResourceKey, doc: r.Document, set: set, diags: diags, updated: r.Updated}
}

// Apply validates the files as one change on top of the stored policy,
// compiles every node and commits the resources and the changed nodes' new
// versions in one transaction; then the agents of those nodes are told.
// Invalid input is refused whole with an *InvalidError; the policy in
// force stays.
func (s *Server) Apply(ctx context.Context, files []apiclient.File, dryRun bool) (*apiclient.ChangeResult, error) {
	if len(files) == 0 {
		return nil, invalid("nothing to apply", []string{"the request holds no files"})
	}
	var diags policy.Diagnostics
	var incoming []*resource
	requestFiles := make(map[string]bool)
	for i, f := range files {
		name := f.Name
		if name == "" {
			name = fmt.Sprintf("<input %d>", i+1)
		}
		requestFiles[name] = true
		set, ds := policy.Parse(name, []byte(f.Content))
		diags = append(diags, ds...)
		if ds.HasErrors() {
			continue
		}
		res, err := splitResources(name, []byte(f.Content), set)
		if err != nil {
			return nil, invalid("invalid policy, nothing applied", []string{err.Error()})
		}
		incoming = append(incoming, res...)
	}
	if diags.HasErrors() {
		return nil, invalid(fmt.Sprintf("invalid policy: %s, nothing applied", plural(len(diags.Errors()), "error")), diagStrings(diags.Errors()))
	}
	if len(incoming) == 0 {
		return nil, invalid("nothing to apply", []string{"the input holds no resources"})
	}

	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	replaced := make(map[store.ResourceKey]bool, len(incoming))
	for _, r := range incoming {
		replaced[r.key] = true
	}
	return s.changeLocked(ctx, incoming, replaced, dryRun, func(d policy.Diagnostic) bool { return requestFiles[d.Pos.File] })
}

// Delete removes resources as one change; every one must exist.
func (s *Server) Delete(ctx context.Context, keys []store.ResourceKey, dryRun bool) (*apiclient.ChangeResult, error) {
	if len(keys) == 0 {
		return nil, invalid("nothing to delete", []string{"the request names no resources"})
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	var missing []string
	del := make(map[store.ResourceKey]bool, len(keys))
	for _, k := range keys {
		if s.resources[k] == nil {
			missing = append(missing, fmt.Sprintf("%s: no such resource", keyString(k)))
		}
		del[k] = true
	}
	if len(missing) > 0 {
		return nil, &NotFoundError{Missing: missing}
	}
	res, err := s.changeLocked(ctx, nil, del, dryRun, func(policy.Diagnostic) bool { return true })
	if err != nil {
		return nil, err
	}
	for _, k := range slices.SortedFunc(maps.Keys(del), compareKeys) {
		res.Deleted = append(res.Deleted, keyString(k))
	}
	return res, nil
}

// NotFoundError is a delete of resources that do not exist.
type NotFoundError struct{ Missing []string }

func (e *NotFoundError) Error() string { return strings.Join(e.Missing, "\n") }

func compareKeys(a, b store.ResourceKey) int {
	return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Name, b.Name))
}

// changeLocked validates the stored policy without the removed keys plus
// the incoming resources, compiles it, and commits unless dryRun. keep
// selects the warnings to report. Called with applyMu held.
func (s *Server) changeLocked(ctx context.Context, incoming []*resource, removed map[store.ResourceKey]bool, dryRun bool,
	keep func(policy.Diagnostic) bool) (*apiclient.ChangeResult, error) {
	merged, diags := s.mergedLocked(removed)
	for _, r := range incoming {
		merged.Merge(r.set)
	}
	diags = append(diags, merged.Validate()...)
	diags.Sort()
	if diags.HasErrors() {
		return nil, invalid(fmt.Sprintf("invalid policy: %s, nothing applied", plural(len(diags.Errors()), "error")), diagStrings(diags.Errors()))
	}
	merged.Sort()
	ruleSets, warnings, err := s.compileLocked(merged, nil)
	if err != nil {
		return nil, invalid("policy does not compile, nothing applied", strings.Split(err.Error(), "\n"))
	}
	res := &apiclient.ChangeResult{DryRun: dryRun}
	for _, d := range append(diags.Warnings(), warnings...) {
		if keep(d) {
			res.Warnings = append(res.Warnings, d.String())
		}
	}
	versions := s.nextVersionsLocked(ruleSets)
	for _, v := range versions {
		res.Nodes = append(res.Nodes, apiclient.NodeVersion{Node: v.rs.Node, Version: v.num, Hash: v.hash})
	}
	now := s.now()
	var put []store.Resource
	for _, r := range incoming {
		old := s.resources[r.key]
		switch {
		case old == nil:
			res.Created = append(res.Created, keyString(r.key))
		case bytes.Equal(old.doc, r.doc):
			res.Unchanged = append(res.Unchanged, keyString(r.key))
			continue
		default:
			res.Updated = append(res.Updated, keyString(r.key))
		}
		r.updated = now
		put = append(put, store.Resource{ResourceKey: r.key, Document: r.doc, Updated: now})
	}
	if dryRun {
		return res, nil
	}
	var del []store.ResourceKey
	for k := range removed {
		if s.resources[k] != nil && !slices.ContainsFunc(incoming, func(r *resource) bool { return r.key == k }) {
			del = append(del, k)
		}
	}
	if err := s.commitLocked(ctx, put, del, versions); err != nil {
		return nil, err
	}
	s.polMu.Lock()
	for _, k := range del {
		delete(s.resources, k)
	}
	for _, r := range incoming {
		if s.resources[r.key] == nil || !bytes.Equal(s.resources[r.key].doc, r.doc) {
			s.resources[r.key] = r
		}
	}
	s.polMu.Unlock()
	s.events.setPolicy(merged)
	s.log.Info("policy changed",
		zap.Strings("created", res.Created), zap.Strings("updated", res.Updated), zap.Strings("deleted", del2strings(del)),
		zap.Int("nodes-changed", len(versions)))
	return res, nil
}

func del2strings(keys []store.ResourceKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = keyString(k)
	}
	return out
}

// mergedLocked returns the stored policy minus the removed keys, with the
// diagnostics of stored documents that no longer parse.
func (s *Server) mergedLocked(removed map[store.ResourceKey]bool) (*policy.Set, policy.Diagnostics) {
	merged := &policy.Set{}
	var diags policy.Diagnostics
	for _, k := range slices.SortedFunc(maps.Keys(s.resources), compareKeys) {
		if removed[k] {
			continue
		}
		r := s.resources[k]
		diags = append(diags, r.diags...)
		merged.Merge(r.set)
	}
	return merged, diags
}

// compileLocked compiles set for the given nodes (nil: every node the
// controller knows of, and every node a workload names). Nodes without
// workloads get an empty rule set.
func (s *Server) compileLocked(set *policy.Set, nodes []string) (map[string]*ruleset.RuleSet, policy.Diagnostics, error) {
	withWorkloads := make(map[string]bool)
	for _, w := range set.Workloads {
		withWorkloads[w.Node] = true
	}
	all := maps.Clone(withWorkloads)
	s.mu.Lock()
	modes := make(map[string]ruleset.Mode, len(s.nodes))
	for name, n := range s.nodes {
		if n.rec.DefaultMode == ruleset.ModeMonitor.String() {
			modes[name] = ruleset.ModeMonitor
		}
		all[name] = true
	}
	s.mu.Unlock()
	if nodes == nil {
		nodes = slices.Sorted(maps.Keys(all))
	}
	var compileNodes []string
	for _, n := range nodes {
		if withWorkloads[n] {
			compileNodes = append(compileNodes, n)
		}
	}
	out := make(map[string]*ruleset.RuleSet, len(nodes))
	var warnings policy.Diagnostics
	if len(compileNodes) > 0 {
		res, err := compile.Compile(set, compile.Options{
			Nodes:       compileNodes,
			DefaultMode: func(node string) ruleset.Mode { return modes[node] },
		})
		if err != nil {
			return nil, nil, err
		}
		maps.Copy(out, res.RuleSets)
		warnings = res.Warnings
	}
	for _, n := range nodes {
		if out[n] == nil {
			out[n] = &ruleset.RuleSet{Node: n}
		}
	}
	return out, warnings, nil
}

// nextVersionsLocked returns a new version for every node whose rule set
// differs from its latest, sorted by node. Unchanged nodes are found by
// comparing the rule sets (cheap); only changed ones are hashed, in
// parallel (hashing is the expensive part of an apply on a large cluster).
func (s *Server) nextVersionsLocked(ruleSets map[string]*ruleset.RuleSet) []*version {
	var out []*version
	for _, name := range slices.Sorted(maps.Keys(ruleSets)) {
		rs := ruleSets[name]
		latest := s.latestOf(name)
		if latest != nil {
			if d := ruleset.Diff(latest.rs, rs); d.Empty() {
				continue
			}
		}
		num := uint64(1)
		if latest != nil {
			num = latest.num + 1
		}
		rs.Version = num
		out = append(out, &version{num: num, rs: rs})
	}
	parallel(len(out), func(i int) { out[i].hash = out[i].rs.Hash() })
	return out
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

// encodeRuleSet is a rule set as the store keeps it: its protobuf wire
// form (compact and quick to encode; the version and hash are columns).
func encodeRuleSet(v *version) ([]byte, error) {
	return proto.Marshal(wire.FromRuleSet(v.rs, ""))
}

func decodeRuleSet(r store.RuleSetRecord) (*ruleset.RuleSet, error) {
	var m pb.RuleSet
	if err := proto.Unmarshal(r.Data, &m); err != nil {
		return nil, fmt.Errorf("stored rule set of %s version %d: %w", r.Node, r.Version, err)
	}
	rs, err := wire.ToRuleSet(&m)
	if err != nil {
		return nil, fmt.Errorf("stored rule set of %s version %d: %w", r.Node, r.Version, err)
	}
	rs.Version = r.Version
	return rs, nil
}

// commitLocked persists a change and its versions, then makes the
// versions current and wakes the nodes' streams.
func (s *Server) commitLocked(ctx context.Context, put []store.Resource, del []store.ResourceKey, versions []*version) error {
	now := s.now()
	c := store.PolicyCommit{Put: put, Delete: del, RuleSets: make([]store.RuleSetRecord, len(versions))}
	errs := make([]error, len(versions))
	parallel(len(versions), func(i int) {
		v := versions[i]
		v.at = now
		data, err := encodeRuleSet(v)
		if err != nil {
			errs[i] = fmt.Errorf("encode rule set of %s: %w", v.rs.Node, err)
		}
		c.RuleSets[i] = store.RuleSetRecord{Node: v.rs.Node, Version: v.num, Hash: v.hash, Data: data, Created: now}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := s.store.CommitPolicy(ctx, c); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range versions {
		n := s.nodeLocked(v.rs.Node)
		n.latest = v
		if n.sess != nil {
			n.sess.wakeUp()
		}
	}
	return nil
}

// recompileLocked compiles the stored policy for nodes (nil: all) and
// commits the versions that changed.
func (s *Server) recompileLocked(ctx context.Context, nodes []string) ([]*version, error) {
	merged, diags := s.mergedLocked(nil)
	if diags.HasErrors() {
		return nil, diags.Err()
	}
	merged.Sort()
	ruleSets, _, err := s.compileLocked(merged, nodes)
	if err != nil {
		return nil, err
	}
	versions := s.nextVersionsLocked(ruleSets)
	if len(versions) == 0 {
		return nil, nil
	}
	return versions, s.commitLocked(ctx, nil, nil, versions)
}

// prepareNode makes sure a connecting agent's node has a rule set compiled
// with its default mode.
func (s *Server) prepareNode(ctx context.Context, name, defaultMode string) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	changedMode := false
	s.update(name, func(n *node) {
		// Only monitor changes what the compiler does (unset is enforce).
		changedMode = (n.rec.DefaultMode == ruleset.ModeMonitor.String()) != (defaultMode == ruleset.ModeMonitor.String())
		n.rec.DefaultMode = defaultMode
	})
	if !changedMode && s.latestOf(name) != nil {
		return nil
	}
	_, err := s.recompileLocked(ctx, []string{name})
	return err
}

// bumpPast gives a node a new version above an agent's: the agent enforces
// a version the controller has not issued (its data was restored from an
// older backup), and versions must only grow from the agent's view.
func (s *Server) bumpPast(ctx context.Context, name string, agentVersion uint64) (*version, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	latest := s.latestOf(name)
	if latest == nil {
		return nil, fmt.Errorf("node %s has no rule set", name)
	}
	if latest.num > agentVersion {
		return latest, nil
	}
	rs := latest.rs.Clone()
	rs.Version = agentVersion + 1
	v := &version{num: rs.Version, hash: latest.hash, rs: rs}
	if err := s.commitLocked(ctx, nil, nil, []*version{v}); err != nil {
		return nil, err
	}
	s.log.Warn("agent enforces a version this controller never issued; numbering moved past it",
		zap.String("node", name), zap.Uint64("agent-version", agentVersion), zap.Uint64("policy-version", v.num))
	return v, nil
}

// storedVersion returns an earlier version of a node's rule set, if the
// store still has it with that hash.
func (s *Server) storedVersion(ctx context.Context, name string, num uint64, hash string) *version {
	if latest := s.latestOf(name); latest != nil && latest.num == num && latest.hash == hash {
		return latest
	}
	r, err := s.store.RuleSet(ctx, name, num)
	if err != nil || r.Hash != hash {
		return nil
	}
	rs, err := decodeRuleSet(r)
	if err != nil {
		s.log.Warn("stored rule set unreadable; sending a full one", zap.String("node", name), zap.Error(err))
		return nil
	}
	return &version{num: num, hash: hash, rs: rs, at: r.Created}
}

// splitResources cuts one input into its documents and parses each on its
// own, so that each resource is stored as the text it was applied as.
// whole is the input parsed in one piece; the pieces must add up to it.
func splitResources(name string, data []byte, whole *policy.Set) ([]*resource, error) {
	var out []*resource
	for _, doc := range splitDocuments(data) {
		set, diags := policy.Parse(name, doc)
		if diags.HasErrors() {
			return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines: %v", name, diags.Err())
		}
		keys := setKeys(set)
		if len(keys) == 0 {
			continue
		}
		if len(keys) != 1 {
			return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines", name)
		}
		out = append(out, &resource{key: keys[0], doc: doc, set: set})
	}
	if len(out) != len(setKeys(whole)) {
		return nil, fmt.Errorf("%s: cannot cut the input into documents at its --- lines (found %d, the input has %d resources)",
			name, len(out), len(setKeys(whole)))
	}
	return out, nil
}

// splitDocuments splits a YAML stream at its document markers ("---" or
// "..." at the start of a line); pieces with nothing but comments and
// blank lines are dropped.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	hasContent := false
	emit := func() {
		if hasContent {
			docs = append(docs, bytes.TrimSpace(cur))
		}
		cur, hasContent = nil, false
	}
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		body := bytes.TrimRight(line, "\r\n")
		if isMarker(body, "---") {
			emit()
			rest := bytes.TrimSpace(body[3:])
			if len(rest) > 0 && rest[0] != '#' {
				cur, hasContent = append(cur, rest...), true
				cur = append(cur, '\n')
			}
			continue
		}
		if isMarker(body, "...") {
			emit()
			continue
		}
		cur = append(cur, line...)
		if t := bytes.TrimSpace(body); len(t) > 0 && t[0] != '#' {
			hasContent = true
		}
	}
	emit()
	return docs
}

func isMarker(line []byte, marker string) bool {
	return bytes.HasPrefix(line, []byte(marker)) && (len(line) == 3 || line[3] == ' ' || line[3] == '\t')
}

func setKeys(set *policy.Set) []store.ResourceKey {
	var keys []store.ResourceKey
	for _, r := range apiclient.RefsOf(set) {
		keys = append(keys, store.ResourceKey{Kind: r.Kind, Name: r.Name})
	}
	return keys
}

var errUnknownNode = errors.New("no such node")
