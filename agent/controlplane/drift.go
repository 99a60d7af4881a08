package controlplane

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// driftSendGap is the least time between two sends of drift reports: a
// process that flaps the datapath costs the stream one message per kind
// per gap, each with the count since the previous one.
const driftSendGap = time.Second

// maxDriftKinds bounds the kinds kept while the controller is away (the
// datapath has six).
const maxDriftKinds = 32

// DriftReports collects the datapath drift the agent finds, for the
// controller: findings of one kind are folded into one report (the latest
// finding's fields, and the count of all) until it is sent. Reports wait
// while the stream is down and go out on the next one. Safe for
// concurrent use.
type DriftReports struct {
	mu      sync.Mutex
	pending map[string]*pb.DatapathDrift // by kind
	notify  chan struct{}
}

// NewDriftReports returns an empty collection.
func NewDriftReports() *DriftReports {
	return &DriftReports{pending: make(map[string]*pb.DatapathDrift), notify: make(chan struct{}, 1)}
}

// Add records one finding. It never blocks.
func (r *DriftReports) Add(d *pb.DatapathDrift) {
	r.mu.Lock()
	r.merge(d, true)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// merge folds d into the pending report of its kind: the fields of the
// newer of the two, the counts of both. Called with r.mu held.
func (r *DriftReports) merge(d *pb.DatapathDrift, newer bool) {
	n := max(d.GetCount(), 1)
	p, ok := r.pending[d.GetKind()]
	if !ok && len(r.pending) >= maxDriftKinds {
		return
	}
	if ok && !newer {
		p.Count += n
		return
	}
	if ok {
		n += p.GetCount()
	}
	r.pending[d.GetKind()] = &pb.DatapathDrift{Kind: d.GetKind(), Object: d.GetObject(), Detail: d.GetDetail(),
		Repaired: d.GetRepaired(), RepairError: d.GetRepairError(), Count: n, UnixNano: d.GetUnixNano()}
}

// take returns the pending reports, by kind, and forgets them.
func (r *DriftReports) take() []*pb.DatapathDrift {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*pb.DatapathDrift, 0, len(r.pending))
	for _, k := range slices.Sorted(maps.Keys(r.pending)) {
		out = append(out, r.pending[k])
	}
	clear(r.pending)
	return out
}

// putBack returns reports a stream could not send.
func (r *DriftReports) putBack(ds []*pb.DatapathDrift) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range ds {
		r.merge(d, false) // older than what came meanwhile
	}
}

// sendDrift sends drift reports on s as they come, at most once per
// driftSendGap, until ctx is done or a send fails (the reports not sent
// wait for the next stream).
func (s *agentStream) sendDrift(ctx context.Context, cancel context.CancelCauseFunc, r *DriftReports) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.notify:
		default:
			// Reports left from an earlier stream go out at once.
			if r.empty() {
				select {
				case <-ctx.Done():
					return
				case <-r.notify:
				}
			}
		}
		ds := r.take()
		for i, d := range ds {
			if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Drift{Drift: d}}); err != nil {
				r.putBack(ds[i:])
				cancel(err)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(driftSendGap):
		}
	}
}

func (r *DriftReports) empty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) == 0
}
