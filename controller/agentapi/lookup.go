package agentapi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Lookups (egctl explain --live, GET /api/v1/explain?live=1) ask an agent
// over its stream what its datapath's maps decide for a flow. Anyone with
// an admin credential can trigger them, so they are bounded per node: at
// most maxLookupsOutstanding waiting for an answer, lookupRate a second
// (burst lookupBurst) beyond that, each answered within LookupTimeout or
// given up. The agent bounds them again on its side.
const (
	LookupTimeout         = 2 * time.Second
	maxLookupsOutstanding = 4
	lookupRate            = 5
	lookupBurst           = 10
)

// Why a lookup got no answer.
var (
	ErrNodeOffline   = errors.New("no agent connected for the node")
	ErrLookupLimited = errors.New("too many lookups for the node")
	ErrLookupTimeout = errors.New("the agent did not answer in time")
)

// lookupCall is one lookup waiting for its answer.
type lookupCall struct {
	req    *pb.LookupRequest
	answer chan *pb.LookupAnswer // buffered: one answer
}

// lookups is a session's outstanding lookups, by request id. The caller
// registers and removes its call; the session goroutine sends the request
// and delivers the answer.
type lookups struct {
	mu      sync.Mutex
	pending map[uint64]*lookupCall
	send    chan *lookupCall // to the session goroutine; holds every outstanding call
}

func newLookups() *lookups {
	return &lookups{pending: make(map[uint64]*lookupCall), send: make(chan *lookupCall, maxLookupsOutstanding)}
}

// add registers c unless maxLookupsOutstanding calls are outstanding.
func (l *lookups) add(c *lookupCall) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) >= maxLookupsOutstanding {
		return false
	}
	l.pending[c.req.GetId()] = c
	return true
}

// waiting reports whether a call still waits for its answer.
func (l *lookups) waiting(id uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pending[id] != nil
}

func (l *lookups) remove(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pending, id)
}

// deliver hands an answer to its call; an answer nobody waits for (given
// up, or never asked) is dropped.
func (l *lookups) deliver(a *pb.LookupAnswer) bool {
	l.mu.Lock()
	c := l.pending[a.GetId()]
	delete(l.pending, a.GetId())
	l.mu.Unlock()
	if c == nil {
		return false
	}
	c.answer <- a
	return true
}

// Lookup asks node's agent what its datapath decides for q (q.ID is
// set here) and waits for the answer, at most LookupTimeout. An answer is
// returned as the agent gave it, checked (wire.CheckLookupAnswer); one
// whose Error is set made no lookup.
func (s *Service) Lookup(ctx context.Context, node string, q wire.Lookup) (*pb.LookupAnswer, error) {
	st := s.nodes.Stream(node)
	ss, ok := st.(*session)
	if !ok || ss == nil {
		return nil, ErrNodeOffline
	}
	if !s.lookupLimit.Allow(node, s.now()) {
		s.m.lookups.WithLabelValues("limited").Inc()
		return nil, fmt.Errorf("%w (%d a second, %d at once): retry later", ErrLookupLimited, lookupRate, lookupBurst)
	}
	q.ID = s.lookupSeq.Add(1)
	c := &lookupCall{req: wire.FromLookup(q), answer: make(chan *pb.LookupAnswer, 1)}
	l := ss.lookupQueue()
	if !l.add(c) {
		s.m.lookups.WithLabelValues("limited").Inc()
		return nil, fmt.Errorf("%w: %d are waiting for an answer already", ErrLookupLimited, maxLookupsOutstanding)
	}
	defer l.remove(q.ID)
	// Calls given up on may still sit in the channel while the session
	// is busy sending: never wait for room.
	select {
	case l.send <- c:
	default:
		s.m.lookups.WithLabelValues("limited").Inc()
		return nil, fmt.Errorf("%w: the agent's stream is busy", ErrLookupLimited)
	}
	ss.WakeUp()
	timer := time.NewTimer(LookupTimeout)
	defer timer.Stop()
	select {
	case a := <-c.answer:
		s.m.lookups.WithLabelValues("answered").Inc()
		return a, nil
	case <-timer.C:
		s.m.lookups.WithLabelValues("timeout").Inc()
		return nil, fmt.Errorf("%w (%s)", ErrLookupTimeout, LookupTimeout)
	case <-ss.done:
		return nil, ErrNodeOffline
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// lookupQueue is the session's lookups, made at the first (most streams
// never have one).
func (ss *session) lookupQueue() *lookups {
	if l := ss.lookups.Load(); l != nil {
		return l
	}
	ss.lookups.CompareAndSwap(nil, newLookups())
	return ss.lookups.Load()
}

// sendLookups sends the lookups queued for the agent. Called from the
// session goroutine.
func (ss *session) sendLookups() error {
	l := ss.lookups.Load()
	if l == nil {
		return nil
	}
	for {
		select {
		case c := <-l.send:
			if !l.waiting(c.req.GetId()) {
				continue // given up on already: the agent is spared it
			}
			if err := ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Lookup{Lookup: c.req}}); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// onLookupAnswer checks an answer and hands it to its caller.
func (ss *session) onLookupAnswer(a *pb.LookupAnswer) error {
	if err := invalid(wire.CheckLookupAnswer(a)); err != nil {
		ss.s.m.refused.WithLabelValues("invalid").Inc()
		return err
	}
	if l := ss.lookups.Load(); l == nil || !l.deliver(a) {
		ss.logger().Debug("lookup answer nobody waits for ignored", zap.Uint64("lookup-id", a.GetId()))
	}
	return nil
}

var _ nodes.Stream = (*session)(nil)
