package restapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Live explain (GET /api/v1/explain?live=1, egctl explain --live): for
// each managed end of a flow, the controller's decision from the rule set
// it last pushed to the end's node, against what the node's agent applies
// and what its datapath's maps decide (agentapi.Service.Lookup). A node
// that cannot be asked is said so; the answer never fails for it.

// liveIn is what compareEnd compares for one end.
type liveIn struct {
	end      string // source or destination
	node     string
	workload string
	dir      ruleset.Direction
	// pushed is the node's newest version (nil: none) and controller its
	// decision (nil when pushed is nil or does not have the workload;
	// pushedErr says why).
	pushed     *nodes.Version
	controller *apiclient.LiveDecision
	pushedErr  error
	status     apiclient.AgentStatus
	// answer is the agent's (nil when askErr says why there is none);
	// agentRule names its rule ids.
	answer    *pb.LookupAnswer
	askErr    error
	agentRule func(ruleset.RuleID) string
}

// compareEnd says whether an end is enforced as the controller decides,
// in plain words where not.
func compareEnd(in liveIn) apiclient.LiveEnd {
	out := apiclient.LiveEnd{End: in.end, Node: in.node, Workload: in.workload, Direction: in.dir,
		Controller: in.controller, Messages: []string{}}
	say := func(format string, args ...any) { out.Messages = append(out.Messages, fmt.Sprintf(format, args...)) }
	differs := func(format string, args ...any) {
		out.Differs = true
		say(format, args...)
	}
	if in.pushed == nil {
		say("the controller has pushed no rule set to %s", in.node)
	} else if in.pushedErr != nil {
		say("version %d pushed to %s: %v", in.pushed.Num, in.node, in.pushedErr)
	}
	lastError := ""
	if in.status.LastError != "" {
		lastError = " (its last error: " + in.status.LastError + ")"
	}
	if in.answer == nil {
		switch {
		case errors.Is(in.askErr, agentapi.ErrNodeOffline), in.askErr == nil:
			out.Status = apiclient.LiveOffline
			say("%s is offline (no agent connected): its datapath was not asked; it last reported version %d applied%s",
				in.node, in.status.AppliedVersion, lastError)
		default:
			out.Status = apiclient.LiveUnknown
			say("%s was not asked or did not answer: %v", in.node, in.askErr)
		}
		return out
	}
	a := in.answer
	agent := &apiclient.LiveAgent{AppliedVersion: a.GetAppliedVersion(), AppliedHash: a.GetAppliedHash(),
		LastError: in.status.LastError, Error: wire.Cut(a.GetError(), wire.MaxAckError)}
	out.Agent = agent
	if in.pushed != nil {
		switch {
		case a.GetAppliedVersion() != in.pushed.Num:
			why := " (not acknowledged yet)"
			if in.status.LastError != "" {
				why = ": " + in.status.LastError
			}
			differs("%s applies version %d, the controller pushed %d%s", in.node, a.GetAppliedVersion(), in.pushed.Num, why)
		case a.GetAppliedHash() != in.pushed.Hash:
			differs("%s applies version %d with hash %s, the controller's has %s", in.node, a.GetAppliedVersion(), a.GetAppliedHash(), in.pushed.Hash)
		}
	}
	if agent.Error != "" {
		out.Status = apiclient.LiveUnknown
		say("%s's agent made no lookup: %s", in.node, agent.Error)
		if out.Differs {
			out.Status = apiclient.LiveDiffers
		}
		return out
	}
	agent.Generation, agent.Interfaces = a.GetGeneration(), int(a.GetInterfaces())
	agent.Mode, agent.PeerIdentity = ruleset.Mode(a.GetMode()), a.GetPeerIdentity()
	agent.Verdict, agent.Rule = ruleset.Verdict(a.GetVerdict()), in.agentRule(ruleset.RuleID(a.GetRule()))
	if agent.Interfaces == 0 {
		differs("no interface on %s carries %s yet (pending): its packets meet the node's default, %s", in.node, in.workload, agent.Verdict)
	}
	if c := in.controller; c != nil {
		// What only the agent knows, and adds to what it enforces: the
		// node's own addresses (host) and its controller's (failsafe).
		agentOnly := ruleset.Identity(agent.PeerIdentity)
		nodeOwn := agent.PeerIdentity != c.PeerIdentity && (agentOnly == ruleset.IdentityHost ||
			agentOnly >= ruleset.IdentityFailsafeFirst && agentOnly <= ruleset.IdentityFailsafeLast)
		switch {
		case nodeOwn:
			say("%s counts the peer as identity %d (the node's own or its controller's address, which only its agent knows) and its datapath decides %s by %s; the controller's version %d gives identity %d: %s by %s",
				in.node, agent.PeerIdentity, agent.Verdict, agent.Rule, c.Version, c.PeerIdentity, c.Verdict, c.Rule)
		case agent.Rule == ruleset.FailsafeName && c.Rule != ruleset.FailsafeName:
			// The agent adds its failsafe to what it enforces: expected.
			say("%s's agent lets its own control traffic through (%s) whatever the policy decides (%s by %s)",
				in.node, ruleset.FailsafeName, c.Verdict, c.Rule)
		case agent.Verdict != c.Verdict || agent.Rule != c.Rule:
			differs("%s's datapath decides %s by %s; the controller's version %d: %s by %s",
				in.node, agent.Verdict, agent.Rule, c.Version, c.Verdict, c.Rule)
		}
		if agent.PeerIdentity != c.PeerIdentity && !nodeOwn {
			differs("%s's datapath gives the peer identity %d; the controller's version %d gives %d",
				in.node, agent.PeerIdentity, c.Version, c.PeerIdentity)
		}
	}
	out.Status = apiclient.LiveInSync
	if out.Differs {
		out.Status = apiclient.LiveDiffers
	}
	return out
}

// decidePushed decides an end from a pushed version, as the node's
// datapath would if it applied it (ruleset.Tables.Decide).
func decidePushed(v *nodes.Version, workload string, dir ruleset.Direction, peer netip.Addr, q compile.Query) (*apiclient.LiveDecision, error) {
	rs := v.RuleSet
	var ep *ruleset.Endpoint
	for i := range rs.Endpoints {
		if rs.Endpoints[i].Workload == workload {
			ep = &rs.Endpoints[i]
			break
		}
	}
	if ep == nil {
		return nil, fmt.Errorf("workload %s has no endpoint in it", workload)
	}
	tables, err := ruleset.Encode(rs)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	pid := rs.Resolve(peer)
	d := tables.Decide(*ep, dir, pid, q.Protocol, q.Port)
	return &apiclient.LiveDecision{Version: v.Num, Hash: v.Hash, PeerIdentity: uint32(pid), Verdict: d.Verdict, Rule: rs.RuleName(d.Rule)}, nil
}

// explainLive asks both ends' nodes at once; each answers within
// agentapi.LookupTimeout or is reported as not answering.
func (s *API) explainLive(ctx context.Context, x *compile.Explanation, q compile.Query) *apiclient.LiveExplanation {
	type end struct {
		label string
		d     *compile.EndDecision
		peer  netip.Addr
	}
	var ends []end
	if x.Source != nil {
		ends = append(ends, end{"source", x.Source, x.To.Addr})
	}
	if x.Destination != nil {
		ends = append(ends, end{"destination", x.Destination, x.From.Addr})
	}
	out := &apiclient.LiveExplanation{Ends: make([]apiclient.LiveEnd, len(ends))}
	var wg sync.WaitGroup
	for i, e := range ends {
		wg.Go(func() { out.Ends[i] = s.liveEnd(ctx, e.label, e.d, e.peer, q) })
	}
	wg.Wait()
	for _, e := range out.Ends {
		out.Differs = out.Differs || e.Differs
	}
	return out
}

func (s *API) liveEnd(ctx context.Context, label string, d *compile.EndDecision, peer netip.Addr, q compile.Query) apiclient.LiveEnd {
	in := liveIn{end: label, node: d.Node, workload: d.Workload, dir: d.Direction, pushed: s.nodes.Latest(d.Node)}
	in.status, _ = s.nodes.Status(d.Node)
	if in.pushed != nil {
		in.controller, in.pushedErr = decidePushed(in.pushed, d.Workload, d.Direction, peer, q)
	}
	if s.agents == nil {
		in.askErr = agentapi.ErrNodeOffline
		return compareEnd(in)
	}
	in.answer, in.askErr = s.agents.Lookup(ctx, d.Node, wire.Lookup{Workload: d.Workload, Direction: d.Direction,
		Peer: peer, Protocol: q.Protocol, Port: q.Port})
	if a := in.answer; a != nil {
		// The rule ids are the applied version's: named from it when
		// the controller still has it.
		v := s.policy.StoredVersion(ctx, d.Node, a.GetAppliedVersion(), a.GetAppliedHash())
		in.agentRule = func(id ruleset.RuleID) string {
			if v != nil {
				return v.RuleSet.RuleName(id)
			}
			return (&ruleset.RuleSet{}).RuleName(id)
		}
	}
	return compareEnd(in)
}
