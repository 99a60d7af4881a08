package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Capabilities every agent of this build has.
var baseCapabilities = []string{"delta", "ipv6", "tcx"}

// stream opens one stream to the current target and serves it until it
// ends. established says whether the controller accepted it (the backoff
// starts over then).
func (c *Client) stream(ctx context.Context) (tg target, established bool, err error) {
	tg, conn, err := c.dial(ctx, c.mutualTLS())
	if err != nil {
		return tg, false, err
	}
	defer conn.Close()
	established, err = c.serve(ctx, conn)
	return tg, established, err
}

// serve runs one stream on conn.
func (c *Client) serve(ctx context.Context, conn *grpc.ClientConn) (established bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	st, err := pb.NewControlClient(conn).Connect(ctx)
	if err != nil {
		return false, err
	}
	s := &agentStream{c: c, st: st}
	applied, hash := c.current()
	hello := &pb.Hello{
		Node:                c.cfg.Node,
		AgentVersion:        c.cfg.AgentVersion,
		Kernel:              c.cfg.Kernel,
		Capabilities:        append(append([]string(nil), baseCapabilities...), c.cfg.Capabilities...),
		DefaultMode:         c.cfg.DefaultMode.String(),
		HeartbeatIntervalMs: uint32(c.cfg.Heartbeat / time.Millisecond),
	}
	if applied != nil {
		hello.AppliedVersion, hello.AppliedHash = applied.Version, hash
	}
	if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hello}}); err != nil {
		if errors.Is(err, io.EOF) {
			// The controller ended the stream before the Hello went out
			// (a revoked certificate is refused at once): its status
			// says why, and a final one must stop the agent.
			_, err = st.Recv()
			return false, c.streamErr(err)
		}
		return false, err
	}
	first, err := st.Recv()
	if err != nil {
		return false, c.streamErr(err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return false, errors.New("controller did not answer Hello with Welcome")
	}
	c.streams.Add(1)
	c.connected.Store(true)
	defer c.connected.Store(false)
	c.log.Info("connected to the controller", zap.Uint64("applied-version", hello.AppliedVersion),
		zap.Uint64("policy-version", welcome.GetLatestVersion()))

	// Heartbeats (with counters) go out from their own goroutine; a
	// controller silent for three of its intervals is taken for gone.
	peer := max(time.Duration(welcome.GetHeartbeatIntervalMs())*time.Millisecond, 100*time.Millisecond)
	heard := make(chan struct{}, 1)
	var wg sync.WaitGroup
	if flows := c.cfg.Flows; flows != nil {
		// Deferred first, so it runs last: after the sender has stopped,
		// batches in flight go again on the next stream.
		defer flows.Reset()
	}
	defer wg.Wait()
	defer cancel(nil) // stops the heartbeats and the sender before waiting for them
	wg.Go(func() { s.heartbeats(ctx, cancel, peer, heard) })
	if r := c.cfg.Drift; r != nil {
		wg.Go(func() { s.sendDrift(ctx, cancel, r) })
	}
	if flows := c.cfg.Flows; flows != nil {
		wg.Go(func() {
			for {
				b, err := flows.Next(ctx)
				if err != nil {
					return // ctx done
				}
				if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Flows{Flows: b}}); err != nil {
					cancel(fmt.Errorf("send flows: %w", err))
					return
				}
			}
		})
	}

	lookups := make(chan *pb.LookupRequest, lookupQueue)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case req := <-lookups:
				if err := s.send(c.lookup(req)); err != nil {
					cancel(fmt.Errorf("send lookup answer: %w", err))
					return
				}
			}
		}
	})

	for {
		m, err := st.Recv()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return true, cause
			}
			return true, c.streamErr(err)
		}
		select {
		case heard <- struct{}{}:
		default:
		}
		switch msg := m.GetMsg().(type) {
		case *pb.ControllerMessage_Full:
			err = s.send(ackMessage(c.applyFull(msg.Full)))
		case *pb.ControllerMessage_Delta:
			err = s.send(ackMessage(c.applyDelta(msg.Delta)))
		case *pb.ControllerMessage_Lookup:
			// Looked up on their own goroutine: reading maps must never
			// hold up rule sets and heartbeats. A full queue is answered
			// at once.
			select {
			case lookups <- msg.Lookup:
			default:
				err = s.send(busyLookup(msg.Lookup))
			}
		case *pb.ControllerMessage_FlowAck:
			if c.cfg.Flows != nil {
				c.cfg.Flows.Ack(msg.FlowAck)
			}
		case *pb.ControllerMessage_Heartbeat:
		case *pb.ControllerMessage_Revocation:
			// Final: Run returns it, and the agent says what stays
			// enforced and what to do (logged once, there).
			return true, fmt.Errorf("%w: %s", ErrRevoked, msg.Revocation.GetReason())
		default:
			c.log.Debug("unknown message from the controller ignored")
		}
		if err != nil {
			return true, err
		}
	}
}

// streamErr turns the end of a stream into an error worth logging.
func (c *Client) streamErr(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("controller closed the stream")
	}
	if status.Code(err) == codes.PermissionDenied && errorsContains(err, "revoked") {
		return fmt.Errorf("%w: %v", ErrRevoked, status.Convert(err).Message())
	}
	return err
}

func errorsContains(err error, s string) bool {
	return err != nil && containsFold(err.Error(), s)
}

// agentStream serialises sends: acks go out from the receiving goroutine,
// heartbeats from their own.
type agentStream struct {
	c  *Client
	st pb.Control_ConnectClient
	mu sync.Mutex
}

func (s *agentStream) send(m *pb.AgentMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Send(m)
}

func (s *agentStream) heartbeats(ctx context.Context, cancel context.CancelCauseFunc, peer time.Duration, heard <-chan struct{}) {
	t := time.NewTicker(s.c.cfg.Heartbeat)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-heard:
			last = time.Now()
			continue
		case <-t.C:
		}
		if silent := time.Since(last); silent > 3*peer+s.c.cfg.Heartbeat {
			cancel(fmt.Errorf("no message from the controller for %s (heartbeat every %s)", silent.Round(time.Millisecond), peer))
			return
		}
		if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Heartbeat{Heartbeat: &pb.Heartbeat{UnixNano: s.c.now().UnixNano()}}}); err != nil {
			return // the receiving side sees the stream end
		}
		if s.c.cfg.Counters == nil {
			continue
		}
		values, err := s.c.cfg.Counters()
		if err != nil {
			s.c.log.Warn("datapath counters not read", zap.Error(err))
			continue
		}
		if err := s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Counters{Counters: &pb.Counters{Values: values}}}); err != nil {
			return
		}
	}
}

func ackMessage(a *pb.Ack) *pb.AgentMessage {
	return &pb.AgentMessage{Msg: &pb.AgentMessage_Ack{Ack: a}}
}

// current returns the rule set in force and its hash (cached: hashing a
// large rule set is not free).
func (c *Client) current() (*ruleset.RuleSet, string) {
	rs := c.cfg.Enforcer.Current()
	if rs == nil {
		return nil, ""
	}
	c.hashMu.Lock()
	defer c.hashMu.Unlock()
	if c.hashed != rs {
		c.hashed = rs
		c.hashVal, c.hashPart = rs.HashFrom(nil)
	}
	return rs, c.hashVal
}

// hashPartOf is the hash part of rs if it is the rule set whose hash is
// cached, else nil.
func (c *Client) hashPartOf(rs *ruleset.RuleSet) *ruleset.HashPart {
	c.hashMu.Lock()
	defer c.hashMu.Unlock()
	if c.hashed != rs {
		return nil
	}
	return c.hashPart
}

// applyFull applies a full rule set and says how it went.
func (c *Client) applyFull(m *pb.RuleSet) *pb.Ack {
	rs, err := wire.ToRuleSet(m)
	if err != nil {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_INVALID, fmt.Errorf("rule set: %w", err))
	}
	hash, part := rs.HashFrom(nil)
	if m.GetHash() != "" && hash != m.GetHash() {
		return c.refuse(rs.Version, pb.AckCode_ACK_CODE_INVALID, fmt.Errorf("rule set hash %s, the controller says %s", hash, m.GetHash()))
	}
	return c.apply(rs, hash, part)
}

// applyDelta rebuilds the full rule set from the one in force and a delta
// and applies it whole.
func (c *Client) applyDelta(m *pb.RuleSetDelta) *pb.Ack {
	cur, curHash := c.current()
	if cur == nil {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_DELTA_BASE, errors.New("no rule set in force to apply a delta to"))
	}
	d, err := wire.ToDelta(m)
	if err != nil {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_INVALID, fmt.Errorf("delta: %w", err))
	}
	if m.GetVersion() <= cur.Version {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_STALE_VERSION,
			fmt.Errorf("version %d is not newer than version %d in force", m.GetVersion(), cur.Version))
	}
	// The base is checked against the cached hash of the rule set in
	// force, which ApplyDelta would otherwise compute again; the result's
	// hash ApplyDelta checks.
	if d.BaseHash != "" && d.BaseHash != curHash {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_DELTA_BASE,
			fmt.Errorf("%w: base hash %s, rule set in force has %s", ruleset.ErrDeltaBase, d.BaseHash, curHash))
	}
	d.BaseHash = ""
	if d.Hash == "" {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_INVALID, errors.New("delta without the hash of its result"))
	}
	rs, part, err := cur.ApplyDeltaFrom(*d, c.hashPartOf(cur))
	if errors.Is(err, ruleset.ErrDeltaBase) {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_DELTA_BASE, err)
	}
	if err != nil {
		return c.refuse(m.GetVersion(), pb.AckCode_ACK_CODE_INVALID, fmt.Errorf("delta: %w", err))
	}
	return c.apply(rs, d.Hash, part)
}

// apply enforces rs (whose hash and hash part, which may be nil, are
// known) unless it is for another node or older than what is in force.
func (c *Client) apply(rs *ruleset.RuleSet, hash string, part *ruleset.HashPart) *pb.Ack {
	if rs.Node != c.cfg.Node {
		return c.refuse(rs.Version, pb.AckCode_ACK_CODE_INVALID, fmt.Errorf("rule set is for node %q, this agent is %q", rs.Node, c.cfg.Node))
	}
	cur, curHash := c.current()
	if cur != nil && rs.Version <= cur.Version {
		if rs.Version == cur.Version && hash == curHash {
			return &pb.Ack{Version: rs.Version, Hash: hash, AppliedVersion: rs.Version} // already in force
		}
		return c.refuse(rs.Version, pb.AckCode_ACK_CODE_STALE_VERSION,
			fmt.Errorf("version %d is not newer than version %d in force", rs.Version, cur.Version))
	}
	start := time.Now()
	pending, err := c.cfg.Enforcer.Apply(rs)
	took := time.Since(start)
	if err != nil {
		// The enforcer logged it; the previous rule set stays in force.
		return c.refuse(rs.Version, pb.AckCode_ACK_CODE_APPLY_FAILED, err)
	}
	c.hashMu.Lock()
	c.hashed, c.hashVal, c.hashPart = rs, hash, part
	c.hashMu.Unlock()
	c.log.Info("rule set applied", zap.Uint64("policy-version", rs.Version), zap.Duration("duration", took),
		zap.Strings("pending-interfaces", pending))
	return &pb.Ack{
		Version: rs.Version, Hash: hash, AppliedVersion: rs.Version,
		PendingInterfaces: pending, ApplyMicros: uint64(took / time.Microsecond),
	}
}

// refuse builds the ack of an update that was not applied: it names the
// rule set that stays in force.
func (c *Client) refuse(version uint64, code pb.AckCode, err error) *pb.Ack {
	a := &pb.Ack{Version: version, Code: code, Error: err.Error()}
	if cur, hash := c.current(); cur != nil {
		a.AppliedVersion, a.Hash = cur.Version, hash
	}
	if code != pb.AckCode_ACK_CODE_APPLY_FAILED {
		c.log.Warn("update from the controller not applied", zap.Uint64("policy-version", version),
			zap.String("code", code.String()), zap.Error(err))
	}
	return a
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
