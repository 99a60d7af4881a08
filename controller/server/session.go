package server

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

var errReplaced = errors.New("replaced by a newer stream from the same node")

// revokedError closes the stream of a revoked node.
type revokedError struct {
	serials []string
	reason  string
}

func (e *revokedError) Error() string { return e.reason }

// session is one agent's stream. Its run goroutine owns base, inflight
// and refused; other goroutines only wake it or close it.
type session struct {
	s      *Server
	node   string
	stream pb.Control_ConnectServer
	log    *zap.Logger
	// peerHeartbeat is the agent's heartbeat interval.
	peerHeartbeat time.Duration
	// certExpiry (Unix ns) is when the certificate the agent last
	// presented or was issued expires; the stream is closed after it.
	certExpiry atomic.Int64

	wake      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// base is the version the agent enforces as far as the controller
	// knows (nil: unknown, the next update is a full one); inflight the
	// update sent and not acked yet; refused a version the agent could
	// not apply, not sent again.
	base     *version
	inflight *version
	refused  uint64
	lastRecv time.Time

	// Flow batches: how many are between arrival and ack, their acks on
	// the way back from the writer, the agent's rate limit, and the rule
	// names of the version the flows were decided by.
	flowsInFlight atomic.Int32
	flowAcks      chan *pb.FlowAck
	flowBucket    tokenBucket
	lastRateLog   time.Time
	names         map[ruleset.RuleID]string
	namesOf       *version
}

func newSession(s *Server, node string, stream pb.Control_ConnectServer, hello *pb.Hello) *session {
	hb := time.Duration(hello.GetHeartbeatIntervalMs()) * time.Millisecond
	if hb <= 0 {
		hb = DefaultHeartbeat
	}
	return &session{
		s:             s,
		node:          node,
		stream:        stream,
		log:           s.log.With(zap.String("node", node)),
		peerHeartbeat: max(hb, 100*time.Millisecond),
		wake:          make(chan struct{}, 1),
		done:          make(chan struct{}),
		lastRecv:      s.now(),
		flowAcks:      make(chan *pb.FlowAck, maxFlowsInFlight),
		flowBucket:    newTokenBucket(s.cfg.AgentFlowRate, s.now()),
	}
}

// wakeUp tells the session that its node has a new version. It never
// blocks: a wake-up already pending covers this one too.
func (ss *session) wakeUp() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// close ends the session with err (the first reason wins).
func (ss *session) close(err error) {
	ss.closeOnce.Do(func() {
		ss.closeErr = err
		close(ss.done)
	})
}

// run serves the stream until it ends: it sends updates and heartbeats
// and handles what the agent says, all from this one goroutine.
func (ss *session) run(msgs <-chan *pb.AgentMessage, recvErr <-chan error) error {
	tick := time.NewTicker(ss.s.cfg.Heartbeat)
	defer tick.Stop()
	for {
		if err := ss.push(); err != nil {
			return err
		}
		select {
		case <-ss.s.ctx.Done():
			return status.Error(codes.Unavailable, "controller shutting down")
		case <-ss.done:
			return ss.closed()
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case m := <-msgs:
			if err := ss.handle(m); err != nil {
				return err
			}
		case a := <-ss.flowAcks:
			ss.flowsInFlight.Add(-1)
			if err := ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: a}}); err != nil {
				return err
			}
		case <-ss.wake:
		case <-tick.C:
			if err := ss.heartbeat(); err != nil {
				return err
			}
		}
	}
}

func (ss *session) closed() error {
	var rev *revokedError
	switch {
	case errors.As(ss.closeErr, &rev):
		_ = ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Revocation{Revocation: &pb.Revocation{
			Node: ss.node, Reason: rev.reason, Serials: rev.serials,
		}}})
		return status.Error(codes.PermissionDenied, rev.reason)
	case errors.Is(ss.closeErr, errReplaced):
		return status.Error(codes.Aborted, ss.closeErr.Error())
	}
	return status.Error(codes.Unavailable, ss.closeErr.Error())
}

func (ss *session) heartbeat() error {
	now := ss.s.now()
	if exp := time.Unix(0, ss.certExpiry.Load()); now.After(exp) {
		ss.s.m.refused.WithLabelValues("expired").Inc()
		ss.log.Warn("closing stream: the agent's certificate expired and was not renewed",
			zap.Time("cert-expiry", exp))
		return status.Errorf(codes.Unauthenticated, "certificate expired at %s and was not renewed", exp.UTC().Format(time.RFC3339))
	}
	if silent := now.Sub(ss.lastRecv); silent > 3*ss.peerHeartbeat+ss.s.cfg.Heartbeat {
		return status.Errorf(codes.DeadlineExceeded, "no message from the agent for %s (heartbeat every %s)",
			silent.Round(time.Millisecond), ss.peerHeartbeat)
	}
	return ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Heartbeat{Heartbeat: &pb.Heartbeat{UnixNano: now.UnixNano()}}})
}

// push sends the node's newest version unless an update is in flight, the
// agent has it, or the agent refused it. An update is a delta from the
// agent's version when the controller knows that version and the delta is
// smaller than the whole rule set.
func (ss *session) push() error {
	if ss.inflight != nil {
		return nil
	}
	latest := ss.s.latestOf(ss.node)
	if latest == nil || latest.num == ss.refused || ss.base != nil && ss.base.num == latest.num {
		return nil
	}
	msg := &pb.ControllerMessage{}
	kind := "full"
	if ss.base != nil {
		d := ruleset.Diff(ss.base.rs, latest.rs)
		if d.Len() < ruleSetItems(latest.rs) {
			d.BaseHash, d.Hash, d.Version = ss.base.hash, latest.hash, latest.num
			msg.Msg = &pb.ControllerMessage_Delta{Delta: wire.FromDelta(&d, ss.base.num)}
			kind = "delta"
		}
	}
	if msg.Msg == nil {
		msg.Msg = &pb.ControllerMessage_Full{Full: latest.full()}
	}
	if err := ss.stream.Send(msg); err != nil {
		return err
	}
	ss.inflight = latest
	ss.s.m.pushes.WithLabelValues(kind).Inc()
	ss.log.Debug("rule set sent", zap.String("kind", kind), zap.Uint64("policy-version", latest.num))
	return nil
}

func ruleSetItems(rs *ruleset.RuleSet) int {
	return len(rs.Endpoints) + len(rs.IPCache) + len(rs.Entries) + len(rs.Rules)
}

// handle processes one message from the agent.
func (ss *session) handle(m *pb.AgentMessage) error {
	ss.lastRecv = ss.s.now()
	switch msg := m.GetMsg().(type) {
	case *pb.AgentMessage_Ack:
		ss.onAck(msg.Ack)
	case *pb.AgentMessage_Heartbeat:
	case *pb.AgentMessage_Counters:
		ss.s.update(ss.node, func(n *node) { n.counters = msg.Counters.GetValues() })
	case *pb.AgentMessage_Flows:
		if err := ss.onFlows(msg.Flows); err != nil {
			return err
		}
	case *pb.AgentMessage_Hello:
		return status.Error(codes.InvalidArgument, "hello sent twice on one stream")
	default:
		// A newer agent's message this controller does not know: ignore
		// it, as protobuf lets old readers do.
		ss.log.Debug("unknown message from agent ignored")
	}
	ss.s.update(ss.node, func(n *node) { n.rec.LastContact = ss.lastRecv })
	return nil
}

// onAck records the outcome of the update in flight and decides what
// follows it.
func (ss *session) onAck(a *pb.Ack) {
	v := ss.inflight
	if v == nil || a.GetVersion() != v.num {
		ss.log.Debug("ack of a version not in flight ignored", zap.Uint64("policy-version", a.GetVersion()))
		return
	}
	ss.inflight = nil
	now := ss.s.now()
	result := "applied"
	var lastErr string
	switch a.GetCode() {
	case pb.AckCode_ACK_CODE_APPLIED:
		if a.GetHash() != v.hash {
			// The agent enforces something else than what was sent: start
			// over with a full rule set, once.
			result = "invalid"
			lastErr = fmt.Sprintf("version %d applied with hash %s, the controller's is %s", v.num, a.GetHash(), v.hash)
			if ss.base == nil {
				ss.refused = v.num
			}
			ss.base = nil
			break
		}
		ss.base, ss.refused = v, 0
		if !v.at.IsZero() {
			ss.s.m.propagation.Observe(now.Sub(v.at).Seconds())
		}
	case pb.AckCode_ACK_CODE_DELTA_BASE:
		result = "delta_base"
		ss.log.Info("agent could not apply a delta; sending the full rule set", zap.String("error", a.GetError()))
		ss.base = nil
	case pb.AckCode_ACK_CODE_STALE_VERSION:
		result = "stale_version"
		ss.base = nil
		if _, err := ss.s.bumpPast(ss.s.ctx, ss.node, a.GetAppliedVersion()); err != nil {
			ss.refused = v.num
			lastErr = fmt.Sprintf("agent enforces version %d, newer than any this controller has: %v", a.GetAppliedVersion(), err)
		}
	default:
		result = "apply_failed"
		if a.GetCode() == pb.AckCode_ACK_CODE_INVALID {
			result = "invalid"
		}
		ss.refused = v.num
		if ss.base != nil && a.GetHash() != ss.base.hash {
			ss.base = nil
		}
		lastErr = fmt.Sprintf("version %d not applied: %s; version %d stays in force", v.num, a.GetError(), a.GetAppliedVersion())
		ss.log.Warn("agent could not apply a rule set; its previous one stays in force",
			zap.Uint64("policy-version", v.num), zap.Uint64("applied-version", a.GetAppliedVersion()), zap.String("error", a.GetError()))
	}
	ss.s.m.acks.WithLabelValues(result).Inc()
	ss.s.update(ss.node, func(n *node) {
		if result == "applied" {
			n.rec.AppliedVersion, n.rec.AppliedHash, n.rec.AppliedAt = v.num, v.hash, now
			n.pending = a.GetPendingInterfaces()
		}
		n.rec.LastError = lastErr
	})
	if f := ss.s.cfg.OnAck; f != nil {
		f(Ack{Node: ss.node, Version: v.num, Applied: result == "applied", Error: lastErr})
	}
}
