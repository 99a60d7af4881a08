package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// node is everything the controller holds about one node: the rule set it
// should enforce and what its agent last said. Guarded by Server.mu.
type node struct {
	rec      store.Node
	latest   *version // nil until the node has a rule set
	sess     *session // the open stream, if any
	pending  []string
	counters map[string]uint64
	dirty    bool
}

// version is one rule-set version of a node. Immutable once made.
type version struct {
	num  uint64
	hash string
	rs   *ruleset.RuleSet
	at   time.Time // committed
}

// full returns the version on the wire. It is built for each send, not
// kept: a node has one agent, and the wire form of a large rule set is
// several times its size.
func (v *version) full() *pb.RuleSet { return wire.FromRuleSet(v.rs, v.hash) }

func (s *Server) loadNodes(ctx context.Context) error {
	recs, err := s.store.Nodes(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		s.nodes[r.Name] = &node{rec: r}
	}
	return nil
}

// nodeLocked returns the node, creating it. Called with s.mu held.
func (s *Server) nodeLocked(name string) *node {
	n := s.nodes[name]
	if n == nil {
		n = &node{rec: store.Node{Name: name}, dirty: true}
		s.nodes[name] = n
	}
	return n
}

// update changes a node's record under s.mu and marks it for the next
// flush.
func (s *Server) update(name string, f func(n *node)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodeLocked(name)
	f(n)
	n.dirty = true
}

// latestOf returns a node's newest version, nil if it has none.
func (s *Server) latestOf(name string) *version {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[name]; n != nil {
		return n.latest
	}
	return nil
}

// attach makes sess the node's stream, closing the one it replaces (an
// agent that reconnected before its old stream was found dead).
func (s *Server) attach(sess *session, hello *pb.Hello) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodeLocked(sess.node)
	if old := n.sess; old != nil {
		old.close(errReplaced)
	} else {
		s.m.connected.Inc()
	}
	n.sess = sess
	now := s.now()
	n.rec.LastContact = now
	n.rec.AgentVersion, n.rec.Kernel = hello.GetAgentVersion(), hello.GetKernel()
	n.rec.Capabilities = slices.Clone(hello.GetCapabilities())
	n.rec.LastError = ""
	n.dirty = true
}

// detach forgets sess if it is still the node's stream.
func (s *Server) detach(sess *session, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[sess.node]
	if n == nil || n.sess != sess {
		return
	}
	n.sess = nil
	s.m.connected.Dec()
	if reason != nil && n.rec.Revoked.IsZero() {
		n.rec.LastError = "disconnected: " + reason.Error()
	}
	n.dirty = true
}

func (s *Server) flushLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.flush(ctx); err != nil {
				s.log.Error("agent status not saved; retrying", zap.Error(err))
			}
		}
	}
}

// flush writes the records changed since the last flush.
func (s *Server) flush(ctx context.Context) error {
	s.mu.Lock()
	var recs []store.Node
	var dirty []*node
	for _, n := range s.nodes {
		if n.dirty {
			recs = append(recs, n.rec)
			dirty = append(dirty, n)
			n.dirty = false
		}
	}
	s.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	if err := s.store.SaveNodes(ctx, recs); err != nil {
		s.mu.Lock()
		for _, n := range dirty {
			n.dirty = true
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// Agents returns every node's status, sorted by node: nodes whose agent
// joined, and nodes that have a rule set but no agent yet.
func (s *Server) Agents() []apiclient.AgentStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]apiclient.AgentStatus, 0, len(s.nodes))
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		n := s.nodes[name]
		st := apiclient.AgentStatus{
			Node:              name,
			Connected:         n.sess != nil,
			AppliedVersion:    n.rec.AppliedVersion,
			AppliedHash:       n.rec.AppliedHash,
			LastError:         n.rec.LastError,
			AgentVersion:      n.rec.AgentVersion,
			Kernel:            n.rec.Kernel,
			Capabilities:      n.rec.Capabilities,
			DefaultMode:       n.rec.DefaultMode,
			Revoked:           !n.rec.Revoked.IsZero(),
			PendingInterfaces: n.pending,
			Counters:          n.counters,
			CertExpiry:        timePtr(n.rec.CertExpiry),
			LastContact:       timePtr(n.rec.LastContact),
		}
		if n.latest != nil {
			st.LatestVersion, st.LatestHash = n.latest.num, n.latest.hash
		}
		if st.LastError == "" && n.rec.Joined.IsZero() && n.sess == nil {
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

// Revoke revokes every certificate issued to node, closes its stream and
// remembers why. The node stays listed, disconnected, until an agent joins
// for it again with a new token.
func (s *Server) Revoke(ctx context.Context, name string) (int, error) {
	s.mu.Lock()
	_, known := s.nodes[name]
	s.mu.Unlock()
	if !known {
		return 0, fmt.Errorf("node %q: %w", name, errUnknownNode)
	}
	at := s.now()
	s.certMu.Lock() // see Renew
	certs, err := s.store.RevokeNode(ctx, name, at)
	if err == nil {
		s.tls.revoke(certs)
	}
	s.certMu.Unlock()
	if err != nil {
		return 0, err
	}
	reason := fmt.Sprintf("certificate revoked at %s: the agent must join again with a new token", at.UTC().Format(time.RFC3339))
	s.update(name, func(n *node) {
		n.rec.Revoked = at
		n.rec.LastError = reason
		if n.sess != nil {
			n.sess.close(&revokedError{serials: serials(certs), reason: reason})
		}
	})
	s.log.Warn("node revoked", zap.String("node", name), zap.Int("certificates", len(certs)))
	return len(certs), nil
}

func serials(certs []store.Cert) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = c.Serial
	}
	return out
}
