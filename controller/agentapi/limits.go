package agentapi

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

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
)

// tap runs for every new RPC before its request is read (gRPC's InTapHandle,
// on the connection's reader goroutine: it must be quick). Join and Renew
// get a deadline.
func (s *Service) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	switch info.FullMethodName {
	case pb.Control_Join_FullMethodName, pb.Control_Renew_FullMethodName:
		ctx, cancel := context.WithTimeout(ctx, unaryTimeout)
		// The stream's end cancels ctx's parent, and so ctx; cancel then
		// releases the timer.
		context.AfterFunc(ctx, cancel)
		return ctx, nil
	}
	return ctx, nil
}

// limitRequestSize refuses a Join or Renew request larger than
// maxUnaryRequest before its handler parses any of it (a node name of
// megabytes would otherwise reach the logs).
func (s *Service) limitRequestSize(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok {
		if n := proto.Size(m); n > maxUnaryRequest {
			s.m.refused.WithLabelValues("bad_request").Inc()
			s.log.Warn("agent RPC refused: request too large", zap.String("method", info.FullMethod),
				zap.Int("bytes", n), zap.String("remote", remote(ctx)))
			return nil, status.Errorf(codes.InvalidArgument, "request of %d bytes: at most %d (a CSR is at most %d)", n, maxUnaryRequest, pki.MaxCSRSize)
		}
	}
	return handler(ctx, req)
}
