package policyrepo

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// Config configures a Repo.
type Config struct {
	Store store.Store
	Nodes *nodes.Table
	Log   *zap.Logger
	Now   func() time.Time
	// OnChange is given the merged policy in force after Load and after
	// every committed change (the alert engine follows it). It must not
	// block.
	OnChange func(*policy.Set)
	// Check, if set, adds the controller's own checks of a change (that
	// webhook secrets can be read, say): its errors refuse the change,
	// its warnings are reported. changed says whether a position is in
	// the request (a delete changes no document).
	Check func(merged *policy.Set, changed func(policy.Pos) bool) policy.Diagnostics
	// Audit counts the audit records of policy changes (nil: not
	// counted; the store writes them with each change anyway).
	Audit *audit.Recorder
}

// Repo holds the policy resources. It is safe for concurrent use.
type Repo struct {
	cfg   Config
	st    store.Store
	nodes *nodes.Table
	log   *zap.Logger
	now   func() time.Time

	// Lock order: applyMu, then the node table's lock (nodes.Table), then
	// docMu. applyMu serialises changes and version assignment; resources
	// are only written with it held. docMu guards resources for readers
	// that do not hold applyMu (Documents), and nothing else is locked or
	// called while it is held.
	applyMu   sync.Mutex
	docMu     sync.RWMutex
	resources map[store.ResourceKey]*resource
}

// resource is one stored policy resource: its document and the resource
// parsed from it alone.
type resource struct {
	key     store.ResourceKey
	doc     []byte
	set     *policy.Set
	diags   policy.Diagnostics // problems of a stored document (only after an upgrade made the parser stricter)
	updated time.Time
	source  string // "" for the API's resources, else store.SourceKubernetes, ... (see Sync)
	file    string // the name its diagnostics give the document, while it is incoming
}

// Document is a stored resource as readers see it.
type Document struct {
	Key     store.ResourceKey
	Text    []byte
	Set     *policy.Set // the resource parsed alone; nil fields if it no longer parses
	Updated time.Time
	// Source is "" for a resource applied through the API, else the
	// system that owns it (store.SourceKubernetes).
	Source string
}

// New returns an empty repository; Load fills it.
func New(cfg Config) *Repo {
	if cfg.OnChange == nil {
		cfg.OnChange = func(*policy.Set) {}
	}
	return &Repo{cfg: cfg, st: cfg.Store, nodes: cfg.Nodes, log: cfg.Log, now: cfg.Now,
		resources: make(map[store.ResourceKey]*resource)}
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

// NotFoundError is a delete of resources that do not exist.
type NotFoundError struct{ Missing []string }

func (e *NotFoundError) Error() string { return strings.Join(e.Missing, "\n") }

// OwnedError is an API change to resources that another system owns
// (pods and custom resources mirrored from Kubernetes): nothing was
// changed. Each entry says which resource and where it comes from.
type OwnedError struct{ Owned []string }

func (e *OwnedError) Error() string {
	return "resources owned by another system, nothing changed:\n" + strings.Join(e.Owned, "\n")
}

// ownedLocked refuses an API change to any of keys that a source owns.
// Called with applyMu held.
func (r *Repo) ownedLocked(keys []store.ResourceKey) error {
	var owned []string
	for _, k := range slices.SortedFunc(slices.Values(keys), compareKeys) {
		if res := r.resources[k]; res != nil && res.source != "" {
			owned = append(owned, fmt.Sprintf("%s: comes from %s; change it there", keyString(k), Origin(k, res.source)))
		}
	}
	if len(owned) > 0 {
		return &OwnedError{Owned: owned}
	}
	return nil
}

// Origin says where a sourced resource comes from, for people: the
// Kubernetes object it mirrors.
func Origin(k store.ResourceKey, source string) string {
	if source != store.SourceKubernetes {
		return source
	}
	if k.Kind == policy.KindWorkload {
		return "Kubernetes (Pod " + k.Name + ")"
	}
	return "Kubernetes (" + k.Kind + ".eastguard.dev " + k.Name + ", kubectl edit " + strings.ToLower(k.Kind) + " " + k.Name + ")"
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

func compareKeys(a, b store.ResourceKey) int {
	return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Name, b.Name))
}

// Load reads the resources and the latest rule sets, then brings the rule
// sets up to date with the compiler (a new controller version may compile
// differently). Stored documents that no longer parse are logged and keep
// the last committed rule sets in force.
func (r *Repo) Load(ctx context.Context) error {
	stored, err := r.st.Resources(ctx)
	if err != nil {
		return err
	}
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	broken := 0
	r.docMu.Lock()
	for _, s := range stored {
		res := parseStored(s)
		if res.diags.HasErrors() {
			broken++
			r.log.Error("stored policy document no longer valid; re-apply a corrected version",
				zap.String("resource", keyString(s.ResourceKey)), zap.String("diagnostics", res.diags.Errors().Err().Error()))
		}
		r.resources[s.ResourceKey] = res
	}
	r.docMu.Unlock()
	merged, _ := r.mergedLocked(nil)
	merged.Sort()
	r.cfg.OnChange(merged)
	records, err := r.st.LatestRuleSets(ctx)
	if err != nil {
		return err
	}
	var latest []*nodes.Version
	for _, rec := range records {
		rs, err := decodeRuleSet(rec)
		if err != nil {
			return err
		}
		latest = append(latest, &nodes.Version{Num: rec.Version, Hash: rec.Hash, RuleSet: rs, At: rec.Created, Shared: rec.Shared})
	}
	r.nodes.SetLatest(latest)
	if broken > 0 {
		r.log.Error("policy not recompiled at start: stored documents are invalid; agents get the last committed rule sets",
			zap.Int("invalid-documents", broken))
		return nil
	}
	changed, err := r.recompileLocked(ctx, nil)
	if err != nil {
		r.log.Error("policy not recompiled at start; agents get the last committed rule sets", zap.Error(err))
		return nil
	}
	if len(changed) > 0 {
		r.log.Info("rule sets recompiled at start", zap.Strings("nodes-changed", nodeNames(changed)))
	}
	return nil
}

func parseStored(s store.Resource) *resource {
	set, diags := policy.Parse(keyString(s.ResourceKey)+" (stored)", s.Document)
	return &resource{key: s.ResourceKey, doc: s.Document, set: set, diags: diags, updated: s.Updated, source: s.Source}
}

// Documents returns the stored resources of one kind, sorted by name.
func (r *Repo) Documents(kind string) []Document {
	r.docMu.RLock()
	defer r.docMu.RUnlock()
	var out []Document
	for _, k := range slices.SortedFunc(maps.Keys(r.resources), compareKeys) {
		if k.Kind == kind {
			res := r.resources[k]
			out = append(out, Document{Key: k, Text: res.doc, Set: res.set, Updated: res.updated, Source: res.source})
		}
	}
	return out
}

// Merged returns the stored policy as one set (the policy in force),
// for readers: the dashboard's map, explain and policy views. Callers
// must not change it.
func (r *Repo) Merged() *policy.Set {
	r.docMu.RLock()
	defer r.docMu.RUnlock()
	merged := &policy.Set{}
	for _, k := range slices.SortedFunc(maps.Keys(r.resources), compareKeys) {
		merged.Merge(r.resources[k].set)
	}
	return merged
}

// Apply validates the files as one change on top of the stored policy,
// compiles every node and commits the resources and the changed nodes' new
// versions in one transaction; then the agents of those nodes are told.
// Invalid input is refused whole with an *InvalidError; the policy in
// force stays.
func (r *Repo) Apply(ctx context.Context, files []apiclient.File, dryRun bool) (*apiclient.ChangeResult, error) {
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
		docs, err := policy.SplitResources(name, []byte(f.Content), set)
		if err != nil {
			return nil, invalid("invalid policy, nothing applied", []string{err.Error()})
		}
		for _, d := range docs {
			incoming = append(incoming, &resource{key: store.ResourceKey{Kind: d.Ref.Kind, Name: d.Ref.Name}, doc: d.Text, set: d.Set})
		}
	}
	if diags.HasErrors() {
		return nil, invalid(fmt.Sprintf("invalid policy: %s, nothing applied", plural(len(diags.Errors()), "error")), diagStrings(diags.Errors()))
	}
	if len(incoming) == 0 {
		return nil, invalid("nothing to apply", []string{"the input holds no resources"})
	}

	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	replaced := make(map[store.ResourceKey]bool, len(incoming))
	for _, res := range incoming {
		replaced[res.key] = true
	}
	if err := r.ownedLocked(slices.Collect(maps.Keys(replaced))); err != nil {
		return nil, err
	}
	return r.changeLocked(ctx, incoming, replaced, dryRun, func(d policy.Diagnostic) bool { return requestFiles[d.Pos.File] })
}

// Delete removes resources as one change; every one must exist.
func (r *Repo) Delete(ctx context.Context, keys []store.ResourceKey, dryRun bool) (*apiclient.ChangeResult, error) {
	if len(keys) == 0 {
		return nil, invalid("nothing to delete", []string{"the request names no resources"})
	}
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	var missing []string
	del := make(map[store.ResourceKey]bool, len(keys))
	for _, k := range keys {
		if r.resources[k] == nil {
			missing = append(missing, fmt.Sprintf("%s: no such resource", keyString(k)))
		}
		del[k] = true
	}
	if len(missing) > 0 {
		return nil, &NotFoundError{Missing: missing}
	}
	if err := r.ownedLocked(keys); err != nil {
		return nil, err
	}
	res, err := r.changeLocked(ctx, nil, del, dryRun, func(policy.Diagnostic) bool { return true })
	if err != nil {
		return nil, err
	}
	for _, k := range slices.SortedFunc(maps.Keys(del), compareKeys) {
		res.Deleted = append(res.Deleted, keyString(k))
	}
	return res, nil
}

// changeLocked validates the stored policy without the removed keys plus
// the incoming resources, compiles it, and commits unless dryRun. keep
// selects the warnings to report. Called with applyMu held.
func (r *Repo) changeLocked(ctx context.Context, incoming []*resource, removed map[store.ResourceKey]bool, dryRun bool,
	keep func(policy.Diagnostic) bool) (*apiclient.ChangeResult, error) {
	merged, diags := r.validateLocked(incoming, removed, keep)
	diags.Sort()
	if diags.HasErrors() {
		return nil, invalid(fmt.Sprintf("invalid policy: %s, nothing applied", plural(len(diags.Errors()), "error")), diagStrings(diags.Errors()))
	}
	merged.Sort()
	ruleSets, warnings, err := r.compileLocked(merged, nil)
	if err != nil {
		return nil, invalid("policy does not compile, nothing applied", strings.Split(err.Error(), "\n"))
	}
	out := &apiclient.ChangeResult{DryRun: dryRun}
	for _, d := range append(diags.Warnings(), warnings...) {
		if keep(d) {
			out.Warnings = append(out.Warnings, d.String())
		}
	}
	versions := r.nextVersionsLocked(ruleSets)
	for _, v := range versions {
		out.Nodes = append(out.Nodes, apiclient.NodeVersion{Node: v.RuleSet.Node, Version: v.Num, Hash: v.Hash})
	}
	now := r.now()
	var put []store.Resource
	for _, res := range incoming {
		old := r.resources[res.key]
		switch {
		case old == nil:
			out.Created = append(out.Created, keyString(res.key))
		case bytes.Equal(old.doc, res.doc):
			out.Unchanged = append(out.Unchanged, keyString(res.key))
			continue
		default:
			out.Updated = append(out.Updated, keyString(res.key))
		}
		res.updated = now
		put = append(put, store.Resource{ResourceKey: res.key, Document: res.doc, Updated: now, Source: res.source})
	}
	if dryRun {
		return out, nil
	}
	var del []store.ResourceKey
	var deleted []string
	coming := make(map[store.ResourceKey]bool, len(incoming))
	for _, res := range incoming {
		coming[res.key] = true
	}
	for k := range removed {
		if r.resources[k] != nil && !coming[k] {
			del = append(del, k)
			deleted = append(deleted, keyString(k))
		}
	}
	slices.SortFunc(del, compareKeys)
	// One audit record per resource that changes, by ctx's actor, with
	// the hashes of its stored document before and after.
	var records []store.AuditRecord
	for _, p := range put {
		ar := audit.Record(ctx, now, audit.PolicyApply, audit.ResourceObject(p.ResourceKey), "created")
		if old := r.resources[p.ResourceKey]; old != nil {
			ar.Before, ar.Detail = audit.Hash(old.doc), "updated"
		}
		ar.After = audit.Hash(p.Document)
		records = append(records, ar)
	}
	for _, k := range del {
		ar := audit.Record(ctx, now, audit.PolicyDelete, audit.ResourceObject(k), "deleted")
		ar.Before = audit.Hash(r.resources[k].doc)
		records = append(records, ar)
	}
	if err := r.commitLocked(ctx, put, del, versions, records); err != nil {
		return nil, err
	}
	r.cfg.Audit.Written(records...)
	r.docMu.Lock()
	for _, k := range del {
		delete(r.resources, k)
	}
	for _, res := range incoming {
		if r.resources[res.key] == nil || !bytes.Equal(r.resources[res.key].doc, res.doc) {
			r.resources[res.key] = res
		}
	}
	r.docMu.Unlock()
	r.cfg.OnChange(merged)
	r.log.Info("policy changed",
		zap.Strings("created", out.Created), zap.Strings("updated", out.Updated), zap.Strings("deleted", deleted),
		zap.Strings("nodes-changed", nodeNames(versions)))
	return out, nil
}

// validateLocked validates the stored policy without removed, plus
// incoming, and returns it merged: the parsers' and the validator's
// diagnostics, and the controller's own checks (cfg.Check) of the
// positions keep selects, in a change that brings anything. Called with
// applyMu held.
func (r *Repo) validateLocked(incoming []*resource, removed map[store.ResourceKey]bool,
	keep func(policy.Diagnostic) bool) (*policy.Set, policy.Diagnostics) {
	merged, diags := r.mergedLocked(removed)
	for _, res := range incoming {
		merged.Merge(res.set)
	}
	diags = append(diags, merged.Validate()...)
	if r.cfg.Check != nil {
		diags = append(diags, r.cfg.Check(merged, func(p policy.Pos) bool {
			return len(incoming) > 0 && keep(policy.Diagnostic{Pos: p})
		})...)
	}
	return merged, diags
}

// mergedLocked returns the stored policy minus the removed keys, with the
// diagnostics of stored documents that no longer parse. Called with
// applyMu held.
func (r *Repo) mergedLocked(removed map[store.ResourceKey]bool) (*policy.Set, policy.Diagnostics) {
	merged := &policy.Set{}
	var diags policy.Diagnostics
	for _, k := range slices.SortedFunc(maps.Keys(r.resources), compareKeys) {
		if removed[k] {
			continue
		}
		res := r.resources[k]
		diags = append(diags, res.diags...)
		merged.Merge(res.set)
	}
	return merged, diags
}

var errNoRuleSet = errors.New("node has no rule set")
