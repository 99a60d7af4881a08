package agentapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Config configures a Service. Zero durations take the defaults.
type Config struct {
	Store  store.Store
	CA     *pki.CA
	Log    *zap.Logger
	Now    func() time.Time
	Nodes  *nodes.Table
	Policy *policyrepo.Repo
	Flows  *flowingest.Ingester
	// Registry receives the service's metrics; nil means none.
	Registry prometheus.Registerer
	// ServingHosts returns the DNS names and IP addresses the serving
	// certificate must cover; it is called at every rotation, so addresses
	// that appear later are picked up.
	ServingHosts func() []string
	// NodeCertTTL is the lifetime of node certificates (default 1h);
	// ServerCertTTL that of the serving certificate (default 24h). Both
	// are renewed at two thirds of their life.
	NodeCertTTL   time.Duration
	ServerCertTTL time.Duration
	// Heartbeat is how often the controller sends heartbeats on each
	// stream; a stream silent for three of the agent's intervals is closed.
	Heartbeat time.Duration
	// Version is the controller's version as agents see it in Welcome.
	Version string
	// Limits bound connections, streams and Joins (zero fields: the
	// defaults).
	Limits Limits
	// ServiceAccounts, if set, checks the Kubernetes ServiceAccount tokens
	// agents join with (Kubernetes mode); without it such joins are
	// refused.
	ServiceAccounts ServiceAccountVerifier
	// OnAck, if set, is called after each ack is recorded (tests and
	// benchmarks wait on it). It must not block.
	OnAck func(Ack)
	// Audit counts the audit records of joins, renewals, revocations and
	// join tokens (nil: not counted; the store writes them anyway).
	Audit *audit.Recorder
}

// Ack is an agent's report on one version, as OnAck sees it.
type Ack struct {
	Node    string
	Version uint64
	Applied bool
	Error   string
}

// Defaults.
const (
	DefaultHeartbeat = 10 * time.Second
	// helloTimeout bounds the wait for an agent's first message.
	helloTimeout = 30 * time.Second
	// maxAgentMessage bounds what an agent may send (flow batches are the
	// largest).
	maxAgentMessage = 16 << 20
	// agentWindow is the HTTP/2 flow-control window an agent's stream and
	// connection get (fixed: see New): 1 MB per round trip is 20 MB/s of
	// flow records from one agent 50 ms away.
	agentWindow = 1 << 20
)

// Service is the agent-facing gRPC service. Create it with New, serve
// with Serve, stop with Close.
type Service struct {
	cfg    Config
	log    *zap.Logger
	st     store.Store
	ca     *pki.CA
	now    func() time.Time
	m      *metrics
	nodes  *nodes.Table
	policy *policyrepo.Repo
	flows  *flowingest.Ingester

	// certMu orders node certificate issuing (Join, Renew) and the
	// attaching of streams (Connect, after Hello) against revocations:
	// each checks revocation and acts under it, as Revoke revokes under
	// it. Lock order: certMu, then agenttls.State's lock (revocation checks and
	// updates), then the node table's lock.
	certMu sync.Mutex
	tls    *agenttls.State

	// What the listener lets peers hold and do (limits.go), and the
	// rate-limited log of refusals (refusals.go).
	conns *admission.ConnLimiter
	joins *admission.JoinLimiter
	// joinSlots holds a token per join doing its store work (joinSlot).
	joinSlots chan struct{}
	renews    *admission.RateLimiter[string] // per node
	drifts    *admission.RateLimiter[string] // drift reports, per node
	// lookupLimit bounds datapath lookups per node (lookup.go);
	// lookupSeq numbers them.
	lookupLimit *admission.RateLimiter[string]
	lookupSeq   atomic.Uint64
	refusals    *admission.RefusalLog
	// usedTokens are the ServiceAccount tokens' credential ids that
	// joined, until the tokens expire: each joins once.
	usedTokens *admission.Once

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	grpc   *grpc.Server
	closed sync.Once
}

// New makes the service: it loads the revoked certificates and issues a
// serving certificate.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.CA == nil || cfg.Nodes == nil || cfg.Policy == nil || cfg.Flows == nil {
		return nil, errors.New("agentapi: a store, a CA, the node table, the policy repository and the flow ingester are required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NodeCertTTL <= 0 {
		cfg.NodeCertTTL = pki.DefaultNodeCertTTL
	}
	if cfg.ServerCertTTL <= 0 {
		cfg.ServerCertTTL = pki.DefaultServerCertTTL
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.ServingHosts == nil {
		cfg.ServingHosts = func() []string { return []string{"localhost", "127.0.0.1", "::1"} }
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	s := &Service{
		cfg: cfg, log: cfg.Log, st: cfg.Store, ca: cfg.CA, now: cfg.Now, m: newMetrics(cfg.Registry),
		nodes: cfg.Nodes, policy: cfg.Policy, flows: cfg.Flows,
		conns:       admission.NewConnLimiter(cfg.Limits.MaxConns, cfg.Limits.MaxConnsPerSource),
		joins:       admission.NewJoinLimiter(cfg.Limits.JoinRate, cfg.Limits.JoinBurst),
		joinSlots:   make(chan struct{}, maxJoinsInProgress),
		renews:      admission.NewRateLimiter[string](renewRate, renewBurst),
		drifts:      admission.NewRateLimiter[string](driftRate, driftBurst),
		lookupLimit: admission.NewRateLimiter[string](lookupRate, lookupBurst),
		refusals:    admission.NewRefusalLog(cfg.Log, cfg.Now),
		usedTokens:  admission.NewOnce(maxUsedTokens),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var err error
	if s.tls, err = newTLS(ctx, s); err != nil {
		return nil, err
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(s.tls.ServerCredentials()),
		grpc.MaxRecvMsgSize(maxAgentMessage),
		// Join and Renew: a deadline before the request is read, and a
		// far smaller size limit than Connect's flow batches need.
		grpc.InTapHandle(s.tap),
		grpc.ChainUnaryInterceptor(s.limitRequestSize),
		grpc.MaxConcurrentStreams(uint32(cfg.Limits.MaxStreamsPerConn)),
		grpc.ConnectionTimeout(handshakeTimeout),
		// Dead peers are found by transport keepalives even while a send
		// to them is blocked.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second, MaxConnectionIdle: maxConnIdle}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Thousands of mostly idle streams: no per-connection read buffer
		// (the TLS connection already buffers a record; a bufio on top of it
		// held 8 KB per agent), and the write buffer taken from a pool for
		// a write and given back after it, not kept by every connection.
		grpc.ReadBufferSize(0),
		grpc.SharedWriteBuffer(true),
		// No HPACK dynamic table for what agents send: a connection
		// carries a call or two, whose headers are sent once each, and
		// the table's entries stayed held by every connection (0.9 KB).
		grpc.HeaderTableSize(0),
		// Fixed flow-control windows: with the default dynamic window,
		// every message an agent sent (an ack, a heartbeat) started a
		// BDP-estimation ping, answered by the agent: two more TLS
		// records and four more syscalls per message on the two ends,
		// a third of the controller's CPU when 10,000 agents ack a
		// change. The fixed window is also a bound on what an agent can
		// make the controller buffer (the estimator grows it to 16 MB).
		grpc.StaticStreamWindowSize(agentWindow),
		grpc.StaticConnWindowSize(agentWindow),
		grpc.WaitForHandlers(true),
	)
	pb.RegisterControlServer(s.grpc, &control{s: s})
	s.wg.Go(func() { s.tls.Rotate(s.ctx) })
	s.wg.Go(func() { s.refusals.Run(s.ctx) })
	return s, nil
}

// Serve serves the gRPC service on lis until Close, within the
// connection limits.
func (s *Service) Serve(lis net.Listener) error {
	err := s.grpc.Serve(admission.Listener(lis, s.conns, func(c net.Conn, why string) {
		s.m.refused.WithLabelValues("connection_limit").Inc()
		s.refusals.Warn(c.RemoteAddr(), "agent connection refused: limit reached", zap.Stringer("remote", c.RemoteAddr()),
			zap.String("reason", why))
	}))
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ServingCertificate returns the serving certificate in use.
func (s *Service) ServingCertificate() *tls.Certificate { return s.tls.Serving() }

// Close stops serving, closes every agent stream and waits for every
// goroutine. Agents keep enforcing and reconnect when a controller is
// back.
func (s *Service) Close() {
	s.closed.Do(func() {
		s.cancel()
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			s.grpc.Stop() // streams never end by themselves
			<-stopped
		}
		s.wg.Wait()
	})
}

// Revoke revokes every certificate issued to node, deletes its unused
// join tokens, closes its stream and remembers why. The node stays listed,
// disconnected, until an agent joins for it again with a token created
// after the revocation.
func (s *Service) Revoke(ctx context.Context, name string) (*apiclient.RevokeResult, error) {
	if !s.nodes.Known(name) {
		return nil, fmt.Errorf("node %q: %w", name, nodes.ErrUnknownNode)
	}
	// Under certMu: no certificate is issued, no stream attached and no
	// token created while the node is being revoked (see Join, Renew,
	// attach and CreateJoinToken).
	s.certMu.Lock()
	defer s.certMu.Unlock()
	at := s.now()
	ar := audit.Record(ctx, at, audit.NodeRevoke, audit.NodeObject(name),
		"every certificate of the node revoked and its unused join tokens deleted")
	certs, tokens, err := s.st.RevokeNode(ctx, name, at, ar)
	if err != nil {
		return nil, err
	}
	s.cfg.Audit.Written(ar)
	revoke(s.tls, certs)
	reason := fmt.Sprintf("certificate revoked at %s: the agent must join again with a new token", at.UTC().Format(time.RFC3339))
	s.nodes.Update(name, func(n *nodes.Node) {
		n.Rec.Revoked = at
		n.Rec.LastError = reason
		if n.Stream != nil {
			n.Stream.Close(&revokedError{serials: serials(certs), reason: reason})
		}
	})
	s.log.Warn("node revoked", zap.String("node", name), zap.Int("certificates", len(certs)), zap.Int("join-tokens-deleted", tokens))
	return &apiclient.RevokeResult{Node: name, RevokedCertificates: len(certs), DeletedJoinTokens: tokens}, nil
}

func serials(certs []store.Cert) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = c.Serial
	}
	return out
}

// MaxJoinTokenTTL bounds join tokens: they are meant for the next few
// minutes or hours, not as standing credentials.
const MaxJoinTokenTTL = 7 * 24 * time.Hour

// ErrInvalidArgument marks a request refused as malformed
// (errors.Is(err, ErrInvalidArgument)); the error's text is the reason
// alone.
var ErrInvalidArgument = errors.New("invalid argument")

type invalidArgument struct{ error }

func (invalidArgument) Is(target error) bool { return target == ErrInvalidArgument }

// CreateJoinToken makes a one-time token for node, valid for ttl.
func (s *Service) CreateJoinToken(ctx context.Context, node string, ttl time.Duration) (*apiclient.JoinToken, error) {
	if err := pki.ValidNodeName(node); err != nil {
		return nil, invalidArgument{err}
	}
	if ttl <= 0 || ttl > MaxJoinTokenTTL {
		return nil, invalidArgument{fmt.Errorf("ttl %s: want more than 0 and at most %s", ttl, MaxJoinTokenTTL)}
	}
	t, err := pki.NewJoinToken(s.ca.Fingerprint())
	if err != nil {
		return nil, err
	}
	// Under certMu, as Revoke: a token is either in the store when the
	// node is revoked (and deleted with the revocation) or created after
	// it (and admits the node again).
	s.certMu.Lock()
	now := s.now()
	rec := store.JoinToken{ID: t.ID, SecretHash: pki.HashSecret(t.Secret), Node: node, Created: now, Expires: now.Add(ttl)}
	ar := audit.Record(ctx, now, audit.TokenCreate, audit.JoinTokenObject(t.ID),
		fmt.Sprintf("for node %s, expires %s", node, rec.Expires.UTC().Format(time.RFC3339)))
	ar.After = audit.JoinTokenHash(rec)
	err = s.st.AddJoinToken(ctx, rec, ar)
	s.certMu.Unlock()
	if err != nil {
		return nil, err
	}
	s.cfg.Audit.Written(ar)
	s.log.Info("join token created", zap.String("node", node), zap.String("token-id", t.ID), zap.Time("expires", rec.Expires))
	return &apiclient.JoinToken{Token: t.String(), Node: node, Expires: rec.Expires.UTC()}, nil
}

// ErrUnknownToken is a join token id the controller does not keep.
var ErrUnknownToken = errors.New("no such join token")

// JoinTokens lists the join tokens the controller keeps: ids, nodes and
// times, never secrets or their hashes.
func (s *Service) JoinTokens(ctx context.Context) ([]apiclient.JoinTokenInfo, error) {
	toks, err := s.st.JoinTokens(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := make([]apiclient.JoinTokenInfo, 0, len(toks))
	for _, t := range toks {
		out = append(out, tokenInfo(t, now))
	}
	return out, nil
}

// DeleteJoinToken deletes a join token, used or not: an unused one can no
// longer admit its node.
func (s *Service) DeleteJoinToken(ctx context.Context, id string) (*apiclient.JoinTokenInfo, error) {
	// Read first for the record's hash (what it hashes never changes
	// while the token exists); the delete then finds it, or nothing.
	t, err := s.st.JoinToken(ctx, id)
	if err == nil {
		ar := audit.Record(ctx, s.now(), audit.TokenDelete, audit.JoinTokenObject(id), "for node "+t.Node)
		ar.Before = audit.JoinTokenHash(t)
		if t, err = s.st.DeleteJoinToken(ctx, id, ar); err == nil {
			s.cfg.Audit.Written(ar)
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("join token %q: %w", id, ErrUnknownToken)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("join token deleted", zap.String("node", t.Node), zap.String("token-id", t.ID))
	info := tokenInfo(t, s.now())
	return &info, nil
}

func tokenInfo(t store.JoinToken, now time.Time) apiclient.JoinTokenInfo {
	info := apiclient.JoinTokenInfo{ID: t.ID, Node: t.Node, Created: t.Created.UTC(), Expires: t.Expires.UTC(), State: apiclient.TokenPending}
	switch {
	case !t.Used.IsZero():
		used := t.Used.UTC()
		info.Used, info.State = &used, apiclient.TokenUsed
	case !now.Before(t.Expires):
		info.State = apiclient.TokenExpired
	}
	return info
}
