package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Drift reports per node: an agent sends at most one per kind a second
// (six kinds); beyond driftRate a second, after a burst, they are dropped,
// so a lying agent cannot flood the log and the alert queue.
const (
	driftRate  = 8
	driftBurst = 64
)

// ResyncInterval bounds stale-version re-syncs per node: each numbers the
// node's versions past its agent's with a new committed version
// (policyrepo.BumpPast). An honest agent needs one after the controller's
// data was restored from an older backup; one that keeps asking is lying,
// and beyond one per interval its stream is closed.
const ResyncInterval = time.Minute

// allowResync reports whether node may have its versions numbered past
// its agent's now, and if so records that it had.
func (s *Service) allowResync(node string, now time.Time) bool {
	ok := false
	s.nodes.Update(node, func(n *nodes.Node) {
		if n.LastResync.IsZero() || now.Sub(n.LastResync) >= ResyncInterval {
			n.LastResync, ok = now, true
		}
	})
	return ok
}

// invalid refuses a message that breaks the bounds of what agents may
// report (internal/wire's checks): the stream is closed with
// InvalidArgument; err names the field.
func invalid(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

// revokedError closes the stream of a revoked node.
type revokedError struct {
	serials []string
	reason  string
}

func (e *revokedError) Error() string { return e.reason }

// session is one agent's stream. It has no goroutine of its own: the
// stream's handler goroutine receives and handles what the agent says,
// and updates, heartbeats, flow acks and lookups that are due otherwise
// are sent by a short-lived goroutine started when they fall due (kick),
// so an idle stream holds one goroutine, not two. mu makes them take
// turns: whoever holds it owns base, inflight, refused, lastRecv and the
// rule names, and is the one sending.
type session struct {
	s    *Service
	node string
	// serial is that of the certificate the stream's connection was
	// opened with (pki.Serial): every heartbeat checks it against the
	// revocations.
	serial string
	stream pb.Control_ConnectServer
	// peerHeartbeat is the agent's heartbeat interval.
	peerHeartbeat time.Duration
	// certExpiry (Unix ns) is when the certificate the agent last
	// presented or was issued expires; the stream is closed after it.
	certExpiry atomic.Int64

	// end cancels the stream's context (made by the tap for it): the
	// handler's Recv returns, and a send waiting for the agent's flow
	// control gives up. nil in tests that drive a session by hand.
	end       context.CancelCauseFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	mu sync.Mutex
	// kicked says something may be due to send; sending that a sender
	// goroutine runs; heartbeatDue that the heartbeat timer fired.
	kicked, sending, heartbeatDue atomic.Bool
	heartbeats                    *time.Timer
	// revocationSent: the agent was told of its revocation (once);
	// ended: the stream's status is decided (by the sender, or by the
	// handler when its Recv failed first).
	revocationSent, ended bool

	// base is the version the agent enforces as far as the controller
	// knows (nil: unknown, the next update is a full one); inflight the
	// update sent and not acked yet; refused a version the agent could
	// not apply, not sent again.
	base     *nodes.Version
	inflight *nodes.Version
	refused  uint64
	lastRecv time.Time

	// Flow batches: the agent's admission to the ingester, the acks of its
	// queued batches on the way back from the writer, and the rule names
	// of the version the flows were decided by.
	flows    *flowingest.Agent
	flowAcks chan *pb.FlowAck
	names    map[ruleset.RuleID]string
	namesOf  *nodes.Version

	// lookups are the datapath lookups waiting for the agent (lookup.go;
	// nil until the first).
	lookups atomic.Pointer[lookups]
}

func newSession(s *Service, id identity, stream pb.Control_ConnectServer, hello *pb.Hello, end context.CancelCauseFunc) *session {
	node := id.node
	hb := time.Duration(hello.GetHeartbeatIntervalMs()) * time.Millisecond
	if hb <= 0 {
		hb = DefaultHeartbeat
	}
	return &session{
		s:             s,
		node:          node,
		serial:        pki.Serial(id.cert),
		stream:        stream,
		flows:         s.flows.NewAgent(node, s.log),
		peerHeartbeat: max(hb, 100*time.Millisecond),
		end:           end,
		done:          make(chan struct{}),
		lastRecv:      s.now(),
		flowAcks:      make(chan *pb.FlowAck, flowingest.MaxInFlight),
	}
}

// logger is the service's log, naming the node: made when a line is
// logged (rarely), not kept by every stream.
func (ss *session) logger() *zap.Logger { return ss.s.log.With(zap.String("node", ss.node)) }

// WakeUp tells the session that its node has a new version. It never
// blocks.
func (ss *session) WakeUp() { ss.kick() }

// Close ends the session with err (the first reason wins). It never
// blocks: the sender (kick) ends the stream with the status err says
// (endStream), the agent of a revoked node told so first.
func (ss *session) Close(err error) {
	ss.closeOnce.Do(func() {
		ss.closeErr = err
		close(ss.done)
		if ss.end != nil { // nil in tests that drive a session by hand
			ss.kick()
		}
	})
}

// statusWriter is what gRPC's server transport stream (in the stream's
// context: grpc.ServerTransportStreamFromContext) has to end a stream
// with a status before the handler returns.
type statusWriter interface {
	WriteStatus(*status.Status) error
}

// endStream ends a stream whose handler waits in Recv, with err's status.
// The status is written first: cancelling the stream's context alone would
// have the agent see the Recv's own "context canceled" instead of why.
func endStream(ctx context.Context, end context.CancelCauseFunc, err error) {
	if w, ok := grpc.ServerTransportStreamFromContext(ctx).(statusWriter); ok {
		_ = w.WriteStatus(status.Convert(err))
	}
	end(err)
}

func (ss *session) isClosed() bool {
	select {
	case <-ss.done:
		return true
	default:
		return false
	}
}

// kick has what is due sent: by the sender goroutine, started unless it
// runs already (it then makes one more pass). It never blocks.
func (ss *session) kick() {
	ss.kicked.Store(true)
	if ss.sending.CompareAndSwap(false, true) {
		go ss.sender()
	}
}

// sender sends what is due until nothing more is (see kick). A send that
// fails closes the session.
func (ss *session) sender() {
	for {
		ss.kicked.Store(false)
		ss.mu.Lock()
		if !ss.isClosed() {
			if err := ss.sendDue(); err != nil {
				ss.Close(err)
			}
		}
		if ss.isClosed() && !ss.ended {
			ss.ended = true
			endStream(ss.stream.Context(), ss.end, ss.closed())
		}
		ss.mu.Unlock()
		ss.sending.Store(false)
		if !ss.kicked.Load() || !ss.sending.CompareAndSwap(false, true) {
			return
		}
	}
}

// sendDue sends a heartbeat if one is due, the flow acks ready, the
// node's newest version (push) and the lookups queued. Called with mu
// held.
func (ss *session) sendDue() error {
	if ss.heartbeatDue.CompareAndSwap(true, false) {
		if err := ss.heartbeat(); err != nil {
			return err
		}
		ss.heartbeats.Reset(ss.s.cfg.Heartbeat)
	}
	for drained := false; !drained; {
		select {
		case a := <-ss.flowAcks:
			ss.flows.Done()
			if err := ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: a}}); err != nil {
				return err
			}
		default:
			drained = true
		}
	}
	if err := ss.push(); err != nil {
		return err
	}
	return ss.sendLookups()
}

// errShutdown ends the streams of a controller that shuts down.
var errShutdown = status.Error(codes.Unavailable, "controller shutting down")

// serve serves the stream until it ends: it receives and handles what the
// agent says on the calling goroutine (the stream's handler), and has the
// rest sent as it falls due (kick). Called with mu held (Connect took it
// before the stream was attached, so nothing is sent before Welcome); it
// is released here.
func (ss *session) serve() error {
	ss.heartbeats = time.AfterFunc(ss.s.cfg.Heartbeat, func() {
		ss.heartbeatDue.Store(true)
		ss.kick()
	})
	err := ss.sendDue()
	ss.mu.Unlock()
	for err == nil {
		var m *pb.AgentMessage
		if m, err = ss.stream.Recv(); err != nil {
			break
		}
		ss.mu.Lock()
		if err = ss.handle(m); err == nil {
			err = ss.sendDue()
		}
		ss.mu.Unlock()
	}
	ss.heartbeats.Stop()
	// The first reason wins: what closed the session (a revocation, a
	// newer stream, a failed send, the shutdown) made Recv fail.
	ss.Close(err)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.ended = true
	if errors.Is(ss.closeErr, io.EOF) {
		return nil // the agent closed the stream
	}
	return ss.closed()
}

// closed is what the stream ends with, once closed: a revoked agent is
// told so first. Called with mu held.
func (ss *session) closed() error {
	var rev *revokedError
	switch {
	case errors.As(ss.closeErr, &rev):
		if !ss.revocationSent {
			ss.revocationSent = true
			_ = ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Revocation{Revocation: &pb.Revocation{
				Node: ss.node, Reason: rev.reason, Serials: rev.serials,
			}}})
		}
		return status.Error(codes.PermissionDenied, rev.reason)
	case errors.Is(ss.closeErr, nodes.ErrReplaced):
		return status.Error(codes.Aborted, ss.closeErr.Error())
	}
	return ss.closeErr
}

// heartbeat checks that the stream may go on, then sends a heartbeat.
// Revocation is checked here too, not only when a revocation closes the
// stream: whatever way a stream of a revoked certificate came to be
// attached, it ends within one heartbeat.
func (ss *session) heartbeat() error {
	if err := ss.s.checkSerialNotRevoked(ss.node, ss.serial); err != nil {
		ss.logger().Warn("closing stream: the agent's certificate was revoked", zap.Error(err))
		ss.Close(&revokedError{serials: []string{ss.serial}, reason: err.Error()})
		return ss.closed()
	}
	now := ss.s.now()
	if exp := time.Unix(0, ss.certExpiry.Load()); now.After(exp) {
		ss.s.m.refused.WithLabelValues("expired").Inc()
		ss.logger().Warn("closing stream: the agent's certificate expired and was not renewed",
			zap.Time("cert-expiry", exp))
		return status.Errorf(codes.Unauthenticated, "certificate expired at %s and was not renewed", exp.UTC().Format(time.RFC3339))
	}
	if silent := now.Sub(ss.lastRecv); silent > 3*ss.peerHeartbeat+ss.s.cfg.Heartbeat {
		// The connection is up (the stream did not end) but the agent
		// says nothing: hung, stopped, or its reports suppressed. The
		// node's enforcement can no longer be vouched for.
		ss.s.flows.RaiseNodeAlert(alert.NodeEvent{
			Rule: alert.BuiltinSilentRule, Node: ss.node, Kind: "silent", Count: 1, At: now,
			Detail:  fmt.Sprintf("no message from the agent for %s (heartbeat every %s) while its stream was open", silent.Round(time.Millisecond), ss.peerHeartbeat),
			Outcome: "stream closed",
		})
		ss.logger().Warn("closing a silent agent's stream; alert raised", zap.String("rule", alert.BuiltinSilentRule), zap.Duration("silent", silent))
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
	latest := ss.s.nodes.Latest(ss.node)
	if latest == nil || latest.Num == ss.refused || ss.base != nil && ss.base.Num == latest.Num {
		return nil
	}
	msg := &pb.ControllerMessage{}
	kind := "full"
	if ss.base != nil {
		var d ruleset.Delta
		if c := latest.Change; c != nil && latest.ChangeFrom == ss.base.Num && latest.ChangeFromHash == ss.base.Hash {
			d = *c // what the apply found (the hashes and version set below, on this copy)
		} else {
			d = ruleset.Diff(ss.base.RuleSet, latest.RuleSet)
		}
		if d.Len() < ruleSetItems(latest.RuleSet) {
			d.BaseHash, d.Hash, d.Version = ss.base.Hash, latest.Hash, latest.Num
			msg.Msg = &pb.ControllerMessage_Delta{Delta: wire.FromDelta(&d, ss.base.Num)}
			kind = "delta"
		}
	}
	if msg.Msg == nil {
		// Built for each send, not kept: a node has one agent, and the wire
		// form of a large rule set is several times its size.
		msg.Msg = &pb.ControllerMessage_Full{Full: wire.FromRuleSet(latest.RuleSet, latest.Hash)}
	}
	if err := ss.stream.Send(msg); err != nil {
		return err
	}
	ss.inflight = latest
	ss.s.m.pushes.WithLabelValues(kind).Inc()
	ss.s.log.Debug("rule set sent", zap.String("node", ss.node), zap.String("kind", kind), zap.Uint64("policy-version", latest.Num))
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
		if err := ss.onAck(msg.Ack); err != nil {
			return err
		}
	case *pb.AgentMessage_Heartbeat:
	case *pb.AgentMessage_Counters:
		if err := invalid(wire.CheckCounters(msg.Counters)); err != nil {
			ss.s.m.refused.WithLabelValues("invalid").Inc()
			return err
		}
		ss.s.nodes.Update(ss.node, func(n *nodes.Node) { n.Counters = msg.Counters.GetValues() })
	case *pb.AgentMessage_Flows:
		if ack := ss.flows.Submit(msg.Flows, ss.ruleNamer(), ss.flowAck); ack != nil {
			if err := ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: ack}}); err != nil {
				return err
			}
		}
	case *pb.AgentMessage_LookupAnswer:
		if err := ss.onLookupAnswer(msg.LookupAnswer); err != nil {
			return err
		}
	case *pb.AgentMessage_Drift:
		if err := invalid(wire.CheckDrift(msg.Drift)); err != nil {
			ss.s.m.refused.WithLabelValues("invalid").Inc()
			return err
		}
		if ss.s.drifts != nil && !ss.s.drifts.Allow(ss.node, ss.lastRecv) {
			// An honest agent sends one report per kind a second at
			// most; beyond, the report is dropped (the next one carries
			// the count), and neither logged nor alerted.
			ss.s.m.refused.WithLabelValues("rate_limited").Inc()
			break
		}
		ss.onDrift(msg.Drift)
	case *pb.AgentMessage_Hello:
		return status.Error(codes.InvalidArgument, "hello sent twice on one stream")
	default:
		// A newer agent's message this controller does not know: ignore
		// it, as protobuf lets old readers do.
		ss.logger().Debug("unknown message from agent ignored")
	}
	ss.s.nodes.Update(ss.node, func(n *nodes.Node) { n.Rec.LastContact = ss.lastRecv })
	return nil
}

// onDrift raises the datapath-tampered alert for a drift report (checked
// already) and logs it.
func (ss *session) onDrift(d *pb.DatapathDrift) {
	outcome := "not repaired (--repair=false)"
	switch {
	case d.GetRepaired():
		outcome = "repaired"
	case d.GetRepairError() != "":
		outcome = "repair failed: " + d.GetRepairError()
	}
	detail := d.GetDetail()
	if o := d.GetObject(); o != "" {
		detail = o + ": " + detail
	}
	kind := wire.DriftKind(d.GetKind())
	if kind != d.GetKind() {
		detail = d.GetKind() + ": " + detail
	}
	ss.s.m.drift.WithLabelValues(kind).Add(float64(d.GetCount()))
	ss.logger().Error("agent reports its datapath tampered with", zap.String("kind", d.GetKind()), zap.String("object", d.GetObject()),
		zap.String("detail", d.GetDetail()), zap.String("outcome", outcome), zap.Uint64("count", d.GetCount()))
	// The controller's clock, not the agent's: an agent clock behind by
	// more than the window would have the alert resolved at once.
	ss.s.flows.RaiseNodeAlert(alert.NodeEvent{
		Rule: alert.BuiltinTamperedRule, Node: ss.node, Kind: kind,
		Detail: wire.Cut(detail, wire.MaxDriftText), Outcome: wire.Cut(outcome, wire.MaxDriftText), Count: d.GetCount(), At: ss.lastRecv,
	})
}

// onAck records the outcome of the update in flight and decides what
// follows it. An error ends the stream.
func (ss *session) onAck(a *pb.Ack) error {
	if err := invalid(wire.CheckAck(a)); err != nil {
		ss.s.m.refused.WithLabelValues("invalid").Inc()
		return err
	}
	v := ss.inflight
	if v == nil || a.GetVersion() != v.Num {
		ss.logger().Debug("ack of a version not in flight ignored", zap.Uint64("policy-version", a.GetVersion()))
		return nil
	}
	ss.inflight = nil
	now := ss.s.now()
	result := "applied"
	var lastErr string
	switch a.GetCode() {
	case pb.AckCode_ACK_CODE_APPLIED:
		if a.GetHash() != v.Hash {
			// The agent enforces something else than what was sent: start
			// over with a full rule set, once.
			result = "invalid"
			lastErr = fmt.Sprintf("version %d applied with hash %s, the controller's is %s", v.Num, a.GetHash(), v.Hash)
			if ss.base == nil {
				ss.refused = v.Num
			}
			ss.base = nil
			break
		}
		ss.base, ss.refused = v, 0
		if !v.At.IsZero() {
			ss.s.m.propagation.Observe(now.Sub(v.At).Seconds())
		}
	case pb.AckCode_ACK_CODE_DELTA_BASE:
		result = "delta_base"
		ss.logger().Info("agent could not apply a delta; sending the full rule set", zap.String("error", wire.Cut(a.GetError(), wire.MaxAckError)))
		ss.base = nil
	case pb.AckCode_ACK_CODE_STALE_VERSION:
		result = "stale_version"
		ss.base = nil
		if !ss.s.allowResync(ss.node, now) {
			ss.s.m.acks.WithLabelValues(result).Inc()
			ss.s.m.refused.WithLabelValues("stale_resync").Inc()
			ss.logger().Warn("stale-version ack refused: the node's versions were re-numbered less than a minute ago; closing the stream",
				zap.Uint64("policy-version", v.Num), zap.Uint64("applied-version", a.GetAppliedVersion()))
			return status.Errorf(codes.ResourceExhausted,
				"stale-version ack of version %d refused: the agent says it enforces version %d, but node %s had its versions re-numbered past its agent's less than %s ago (at most one re-sync per %s)",
				v.Num, a.GetAppliedVersion(), ss.node, ResyncInterval, ResyncInterval)
		}
		if _, err := ss.s.policy.BumpPast(ss.s.ctx, ss.node, a.GetAppliedVersion()); err != nil {
			ss.refused = v.Num
			lastErr = fmt.Sprintf("agent enforces version %d, newer than any this controller has: %v", a.GetAppliedVersion(), err)
		}
	default:
		result = "apply_failed"
		if a.GetCode() == pb.AckCode_ACK_CODE_INVALID {
			result = "invalid"
		}
		ss.refused = v.Num
		if ss.base != nil && a.GetHash() != ss.base.Hash {
			ss.base = nil
		}
		agentErr := wire.Cut(a.GetError(), wire.MaxAckError)
		lastErr = fmt.Sprintf("version %d not applied: %s; version %d stays in force", v.Num, agentErr, a.GetAppliedVersion())
		ss.logger().Warn("agent could not apply a rule set; its previous one stays in force",
			zap.Uint64("policy-version", v.Num), zap.Uint64("applied-version", a.GetAppliedVersion()), zap.String("error", agentErr))
	}
	ss.s.m.acks.WithLabelValues(result).Inc()
	ss.s.nodes.Update(ss.node, func(n *nodes.Node) {
		if result == "applied" {
			n.Rec.AppliedVersion, n.Rec.AppliedHash, n.Rec.AppliedAt = v.Num, v.Hash, now
			n.Pending = a.GetPendingInterfaces()
		}
		n.Rec.LastError = lastErr
	})
	if f := ss.s.cfg.OnAck; f != nil {
		f(Ack{Node: ss.node, Version: v.Num, Applied: result == "applied", Error: lastErr})
	}
	return nil
}

// flowAck hands an ack to the sender (kick). The channel holds
// flowingest.MaxInFlight acks, as many as batches can be in flight (a batch
// leaves flight when its ack is taken from the channel), so this never
// blocks; a session that ended drops it (its agent resends the
// batch, which is then recognised as stored).
func (ss *session) flowAck(a *pb.FlowAck) {
	select {
	case ss.flowAcks <- a:
		ss.kick()
	case <-ss.done:
	default:
		ss.logger().Error("flow ack dropped: ack channel full (bug)")
	}
}

// ruleNamer names rule ids from the rule set the agent enforces (the
// flows were decided by it), or the newest one when that is not known.
func (ss *session) ruleNamer() func(ruleset.RuleID) string {
	v := ss.base
	if v == nil {
		v = ss.s.nodes.Latest(ss.node)
	}
	if v == nil {
		return func(id ruleset.RuleID) string {
			if id == ruleset.RuleDefaultDeny {
				return ruleset.DefaultDenyName
			}
			return fmt.Sprintf("rule-%d", id)
		}
	}
	if ss.names == nil || ss.namesOf != v {
		ss.names = make(map[ruleset.RuleID]string, len(v.RuleSet.Rules))
		for _, r := range v.RuleSet.Rules {
			ss.names[r.ID] = r.Name
		}
		ss.namesOf = v
	}
	names, rs := ss.names, v.RuleSet
	return func(id ruleset.RuleID) string {
		if n, ok := names[id]; ok {
			return n
		}
		return rs.RuleName(id)
	}
}
