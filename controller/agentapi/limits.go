package agentapi

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Limits bound what peers of the agent-facing listener can make the
// controller hold or do (admission.Limits: connections, streams, joins).
type Limits = admission.Limits

// Default limits (admission's).
const (
	DefaultMaxConns          = admission.DefaultMaxConns
	DefaultMaxConnsPerSource = admission.DefaultMaxConnsPerSource
	DefaultMaxStreamsPerConn = admission.DefaultMaxStreamsPerConn
	DefaultJoinRate          = admission.DefaultJoinRate
	DefaultJoinBurst         = admission.DefaultJoinBurst
	// renewRate and renewBurst bound one node's renewals. An agent renews
	// at two thirds of its certificate's life (40 minutes by default) and
	// retries failures with backoff: ten at once and one a minute after
	// that is far more than it needs, and keeps a compromised node from
	// keeping the certificate lock and the store busy.
	renewRate  = 1.0 / 60
	renewBurst = 10
)

// DefaultLimits are the limits with every field at its default.
func DefaultLimits() Limits { return Limits{}.WithDefaults() }

const (
	// maxUnaryRequest bounds Join and Renew requests: a CSR (at most
	// pki.MaxCSRSize) and a few short strings. The server's message limit
	// (maxAgentMessage) is for flow batches on Connect; gRPC reads a
	// message whole before any handler sees it, so this is checked once it
	// is read, before anything is done with it.
	maxUnaryRequest = pki.MaxCSRSize + 1<<10
	// unaryTimeout bounds a Join or a Renew from its first header to its
	// answer, reading the request included: a peer that opens one and
	// trickles its bytes holds what it sent for this long at most.
	unaryTimeout = 10 * time.Second
	// handshakeTimeout bounds a new connection's TLS handshake, and
	// maxConnIdle how long a connection without a call stays open (an
	// agent's stream is a call): neither holds a connection slot for long.
	handshakeTimeout = 10 * time.Second
	maxConnIdle      = 5 * time.Minute
	// maxJoinsInProgress bounds the joins doing their store work (the
	// token's lookup, the certificate's record, the token's use: each a
	// write to the control database, one connection) at once, and
	// joinQueueWait how long a join waits for its turn before it is
	// answered "busy, retry later" (agents retry with backoff). Without
	// them, thousands of agents joining at once (a fleet's first start, a
	// controller restored empty) queue their writes on the one connection
	// for longer than a join's deadline: every join then fails, in turn,
	// having done part of its work, and joins stop completing altogether.
	// Waiters are served in order of arrival.
	maxJoinsInProgress = 8
	joinQueueWait      = 5 * time.Second
)

// joinSlot waits for one of the maxJoinsInProgress slots, at most
// joinQueueWait, and returns its release.
func (s *Service) joinSlot(ctx context.Context) (release func(), err error) {
	t := time.NewTimer(joinQueueWait)
	defer t.Stop()
	select {
	case s.joinSlots <- struct{}{}:
		return func() { <-s.joinSlots }, nil
	case <-t.C:
		return nil, fmt.Errorf("the controller is busy with other joins (%d at once, each waits at most %s for its turn): retry later", maxJoinsInProgress, joinQueueWait)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tap runs for every new RPC before its request is read (gRPC's InTapHandle,
// on the connection's reader goroutine: it must be quick). Join is rate
// limited per source; Join and Renew get a deadline.
func (s *Service) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	switch info.FullMethodName {
	case pb.Control_Join_FullMethodName:
		remote := admission.PeerAddr(ctx)
		if !s.joins.Allow(admission.SourceOf(remote), s.now()) {
			s.m.refused.WithLabelValues("rate_limited").Inc()
			s.refusals.Warn(remote, "join refused: rate limit", zap.Stringer("remote", remote))
			return ctx, status.Errorf(codes.ResourceExhausted, "too many joins from %s (%g a second, %d at once): retry later",
				admission.SourceName(admission.SourceOf(remote)), s.cfg.Limits.JoinRate, s.cfg.Limits.JoinBurst)
		}
	case pb.Control_Renew_FullMethodName:
	case pb.Control_Connect_FullMethodName:
		return streamContext(ctx), nil
	default:
		return ctx, nil
	}
	ctx, cancel := context.WithTimeout(ctx, unaryTimeout)
	// The stream's end cancels ctx's parent, and so ctx; cancel then
	// releases the timer.
	context.AfterFunc(ctx, cancel)
	return ctx, nil
}

// limitRequestSize refuses a Join or Renew request larger than
// maxUnaryRequest before its handler parses any of it (a node name of
// megabytes would otherwise reach the logs).
func (s *Service) limitRequestSize(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok {
		if n := proto.Size(m); n > maxUnaryRequest {
			s.m.refused.WithLabelValues("bad_request").Inc()
			remote := admission.PeerAddr(ctx)
			s.refusals.Warn(remote, "agent RPC refused: request too large", zap.String("method", info.FullMethod),
				zap.Int("bytes", n), zap.Stringer("remote", remote))
			return nil, status.Errorf(codes.InvalidArgument, "request of %d bytes: at most %d (a CSR is at most %d)", n, maxUnaryRequest, pki.MaxCSRSize)
		}
	}
	return handler(ctx, req)
}

// streamEndKey is the context key of a Connect stream's end: the cancel
// function of the stream's context.
type streamEndKey struct{}

// streamContext is a Connect stream's context: gRPC's, which the stream's
// receives and sends wait on, made cancellable by the service (Connect
// finds the cancel function under streamEndKey). It ends with gRPC's at
// the latest.
func streamContext(ctx context.Context) context.Context {
	ctx, end := context.WithCancelCause(ctx)
	return context.WithValue(ctx, streamEndKey{}, end)
}

// errNoHello ends a stream whose agent did not say Hello in time.
var errNoHello = status.Error(codes.DeadlineExceeded, "no Hello")
