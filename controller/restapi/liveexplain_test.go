package restapi

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestCompareEnd: each way an end's live state can differ from the
// controller's, or be unknown, is reported in words, and the in-sync case
// says nothing differs.
func TestCompareEnd(t *testing.T) {
	names := map[ruleset.RuleID]string{7: "shop/web-to-db", 9: "shop/other"}
	rule := func(id ruleset.RuleID) string {
		if n, ok := names[id]; ok {
			return n
		}
		return (&ruleset.RuleSet{}).RuleName(id)
	}
	pushed := &nodes.Version{Num: 7, Hash: "sha256:b"}
	ctrl := &apiclient.LiveDecision{Version: 7, Hash: "sha256:b", PeerIdentity: 300, Verdict: ruleset.VerdictAllowed, Rule: "shop/web-to-db"}
	answer := func(f func(a *pb.LookupAnswer)) *pb.LookupAnswer {
		a := &pb.LookupAnswer{AppliedVersion: 7, AppliedHash: "sha256:b", Interfaces: 1, PeerIdentity: 300,
			Verdict: uint32(ruleset.VerdictAllowed), Rule: 7, Generation: 3}
		if f != nil {
			f(a)
		}
		return a
	}
	base := func(f func(in *liveIn)) liveIn {
		in := liveIn{end: "destination", node: "node-b", workload: "db-1", dir: ruleset.Ingress, pushed: pushed,
			controller: ctrl, answer: answer(nil), agentRule: rule}
		if f != nil {
			f(&in)
		}
		return in
	}
	for _, c := range []struct {
		name    string
		in      liveIn
		status  string
		differs bool
		words   []string // each must appear in one message
	}{
		{"in sync", base(nil), apiclient.LiveInSync, false, nil},
		{"apply failed", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.AppliedVersion, a.AppliedHash = 6, "sha256:a" })
			in.status.LastError = "version 7 not applied: map eg_policy is full; version 6 stays in force"
		}), apiclient.LiveDiffers, true, []string{"node-b applies version 6, the controller pushed 7: version 7 not applied: map eg_policy is full"}},
		{"not acked yet", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.AppliedVersion = 6 })
		}), apiclient.LiveDiffers, true, []string{"applies version 6, the controller pushed 7 (not acknowledged yet)"}},
		{"same version other hash", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.AppliedHash = "sha256:x" })
		}), apiclient.LiveDiffers, true, []string{"hash sha256:x, the controller's has sha256:b"}},
		{"datapath decides otherwise", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.Verdict, a.Rule = uint32(ruleset.VerdictDenied), 0 })
		}), apiclient.LiveDiffers, true, []string{"node-b's datapath decides denied by default-deny; the controller's version 7: allowed by shop/web-to-db"}},
		{"other rule", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.Rule = 9 })
		}), apiclient.LiveDiffers, true, []string{"allowed by shop/other"}},
		{"peer identity", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.PeerIdentity = 1 })
		}), apiclient.LiveDiffers, true, []string{"peer identity 1"}},
		{"no interface", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) {
				a.Interfaces, a.Verdict, a.Rule = 0, uint32(ruleset.VerdictDenied), 0
			})
		}), apiclient.LiveDiffers, true, []string{"no interface on node-b carries db-1 yet (pending)"}},
		{"failsafe is expected", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) { a.Rule = uint32(ruleset.RuleFailsafe) })
			in.controller = &apiclient.LiveDecision{Version: 7, Hash: "sha256:b", PeerIdentity: 300, Verdict: ruleset.VerdictDenied, Rule: "default-deny"}
		}), apiclient.LiveInSync, false, []string{"lets its own control traffic through"}},
		{"the node's own address is expected", base(func(in *liveIn) {
			in.answer = answer(func(a *pb.LookupAnswer) {
				a.PeerIdentity, a.Verdict, a.Rule = uint32(ruleset.IdentityHost), uint32(ruleset.VerdictDenied), 0
			})
		}), apiclient.LiveInSync, false, []string{"node-b counts the peer as identity 2 (the node's own"}},
		{"offline", base(func(in *liveIn) {
			in.answer, in.askErr = nil, agentapi.ErrNodeOffline
			in.status.AppliedVersion, in.status.LastError = 6, "disconnected: EOF"
		}), apiclient.LiveOffline, false, []string{"node-b is offline", "version 6", "disconnected: EOF"}},
		{"no answer", base(func(in *liveIn) {
			in.answer, in.askErr = nil, fmt.Errorf("%w (2s)", agentapi.ErrLookupTimeout)
		}), apiclient.LiveUnknown, false, []string{"did not answer in time"}},
		{"agent could not look up, but its version differs", base(func(in *liveIn) {
			in.answer = &pb.LookupAnswer{AppliedVersion: 6, AppliedHash: "sha256:a", Error: "datapath lookup: closed"}
		}), apiclient.LiveDiffers, true, []string{"pushed 7", "made no lookup: datapath lookup: closed"}},
		{"agent could not look up", base(func(in *liveIn) {
			in.answer = &pb.LookupAnswer{AppliedVersion: 7, AppliedHash: "sha256:b", Error: "workload db-1 has no endpoint"}
		}), apiclient.LiveUnknown, false, []string{"made no lookup: workload db-1 has no endpoint"}},
		{"nothing pushed", base(func(in *liveIn) {
			in.pushed, in.controller = nil, nil
		}), apiclient.LiveInSync, false, []string{"pushed no rule set to node-b"}},
		{"pushed version lacks the workload", base(func(in *liveIn) {
			in.controller, in.pushedErr = nil, errors.New("workload db-1 has no endpoint in it")
		}), apiclient.LiveInSync, false, []string{"version 7 pushed to node-b: workload db-1 has no endpoint in it"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := compareEnd(c.in)
			all := strings.Join(got.Messages, " | ")
			if got.Status != c.status || got.Differs != c.differs {
				t.Errorf("status %s differs %v, want %s %v; messages: %s", got.Status, got.Differs, c.status, c.differs, all)
			}
			if len(c.words) == 0 && len(got.Messages) != 0 {
				t.Errorf("messages %q, want none", got.Messages)
			}
			for _, w := range c.words {
				if !strings.Contains(all, w) {
					t.Errorf("messages %q do not say %q", all, w)
				}
			}
			if got.Node != "node-b" || got.Workload != "db-1" || got.End != "destination" {
				t.Errorf("end %+v", got)
			}
			if c.in.answer == nil && got.Agent != nil || c.in.answer != nil && got.Agent == nil {
				t.Errorf("agent part %+v for answer %v", got.Agent, c.in.answer)
			}
		})
	}
}
