package policyrepo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// SourceObject is one resource as a source (Kubernetes) has it: the
// policy document it stands for, and the name diagnostics give its
// document (File), such as "Policy.eastguard.dev web".
type SourceObject struct {
	Key  store.ResourceKey
	File string
	Doc  []byte
}

// SyncResult is what a Sync did.
type SyncResult struct {
	// Change is what was committed (nil: nothing changed).
	Change *apiclient.ChangeResult
	// Refused holds the objects that are not in force as given, with
	// why. An object refused keeps its last accepted version in force,
	// if it had one.
	Refused map[store.ResourceKey]policy.Diagnostics
}

// maxSyncRounds bounds Sync's retries: the first round tries every
// object, the second leaves out those with errors, the third also keeps
// the deleted ones (a deletion can break a reference elsewhere).
const maxSyncRounds = 3

// Sync makes the resources of the given kinds that source owns equal to
// objs, as one change: new and changed objects are put, owned resources
// not in objs are deleted. An object that does not validate is left out
// and reported (its last accepted version, if any, stays in force), so
// one bad object never blocks the others: the valid set stays in force.
// Resources the API applied are never touched: an object that collides
// with one is refused. An error means nothing changed (a compile failure,
// the store).
func (r *Repo) Sync(ctx context.Context, source string, kinds []string, objs []SourceObject) (*SyncResult, error) {
	if source == "" {
		return nil, fmt.Errorf("sync: no source")
	}
	// The source is the actor of its changes in the audit trail.
	ctx = audit.WithActor(ctx, audit.Actor{Kind: source, ID: source})
	out := &SyncResult{Refused: make(map[store.ResourceKey]policy.Diagnostics)}
	present := make(map[store.ResourceKey]bool, len(objs))
	var parsed []*resource
	for _, o := range objs {
		present[o.Key] = true
		if r.unchanged(source, o) {
			continue // parsed when it was stored: a sync of 10,000 pods parses only what changed
		}
		res, diags := parseSourceObject(o, kinds)
		if diags.HasErrors() {
			out.Refused[o.Key] = diags.Errors()
			continue
		}
		res.source = source
		parsed = append(parsed, res)
	}

	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	var incoming []*resource
	for _, res := range parsed {
		old := r.resources[res.key]
		switch {
		case old != nil && old.source != source:
			out.Refused[res.key] = policy.Diagnostics{{Pos: onlyMeta(res.set).NamePos, Path: "metadata.name", Severity: policy.SeverityError,
				Message: fmt.Sprintf("a %s named %s was applied through the API (egctl); delete it there to let %s own it", res.key.Kind, res.key.Name, source)}}
		case old != nil && bytes.Equal(old.doc, res.doc):
			// unchanged
		default:
			incoming = append(incoming, res)
		}
	}
	var deleted []store.ResourceKey
	for k, res := range r.resources {
		if res.source == source && slices.Contains(kinds, k.Kind) && !present[k] {
			deleted = append(deleted, k)
		}
	}
	slices.SortFunc(deleted, compareKeys)

	if len(incoming)+len(deleted) == 0 {
		return out, nil
	}
	// The usual case, a valid change, validates once; an invalid one is
	// then taken apart to find what to leave out.
	change, err := r.changeLocked(ctx, incoming, changedKeys(incoming, deleted), false, inFiles(incoming))
	var inv *InvalidError
	if errors.As(err, &inv) {
		if incoming, deleted, err = r.leaveOutInvalidLocked(source, incoming, deleted, out); err != nil {
			return nil, err
		}
		if len(incoming)+len(deleted) == 0 {
			return out, nil
		}
		change, err = r.changeLocked(ctx, incoming, changedKeys(incoming, deleted), false, inFiles(incoming))
	}
	if err != nil {
		return nil, err
	}
	for _, k := range deleted {
		change.Deleted = append(change.Deleted, keyString(k))
	}
	out.Change = change
	return out, nil
}

// inFiles selects the diagnostics in the incoming objects' documents:
// the controller's own checks (a webhook secret that can be read) apply
// to what changes, as for an apply, so that a resource the API owns
// never blocks Kubernetes' changes.
func inFiles(incoming []*resource) func(policy.Diagnostic) bool {
	files := make(map[string]bool, len(incoming))
	for _, res := range incoming {
		files[res.file] = true
	}
	return func(d policy.Diagnostic) bool { return files[d.Pos.File] }
}

// leaveOutInvalidLocked returns the part of a change that validates: the
// first round leaves out the incoming objects with errors (reported in
// out.Refused), the next also keeps the deleted resources (a deletion can
// break a reference elsewhere). Called with applyMu held.
func (r *Repo) leaveOutInvalidLocked(source string, incoming []*resource, deleted []store.ResourceKey,
	out *SyncResult) ([]*resource, []store.ResourceKey, error) {
	for round := 1; len(incoming)+len(deleted) > 0; round++ {
		_, diags := r.validateLocked(incoming, changedKeys(incoming, deleted), inFiles(incoming))
		if !diags.HasErrors() {
			break
		}
		if round == maxSyncRounds {
			return nil, nil, invalid("objects from "+source+" do not validate together, nothing changed", diagStrings(diags.Errors()))
		}
		byFile := make(map[string]policy.Diagnostics)
		for _, d := range diags.Errors() {
			byFile[d.Pos.File] = append(byFile[d.Pos.File], d)
		}
		kept := incoming[:0:0]
		for _, res := range incoming {
			if ds := byFile[res.file]; len(ds) > 0 {
				out.Refused[res.key] = ds
				continue
			}
			kept = append(kept, res)
		}
		if len(kept) == len(incoming) {
			// The errors are in resources outside this change: a deletion
			// broke a reference (an AlertRule naming a deleted Webhook).
			// Keep the deleted resources until that is mended.
			if len(deleted) > 0 {
				r.log.Warn("objects deleted in "+source+" stay in force: other resources still refer to them",
					zap.Strings("resources", keyStrings(deleted)), zap.Error(diags.Errors().Err()))
			}
			deleted = nil
		}
		incoming = kept
	}
	return incoming, deleted, nil
}

// unchanged reports whether the object is stored as it is, by source.
func (r *Repo) unchanged(source string, o SourceObject) bool {
	r.docMu.RLock()
	defer r.docMu.RUnlock()
	old := r.resources[o.Key]
	return old != nil && old.source == source && bytes.Equal(old.doc, o.Doc)
}

// parseSourceObject parses one object's document, which must hold
// exactly the one resource its key names, of one of kinds.
func parseSourceObject(o SourceObject, kinds []string) (*resource, policy.Diagnostics) {
	set, diags := policy.Parse(o.File, o.Doc)
	if diags.HasErrors() {
		return nil, diags
	}
	refs := set.Refs()
	if len(refs) != 1 || refs[0].Kind != o.Key.Kind || refs[0].Name != o.Key.Name || !slices.Contains(kinds, o.Key.Kind) {
		return nil, policy.Diagnostics{{Pos: policy.Pos{File: o.File, Line: 1, Col: 1}, Severity: policy.SeverityError,
			Message: fmt.Sprintf("the document must hold the %s %s alone", o.Key.Kind, o.Key.Name)}}
	}
	return &resource{key: o.Key, doc: o.Doc, set: set, file: o.File}, diags
}

func changedKeys(incoming []*resource, deleted []store.ResourceKey) map[store.ResourceKey]bool {
	out := make(map[store.ResourceKey]bool, len(incoming)+len(deleted))
	for _, res := range incoming {
		out[res.key] = true
	}
	for _, k := range deleted {
		out[k] = true
	}
	return out
}

func keyStrings(keys []store.ResourceKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = keyString(k)
	}
	return out
}

// SourceKeys returns the keys of the resources source owns, sorted.
func (r *Repo) SourceKeys(source string) []store.ResourceKey {
	r.docMu.RLock()
	defer r.docMu.RUnlock()
	var out []store.ResourceKey
	for _, k := range slices.SortedFunc(maps.Keys(r.resources), compareKeys) {
		if r.resources[k].source == source {
			out = append(out, k)
		}
	}
	return out
}

// onlyMeta returns the metadata of a set's one resource.
func onlyMeta(s *policy.Set) policy.Meta {
	switch {
	case len(s.Workloads) > 0:
		return s.Workloads[0].Meta
	case len(s.Policies) > 0:
		return s.Policies[0].Meta
	case len(s.AlertRules) > 0:
		return s.AlertRules[0].Meta
	case len(s.Webhooks) > 0:
		return s.Webhooks[0].Meta
	}
	return policy.Meta{}
}
