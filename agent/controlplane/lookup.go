package controlplane

import (
	"fmt"
	"sync"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// LookupQuery is a controller's lookup request (egctl explain --live)
// once the workload is found in the rule set in force: the datapath's
// question.
type LookupQuery = wire.Lookup

// LookupResult is what the datapath's maps decide (datapath.LookupResult,
// as far as the controller needs it).
type LookupResult struct {
	Generation   uint32
	Interfaces   int
	Mode         ruleset.Mode
	PeerIdentity ruleset.Identity
	Verdict      ruleset.Verdict
	Rule         ruleset.RuleID
}

// LookupFunc decides a flow at endpoint ep from the kernel's maps,
// read-only.
type LookupFunc func(ep ruleset.EndpointID, q LookupQuery) (LookupResult, error)

// Lookups an agent answers per second, beyond which it answers "busy".
// The controller bounds them per node already (agentapi); this keeps a
// controller bug or a compromised controller from spending the node's CPU
// on reading maps.
// lookupQueue lookups wait for the one goroutine that does them; beyond,
// the agent answers "busy" at once.
const (
	lookupRate  = 20
	lookupBurst = 20
	lookupQueue = 8
)

// busyLookup answers a request the queue had no room for.
func busyLookup(m *pb.LookupRequest) *pb.AgentMessage {
	return &pb.AgentMessage{Msg: &pb.AgentMessage_LookupAnswer{LookupAnswer: &pb.LookupAnswer{
		Id: m.GetId(), Error: fmt.Sprintf("busy: %d lookups are waiting already", lookupQueue)}}}
}

// lookupLimiter is a token bucket.
type lookupLimiter struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func (l *lookupLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = lookupBurst
	} else {
		l.tokens = min(lookupBurst, l.tokens+now.Sub(l.last).Seconds()*lookupRate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// lookup answers a lookup request: the rule set in force (version, hash)
// and, from the datapath's maps, what a new flow of the request would get
// at the workload's endpoint. Whatever stops the lookup is said in the
// answer's error; the stream goes on.
func (c *Client) lookup(m *pb.LookupRequest) *pb.AgentMessage {
	a := &pb.LookupAnswer{Id: m.GetId()}
	out := &pb.AgentMessage{Msg: &pb.AgentMessage_LookupAnswer{LookupAnswer: a}}
	cur, hash := c.current()
	if cur != nil {
		a.AppliedVersion, a.AppliedHash = cur.Version, hash
	}
	q, err := wire.ToLookup(m)
	switch {
	case err != nil:
		a.Error = "invalid request: " + err.Error()
		return out
	case c.cfg.Lookup == nil:
		a.Error = "this agent cannot look up its datapath"
		return out
	case !c.lookups.allow(c.now()):
		a.Error = fmt.Sprintf("too many lookups (more than %d a second): retry later", lookupRate)
		return out
	case cur == nil:
		a.Error = "no rule set in force"
		return out
	}
	var ep *ruleset.Endpoint
	for i := range cur.Endpoints {
		if cur.Endpoints[i].Workload == q.Workload {
			ep = &cur.Endpoints[i]
			break
		}
	}
	if ep == nil {
		a.Error = fmt.Sprintf("workload %s has no endpoint in version %d in force", q.Workload, cur.Version)
		return out
	}
	r, err := c.cfg.Lookup(ep.ID, q)
	if err != nil {
		a.Error = "datapath lookup: " + err.Error()
		return out
	}
	a.Endpoint, a.Interfaces = uint32(ep.ID), uint32(min(r.Interfaces, 1<<16))
	a.PeerIdentity, a.Mode = uint32(r.PeerIdentity), uint32(r.Mode)
	a.Verdict, a.Rule, a.Generation = uint32(r.Verdict), uint32(r.Rule), r.Generation
	return out
}
