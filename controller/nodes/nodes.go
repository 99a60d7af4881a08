// Package nodes is the controller's node table: for every node, its
// stored record (what its agent last reported), the newest rule-set
// version compiled for it, and the agent's open stream if there is one.
// Policy changes publish versions into it, agent streams attach to it and
// read from it, and the REST API lists it. Changed records are written to
// the store by a flush loop, so a busy stream never waits on the disk.
//
// It must not import the packages that use it (agentapi, policyrepo,
// restapi): streams reach it through the Stream interface.
//
// Lock order: callers that hold policyrepo's apply lock may take the
// table's lock (every method here); the table never calls out while
// holding it, except Stream.WakeUp and Stream.Close, which must not block
// or call back into the table.
package nodes

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Version is one rule-set version of a node. Immutable once published.
type Version struct {
	Num     uint64
	Hash    string
	RuleSet *ruleset.RuleSet
	At      time.Time // committed
	// Change, when set, is the change to this version from the node's
	// version ChangeFrom (its number and hash), as the apply that made
	// this one found it: the node's stream sends it to an agent that
	// enforces that version instead of diffing the two again. Set only
	// when it is small (policyrepo), so it costs little to keep.
	Change         *ruleset.Delta
	ChangeFrom     uint64
	ChangeFromHash string
	// HashPart, when set, is the part of Hash that the node's next
	// version resumes from when it keeps this one's node, endpoints and
	// ipcache (ruleset.HashFrom). It shares RuleSet's slices.
	HashPart *ruleset.HashPart
	// Shared, when set, is the key its ipcache is stored under
	// (store.RuleSetRecord.Shared): the node's next version with the same
	// ipcache refers to it without encoding it again.
	Shared string
}

// Stream is what the table needs of an agent's open control stream.
// Neither method may block or call back into the table.
type Stream interface {
	// WakeUp tells the stream its node has a new version.
	WakeUp()
	// Close ends the stream with err (the first reason wins).
	Close(err error)
}

// ErrReplaced closes a stream that a newer stream of the same node
// replaced (an agent that reconnected before its old stream was found
// dead).
var ErrReplaced = errors.New("replaced by a newer stream from the same node")

// ErrUnknownNode is an operation on a node the controller has never heard
// of.
var ErrUnknownNode = errors.New("no such node")

// Node is everything the controller holds about one node. It is only
// read or changed inside the table's methods and the functions they run.
type Node struct {
	Rec      store.Node
	Latest   *Version // nil until the node has a rule set
	Stream   Stream   // the open stream, if any
	Pending  []string
	Counters map[string]uint64
	// LastResync is when the node's versions were last numbered past its
	// agent's (agentapi limits how often); in memory only.
	LastResync time.Time
	dirty      bool
}

// Table is the node table. It is safe for concurrent use.
type Table struct {
	st  store.Store
	now func() time.Time
	log *zap.Logger

	// mu guards nodes and every Node. Lock order: last. It is taken with
	// policyrepo's Repo.applyMu or agentapi's Service.certMu held, never
	// the other way round; while it is held only Stream.WakeUp and
	// Stream.Close are called, which take no lock of these packages.
	mu    sync.Mutex
	nodes map[string]*Node
}

// New returns an empty table over st; Load fills it.
func New(st store.Store, now func() time.Time, log *zap.Logger) *Table {
	return &Table{st: st, now: now, log: log, nodes: make(map[string]*Node)}
}

// Load reads every node's record from the store.
func (t *Table) Load(ctx context.Context) error {
	recs, err := t.st.Nodes(ctx)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range recs {
		t.nodes[r.Name] = &Node{Rec: r}
	}
	return nil
}

// nodeLocked returns the node, creating it. Called with t.mu held.
func (t *Table) nodeLocked(name string) *Node {
	n := t.nodes[name]
	if n == nil {
		n = &Node{Rec: store.Node{Name: name}, dirty: true}
		t.nodes[name] = n
	}
	return n
}

// Update runs f on the node (created if new) with the table locked, and
// marks its record for the next flush. f must not block.
func (t *Table) Update(name string, f func(n *Node)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodeLocked(name)
	f(n)
	n.dirty = true
}

// Known reports whether the table has the node.
func (t *Table) Known(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes[name] != nil
}

// RevokedAt returns when the node was revoked, zero if it is not (never
// revoked, or joined again since).
func (t *Table) RevokedAt(name string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[name]; n != nil {
		return n.Rec.Revoked
	}
	return time.Time{}
}

// Latest returns a node's newest version, nil if it has none.
func (t *Table) Latest(name string) *Version {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[name]; n != nil {
		return n.Latest
	}
	return nil
}

// Stream returns the node's open stream, nil if it has none (offline, or
// never heard of).
func (t *Table) Stream(name string) Stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[name]; n != nil {
		return n.Stream
	}
	return nil
}

// Status returns one node's status as Agents lists it, and whether the
// table has the node.
func (t *Table) Status(name string) (apiclient.AgentStatus, bool) {
	for _, a := range t.Agents() {
		if a.Node == name {
			return a, true
		}
	}
	return apiclient.AgentStatus{}, false
}

// SetLatest sets the versions as their nodes' newest, and wakes their
// streams. Versions must be committed to the store first.
func (t *Table) SetLatest(versions []*Version) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, v := range versions {
		n := t.nodeLocked(v.RuleSet.Node)
		n.Latest = v
		if n.Stream != nil {
			n.Stream.WakeUp()
		}
	}
}

// CompileTargets returns every node the table knows, and those whose
// agents run with default mode monitor.
func (t *Table) CompileTargets() (names []string, monitor map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	monitor = make(map[string]bool)
	for name, n := range t.nodes {
		names = append(names, name)
		if n.Rec.DefaultMode == ruleset.ModeMonitor.String() {
			monitor[name] = true
		}
	}
	return names, monitor
}

// Attach makes s the node's stream and runs f on the node, closing the
// stream it replaces with ErrReplaced. replaced says whether there was
// one.
func (t *Table) Attach(name string, s Stream, f func(n *Node)) (replaced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodeLocked(name)
	if old := n.Stream; old != nil {
		old.Close(ErrReplaced)
		replaced = true
	}
	n.Stream = s
	f(n)
	n.dirty = true
	return replaced
}

// Detach forgets s if it is still the node's stream, and says so. A
// reason other than nil is recorded as the node's last error, unless the
// node is revoked (its error says that).
func (t *Table) Detach(name string, s Stream, reason error) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[name]
	if n == nil || n.Stream != s {
		return false
	}
	n.Stream = nil
	if reason != nil && n.Rec.Revoked.IsZero() {
		n.Rec.LastError = "disconnected: " + reason.Error()
	}
	n.dirty = true
	return true
}

// Run writes changed records to the store every interval until ctx is
// done.
func (t *Table) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := t.Flush(ctx); err != nil {
				t.log.Error("agent status not saved; retrying", zap.Error(err))
			}
		}
	}
}

// Flush writes the records changed since the last flush.
func (t *Table) Flush(ctx context.Context) error {
	t.mu.Lock()
	var recs []store.Node
	var dirty []*Node
	for _, n := range t.nodes {
		if n.dirty {
			recs = append(recs, n.Rec)
			dirty = append(dirty, n)
			n.dirty = false
		}
	}
	t.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	if err := t.st.SaveNodes(ctx, recs); err != nil {
		t.mu.Lock()
		for _, n := range dirty {
			n.dirty = true
		}
		t.mu.Unlock()
		return err
	}
	return nil
}

// Agents returns every node's status, sorted by node: nodes whose agent
// joined, and nodes that have a rule set but no agent yet.
func (t *Table) Agents() []apiclient.AgentStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]apiclient.AgentStatus, 0, len(t.nodes))
	for _, name := range slices.Sorted(maps.Keys(t.nodes)) {
		n := t.nodes[name]
		st := apiclient.AgentStatus{
			Node:              name,
			Connected:         n.Stream != nil,
			AppliedVersion:    n.Rec.AppliedVersion,
			AppliedHash:       n.Rec.AppliedHash,
			LastError:         n.Rec.LastError,
			AgentVersion:      n.Rec.AgentVersion,
			Kernel:            n.Rec.Kernel,
			Capabilities:      n.Rec.Capabilities,
			DefaultMode:       n.Rec.DefaultMode,
			Revoked:           !n.Rec.Revoked.IsZero(),
			PendingInterfaces: n.Pending,
			Counters:          n.Counters,
			Mode:              n.Rec.DefaultMode,
			DeniedPackets:     n.Counters["denied_ingress"] + n.Counters["denied_egress"],
			LostEvents:        n.Counters["events_lost"],
			CertExpiry:        timePtr(n.Rec.CertExpiry),
			LastContact:       timePtr(n.Rec.LastContact),
		}
		if n.Latest != nil {
			st.LatestVersion, st.LatestHash = n.Latest.Num, n.Latest.Hash
		}
		if st.LastError == "" && n.Rec.Joined.IsZero() && n.Stream == nil {
			st.LastError = "no agent has joined for this node"
		}
		out = append(out, st)
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
