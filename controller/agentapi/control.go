package agentapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// control implements the gRPC Control service.
type control struct {
	pb.UnimplementedControlServer
	s *Service
}

func remote(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr.String()
	}
	return "unknown"
}

// Join trades a one-time join token, or a Kubernetes ServiceAccount
// token (serviceaccount.go), and a CSR for a node certificate. Anyone who
// reaches the listener may call it, so what costs little comes first: the
// rate limit and the request's size (tap, limitRequestSize), the node
// name, the CSR, then a read-only lookup of the join token (or the
// TokenReview); only a token that is proven costs a write (the join
// token's ConsumeJoinToken, the ServiceAccount token's credential id) and
// the certificate lock. Refusals are counted, and logged within limits.
func (c *control) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	s := c.s
	j := s.newJoinAttempt(ctx, req)
	if err := pki.ValidNodeName(req.GetNode()); err != nil {
		return nil, j.refuse("bad_request", codes.InvalidArgument, err)
	}
	if req.GetServiceAccountToken() != "" && (req.GetTokenId() != "" || req.GetTokenSecret() != "") {
		return nil, j.refuse("bad_request", codes.InvalidArgument, errors.New("give a join token or a ServiceAccount token, not both"))
	}
	// The CSR is checked before the token is used up.
	csr, err := pki.CheckCSR(req.GetCsr())
	if err != nil {
		return nil, j.refuse("bad_request", codes.InvalidArgument, err)
	}
	// From here on a join costs store work: joinSlot bounds how many do
	// it at once (limits.go).
	release, err := s.joinSlot(ctx)
	if err != nil {
		return nil, j.refuse("busy", codes.ResourceExhausted, err)
	}
	defer release()
	now := s.now()
	if req.GetServiceAccountToken() != "" {
		id, giveBack, err := s.verifyServiceAccount(ctx, j)
		if err != nil {
			return nil, err
		}
		resp, err := s.admit(ctx, j, csr, now, func(revoked time.Time) error { return podAfterRevocation(req.GetNode(), id, revoked) },
			fmt.Sprintf("Kubernetes ServiceAccount token of pod %s/%s", id.Namespace, id.Pod), s.addCert)
		if status.Code(err) == codes.Internal {
			giveBack()
		}
		return resp, err
	}
	check := func(t store.JoinToken) error { return s.checkJoinToken(t, req, now) }
	tok, err := s.st.JoinToken(ctx, req.GetTokenId())
	if err == nil {
		err = check(tok)
	}
	if err != nil {
		return nil, joinRefusal(err, j)
	}
	// The token is used in the transaction that records the certificate
	// (checked again there: of two joins racing for it, one wins), so a
	// join that fails after the check (the store busy past the deadline)
	// leaves it unused for the agent's retry instead of locking the node
	// out for good. A token made before the revocation never undoes it.
	record := func(ctx context.Context, c store.Cert, ar store.AuditRecord) error {
		_, err := s.st.ConsumeJoinToken(ctx, tok.ID, now, check, &c, ar)
		return err
	}
	return s.admit(ctx, j, csr, now, func(revoked time.Time) error { return tokenAfterRevocation(tok, revoked) },
		"join token "+tok.ID, record)
}

// joinAttempt is one Join's logging and refusing.
type joinAttempt struct {
	s      *Service
	ctx    context.Context
	req    *pb.JoinRequest
	fields []zap.Field
	log    *zap.Logger
}

func (s *Service) newJoinAttempt(ctx context.Context, req *pb.JoinRequest) *joinAttempt {
	fields := []zap.Field{zap.String("node", req.GetNode()), zap.String("method", joinMethod(req)), zap.String("remote", remote(ctx))}
	if req.GetTokenId() != "" {
		fields = append(fields, zap.String("token-id", req.GetTokenId()))
	}
	return &joinAttempt{s: s, ctx: ctx, req: req, fields: fields, log: s.log.With(fields...)}
}

// refuse counts and logs (within limits) a refusal, and returns its
// answer: code and err's text.
func (j *joinAttempt) refuse(reason string, code codes.Code, err error) error {
	j.s.m.refused.WithLabelValues(reason).Inc()
	j.s.refusals.Warn(admission.PeerAddr(j.ctx), "join refused", append(j.fields, zap.Error(err))...)
	return status.Error(code, err.Error())
}

// admit issues the certificate of a join whose token was proven, unless
// afterRevocation refuses the token against the node's revocation. Under
// certMu, as Revoke records the revocation (see Renew). The join is
// recorded in the audit trail with the certificate, as the node's own
// action (it proved the token); how it proved it is detail.
func (s *Service) admit(ctx context.Context, j *joinAttempt, csr *x509.CertificateRequest, now time.Time, afterRevocation func(revoked time.Time) error,
	detail string, record recordCert) (*pb.JoinResponse, error) {
	node := j.req.GetNode()
	ctx = audit.WithActor(ctx, audit.Actor{Kind: store.ActorNode, ID: node, Source: remote(ctx)})
	s.certMu.Lock()
	err := afterRevocation(s.nodes.RevokedAt(node))
	var cert *x509.Certificate
	var certPEM []byte
	if err == nil {
		cert, certPEM, err = s.issueNodeCert(ctx, node, csr, now, audit.NodeJoin, detail, record)
	}
	if err == nil {
		s.nodes.Update(node, func(n *nodes.Node) {
			n.Rec.Joined, n.Rec.Revoked, n.Rec.LastError = now, time.Time{}, ""
		})
	}
	s.certMu.Unlock()
	if err != nil {
		return nil, joinRefusal(err, j)
	}
	s.m.joins.WithLabelValues(joinMethod(j.req)).Inc()
	j.log.Info("node joined", zap.String("cert-serial", pki.Serial(cert)), zap.Time("cert-expiry", cert.NotAfter))
	return &pb.JoinResponse{Certificate: certPEM, Ca: s.ca.CertPEM}, nil
}

// errBadToken is what every unusable token gets before its secret is
// proven: nobody learns whether an id exists.
var errBadToken = errors.New("join token not valid")

// checkJoinToken says whether t admits the node req joins as, at now: its
// secret first (until it is proven, every refusal is errBadToken), then
// its node, its age against the node's revocation, use and expiry.
func (s *Service) checkJoinToken(t store.JoinToken, req *pb.JoinRequest, now time.Time) error {
	if !pki.SecretMatches(t.SecretHash, req.GetTokenSecret()) {
		return errBadToken
	}
	if t.Node != req.GetNode() {
		return status.Errorf(codes.PermissionDenied, "join token is for node %q, not %q", t.Node, req.GetNode())
	}
	if err := tokenAfterRevocation(t, s.nodes.RevokedAt(t.Node)); err != nil {
		return err
	}
	return t.Usable(now)
}

// tokenAfterRevocation refuses a token created before its node was
// revoked (revoked is zero for a node that is not revoked).
func tokenAfterRevocation(t store.JoinToken, revoked time.Time) error {
	if !revoked.IsZero() && !t.Created.After(revoked) {
		return status.Errorf(codes.PermissionDenied, "join token created before node %q was revoked (token created %s, node revoked %s): create a new token",
			t.Node, t.Created.UTC().Format(time.RFC3339), revoked.UTC().Format(time.RFC3339))
	}
	return nil
}

// joinRefusal turns what stopped a join into its answer.
func joinRefusal(err error, j *joinAttempt) error {
	reason := "token"
	if j.req.GetServiceAccountToken() != "" {
		reason = "service_account"
	}
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, errBadToken):
		return j.refuse(reason, codes.Unauthenticated, errBadToken)
	case errors.Is(err, store.ErrTokenUsed), errors.Is(err, store.ErrTokenExpiry):
		return j.refuse(reason, codes.Unauthenticated, err)
	case status.Code(err) == codes.PermissionDenied:
		return j.refuse(reason, codes.PermissionDenied, errors.New(status.Convert(err).Message()))
	}
	j.log.Error("join failed", zap.Error(err))
	return status.Error(codes.Internal, "join failed; see the controller's log")
}

// Renew signs a new certificate for the caller's node.
func (c *control) Renew(ctx context.Context, req *pb.RenewRequest) (*pb.RenewResponse, error) {
	s := c.s
	id, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if !s.renews.Allow(id.node, s.now()) {
		s.m.refused.WithLabelValues("rate_limited").Inc()
		s.refusals.Warn(admission.PeerAddr(ctx), "renewal refused: rate limit", zap.String("node", id.node))
		return nil, status.Errorf(codes.ResourceExhausted, "node %s renews too often (%d at once, then one a minute): retry later", id.node, renewBurst)
	}
	// The CSR is parsed and its signature verified before the certificate
	// lock is taken: whatever it costs delays its sender only, never a
	// revocation or another node's renewal.
	csr, err := pki.CheckCSR(req.GetCsr())
	if err != nil {
		s.m.refused.WithLabelValues("bad_request").Inc()
		s.log.Warn("renewal refused", zap.String("node", id.node), zap.Error(err))
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// Issuing and revoking exclude each other: a revocation either comes
	// first (the check below refuses the certificate) or finds the new
	// certificate in the store and revokes it too. Without this a
	// revocation landing between the check and the issuing would leave
	// the node a fresh, unrevoked certificate.
	s.certMu.Lock()
	if err := s.checkNotRevoked(id); err != nil {
		s.certMu.Unlock()
		s.log.Warn("renewal refused", zap.String("node", id.node), zap.Error(err))
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	cert, certPEM, err := s.issueNodeCert(audit.WithActor(ctx, audit.Actor{Kind: store.ActorNode, ID: id.node, Source: remote(ctx)}),
		id.node, csr, s.now(), audit.NodeRenew, "", s.addCert)
	s.certMu.Unlock()
	if err != nil {
		s.log.Error("renewal failed", zap.String("node", id.node), zap.Error(err))
		return nil, status.Error(codes.Internal, "renewal failed; see the controller's log")
	}
	s.nodes.Update(id.node, func(n *nodes.Node) {
		if ss, ok := n.Stream.(*session); ok {
			ss.certExpiry.Store(cert.NotAfter.UnixNano())
		}
	})
	s.log.Info("node certificate renewed", zap.String("node", id.node), zap.String("cert-serial", pki.Serial(cert)),
		zap.Time("cert-expiry", cert.NotAfter))
	return &pb.RenewResponse{Certificate: certPEM, Ca: s.ca.CertPEM}, nil
}

// recordCert records an issued certificate with its audit record: in the
// store alone (addCert), or with what else must commit with it (a join
// token's use).
type recordCert func(ctx context.Context, c store.Cert, ar store.AuditRecord) error

func (s *Service) addCert(ctx context.Context, c store.Cert, ar store.AuditRecord) error {
	return s.st.AddCert(ctx, c, ar)
}

// issueNodeCert signs and records a node certificate for a CSR that
// pki.CheckCSR accepted, with its audit record (action, by ctx's actor).
// The certificate is returned only once record succeeded. Called with
// certMu held.
func (s *Service) issueNodeCert(ctx context.Context, name string, csr *x509.CertificateRequest, now time.Time, action, detail string,
	record recordCert) (*x509.Certificate, []byte, error) {
	cert, certPEM, err := s.ca.IssueNode(csr, name, s.cfg.NodeCertTTL, now)
	if err != nil {
		return nil, nil, err
	}
	ar := audit.Record(ctx, now, action, audit.NodeObject(name),
		strings.TrimSuffix(fmt.Sprintf("certificate %s until %s; %s", pki.Serial(cert), cert.NotAfter.UTC().Format(time.RFC3339), detail), "; "))
	ar.After = audit.Hash(cert.Raw)
	if err := record(ctx, store.Cert{Serial: pki.Serial(cert), Node: name, NotAfter: cert.NotAfter}, ar); err != nil {
		return nil, nil, err
	}
	s.cfg.Audit.Written(ar)
	s.nodes.Update(name, func(n *nodes.Node) { n.Rec.CertSerial, n.Rec.CertExpiry = pki.Serial(cert), cert.NotAfter })
	return cert, certPEM, nil
}

// Connect serves an agent's stream: open sets it up, serve serves it,
// ended says how it ended. The stream's handler goroutine waits in serve
// (in Recv) for as long as the stream lasts, with Connect's frame under
// it: what sets the stream up and logs its end is kept in functions of
// their own, whose frames (1.7 KB of locals when they were Connect's) are
// gone by then, so the collector can shrink the goroutine's stack to
// what the wait uses (1.3 KB less stack a stream at 1,000 agents).
func (c *control) Connect(stream pb.Control_ConnectServer) error {
	ss, log, err := c.s.open(stream)
	if ss == nil {
		return err
	}
	stopShutdown := context.AfterFunc(c.s.ctx, func() { ss.Close(errShutdown) })
	err = ss.serve()
	stopShutdown()
	c.s.ended(ss, log, err)
	return err
}

// open authenticates a stream, reads its Hello and attaches a session for
// it, Welcome sent: the session (nil if the stream is refused, with the
// error to end it with) and its log.
func (s *Service) open(stream pb.Control_ConnectServer) (*session, *zap.Logger, error) {
	ctx := stream.Context()
	id, err := s.authenticate(ctx)
	if err != nil {
		return nil, nil, err
	}
	s.log.Debug("stream opened; waiting for its Hello", zap.String("node", id.node), zap.String("remote", remote(ctx)))
	// The stream's context is the tap's (streamContext): cancelling it
	// ends the stream, so the handler needs no goroutine of its own to
	// receive while it waits for anything else.
	end, ok := ctx.Value(streamEndKey{}).(context.CancelCauseFunc)
	if !ok {
		return nil, nil, status.Error(codes.Internal, "stream not set up by the service's tap")
	}
	helloTimer := time.AfterFunc(helloTimeout, func() { endStream(ctx, end, errNoHello) })
	stopShutdown := context.AfterFunc(s.ctx, func() { endStream(ctx, end, errShutdown) })
	m, err := stream.Recv()
	switch {
	case !helloTimer.Stop():
		return nil, nil, errNoHello
	case !stopShutdown():
		return nil, nil, errShutdown
	case err != nil:
		return nil, nil, err
	}
	hello := m.GetHello()
	if hello == nil {
		return nil, nil, status.Error(codes.InvalidArgument, "the first message on a stream must be Hello")
	}
	log := s.log.With(zap.String("node", id.node), zap.String("remote", remote(ctx)))
	if hello.GetNode() != id.node {
		s.m.refused.WithLabelValues("wrong_node").Inc()
		log.Warn("stream refused: an agent spoke for another node than its certificate's", zap.String("claimed-node", hello.GetNode()))
		return nil, nil, status.Errorf(codes.PermissionDenied, "this certificate is for node %q; it cannot speak for node %q", id.node, hello.GetNode())
	}
	if err := invalid(wire.CheckHello(hello)); err != nil {
		s.m.refused.WithLabelValues("invalid").Inc()
		log.Warn("stream refused: Hello out of bounds", zap.Error(err))
		return nil, nil, err
	}
	mode := hello.GetDefaultMode()
	if mode == "" {
		mode = ruleset.ModeEnforce.String()
	}
	if mode != ruleset.ModeEnforce.String() && mode != ruleset.ModeMonitor.String() {
		return nil, nil, status.Errorf(codes.InvalidArgument, "hello: default mode %q: want enforce or monitor", mode)
	}
	if err := s.policy.PrepareNode(ctx, id.node, mode); err != nil {
		log.Error("no rule set for the node", zap.Error(err))
		return nil, nil, status.Error(codes.Internal, "the controller could not compile this node's rule set; see its log")
	}

	ss := newSession(s, id, stream, hello, end)
	ss.certExpiry.Store(id.cert.NotAfter.UnixNano())
	// Held until Welcome is sent: an update woken by the attach waits
	// for it (serve releases it).
	ss.mu.Lock()
	// Beyond the re-sync limit the version is not bumped: the agent's
	// stale-version ack of the push that follows closes the stream.
	if latest := s.nodes.Latest(id.node); latest != nil && hello.GetAppliedVersion() > latest.Num && s.allowResync(id.node, s.now()) {
		if _, err := s.policy.BumpPast(ctx, id.node, hello.GetAppliedVersion()); err != nil {
			log.Error("version conflict not resolved", zap.Error(err))
		}
	}
	if hello.GetAppliedVersion() > 0 {
		ss.base = s.policy.StoredVersion(ctx, id.node, hello.GetAppliedVersion(), hello.GetAppliedHash())
	}
	if err := s.attach(ss, hello); err != nil {
		ss.mu.Unlock()
		log.Warn("stream refused", zap.Error(err))
		return nil, nil, status.Error(codes.PermissionDenied, err.Error())
	}
	latest := s.nodes.Latest(id.node)
	if err := stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_Welcome{Welcome: &pb.Welcome{
		LatestVersion:       latest.Num,
		HeartbeatIntervalMs: uint32(s.cfg.Heartbeat / time.Millisecond),
		ControllerVersion:   s.cfg.Version,
	}}}); err != nil {
		ss.Close(err)
		ss.mu.Unlock()
		s.detach(ss, err)
		return nil, nil, err
	}
	log.Info("agent connected", zap.String("agent-version", hello.GetAgentVersion()),
		zap.Uint64("applied-version", hello.GetAppliedVersion()), zap.Uint64("policy-version", latest.Num),
		zap.Bool("delta-base-known", ss.base != nil))
	return ss, log, nil
}

// ended detaches a session that serve ended with err, and logs why.
func (s *Service) ended(ss *session, log *zap.Logger, err error) {
	switch code := status.Code(err); {
	case err == nil, code == codes.Canceled, code == codes.Aborted:
		// The agent went away, or reconnected on a new stream.
		s.detach(ss, nil)
		log.Info("agent disconnected", zap.String("reason", fmt.Sprint(err)))
	default:
		s.detach(ss, err)
		log.Warn("agent stream ended", zap.Error(err))
	}
}

// attach makes ss its node's stream, with what the agent said in Hello,
// unless the certificate the stream was opened with was revoked since it
// was authenticated (the agent may take up to helloTimeout to say Hello).
// The check and the attach hold certMu, as Revoke does while it revokes:
// a revocation either comes first (refused here, the node's record left
// as the revocation wrote it) or finds this stream attached and closes it.
func (s *Service) attach(ss *session, hello *pb.Hello) error {
	s.certMu.Lock()
	defer s.certMu.Unlock()
	if err := s.checkSerialNotRevoked(ss.node, ss.serial); err != nil {
		return err
	}
	now := s.now()
	replaced := s.nodes.Attach(ss.node, ss, func(n *nodes.Node) {
		n.Rec.LastContact = now
		n.Rec.AgentVersion, n.Rec.Kernel = hello.GetAgentVersion(), hello.GetKernel()
		n.Rec.Capabilities = slices.Clone(hello.GetCapabilities())
		n.Rec.AppliedVersion, n.Rec.AppliedHash = hello.GetAppliedVersion(), hello.GetAppliedHash()
		n.Rec.LastError = ""
	})
	if !replaced {
		s.m.connected.Inc()
	}
	return nil
}

// detach forgets ss if it is still its node's stream.
func (s *Service) detach(ss *session, reason error) {
	if s.nodes.Detach(ss.node, ss, reason) {
		s.m.connected.Dec()
	}
}
