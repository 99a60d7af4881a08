package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/policy"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Version is the controller's version as agents see it in Welcome.
var Version = "dev"

// Config configures a Server. Zero durations take the defaults.
type Config struct {
	Store store.Store
	CA    *pki.CA
	Log   *zap.Logger
	// Registry receives the controller's metrics; nil means none.
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
	// FlushInterval is how often agents' status is written to the store.
	FlushInterval time.Duration
	// Now is the clock (tests move it); nil is time.Now.
	Now func() time.Time
	// Flow and alert handling; zero values take the defaults.
	FlowRetention  time.Duration
	FlowMaxBytes   int64
	AlertRetention time.Duration
	// AgentFlowRate is each agent's flow records per second (negative:
	// unlimited).
	AgentFlowRate float64
	// AlertRefresh is how often open alerts are re-posted to
	// Alertmanager webhooks.
	AlertRefresh time.Duration
	// BuiltinAlerts configures the built-in "any denied flow" rule.
	BuiltinAlerts alert.Builtin
	// DashboardURL is the base of the alert links sent to webhooks ("" for
	// none).
	DashboardURL string
	// WebhookGiveUp is how long a webhook delivery is retried;
	// WebhookTimeout bounds one attempt; WebhookMinBackoff is the first
	// retry's wait. Zero takes the webhook package's defaults.
	WebhookGiveUp     time.Duration
	WebhookTimeout    time.Duration
	WebhookMinBackoff time.Duration

	// OnAck, if set, is called after each ack is recorded (tests and
	// benchmarks wait on it). It must not block.
	OnAck func(Ack)
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
	DefaultHeartbeat     = 10 * time.Second
	DefaultFlushInterval = time.Second
	// helloTimeout bounds the wait for an agent's first message.
	helloTimeout = 30 * time.Second
	// Message size limits: rule sets are large, agent messages (flow
	// batches) moderate.
	maxAgentMessage  = 16 << 20
	maxRuleSetMesage = 512 << 20
)

// Server is the controller's serving side. Create it with New, serve with
// ServeGRPC and Handler, stop with Close.
type Server struct {
	cfg   Config
	log   *zap.Logger
	store store.Store
	ca    *pki.CA
	now   func() time.Time
	m     *metrics

	// applyMu serialises policy changes and version assignment; the
	// policy fields are only written with it held.
	applyMu   sync.Mutex
	polMu     sync.RWMutex // guards resources for readers
	resources map[store.ResourceKey]*resource

	mu    sync.Mutex
	nodes map[string]*node

	// certMu orders node certificate renewals against revocations.
	certMu   sync.Mutex
	tls      *tlsState
	admins   *adminTokens
	events   *ingester
	webhooks *webhook.Deliverer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	grpc   *grpc.Server
	closed sync.Once
}

// New loads the controller's state from the store and reconciles it with
// the compiler: nodes whose compiled rule set changed (a new controller
// version) get a new version.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.CA == nil {
		return nil, errors.New("server: a store and a CA are required")
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
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.FlowRetention <= 0 {
		cfg.FlowRetention = DefaultFlowRetention
	}
	if cfg.FlowMaxBytes <= 0 {
		cfg.FlowMaxBytes = DefaultFlowMaxBytes
	}
	if cfg.AlertRetention <= 0 {
		cfg.AlertRetention = DefaultAlertRetention
	}
	if cfg.AgentFlowRate == 0 {
		cfg.AgentFlowRate = DefaultAgentFlowRate
	}
	if cfg.AlertRefresh <= 0 {
		cfg.AlertRefresh = alert.DefaultRefreshInterval
	}
	if cfg.ServingHosts == nil {
		cfg.ServingHosts = func() []string { return []string{"localhost", "127.0.0.1", "::1"} }
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Log,
		store:     cfg.Store,
		ca:        cfg.CA,
		now:       cfg.Now,
		m:         newMetrics(cfg.Registry),
		resources: make(map[store.ResourceKey]*resource),
		nodes:     make(map[string]*node),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.events = newIngester(s)
	var err error
	s.webhooks, err = webhook.New(webhook.Config{
		Store: cfg.Store,
		// Read at every attempt: deliveries already queued follow a
		// webhook whose URL or secret changed.
		Webhooks:    func(name string) (policy.Webhook, bool) { return s.events.engine.Policy().Webhook(name) },
		Log:         s.log.Named("webhooks"),
		Timeout:     cfg.WebhookTimeout,
		MinBackoff:  cfg.WebhookMinBackoff,
		GiveUpAfter: cfg.WebhookGiveUp,
		// Five re-post intervals: Alertmanager keeps a live alert through
		// a few missed re-posts (a controller restart) but resolves it by
		// itself once the controller is gone for good.
		AlertmanagerResolveAfter: 5 * cfg.AlertRefresh,
		DashboardURL:             cfg.DashboardURL,
		Now:                      cfg.Now,
		Outcome:                  func(hook, outcome string) { s.m.deliveries.WithLabelValues(hook, outcome).Inc() },
	})
	if err != nil {
		return nil, err
	}
	s.events.kick = s.webhooks.Kick
	if s.admins, err = loadAdminTokens(ctx, s.store); err != nil {
		return nil, err
	}
	if s.tls, err = newTLSState(ctx, s); err != nil {
		return nil, err
	}
	if err := s.loadNodes(ctx); err != nil {
		return nil, err
	}
	if err := s.loadPolicy(ctx); err != nil {
		return nil, err
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(s.tls.serverConfig())),
		grpc.MaxRecvMsgSize(maxAgentMessage),
		// Dead peers are found by transport keepalives even while a send
		// to them is blocked.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Thousands of mostly idle streams: small per-connection buffers.
		grpc.ReadBufferSize(8<<10),
		grpc.WaitForHandlers(true),
	)
	pb.RegisterControlServer(s.grpc, &control{s: s})
	s.wg.Go(func() { s.tls.rotate(s.ctx) })
	s.wg.Go(func() { s.flushLoop(s.ctx) })
	s.wg.Go(func() { s.events.run(s.ctx) })
	s.wg.Go(func() { s.webhooks.Run(s.ctx) })
	return s, nil
}

// ServeGRPC serves the agent-facing gRPC service on lis until Close.
func (s *Server) ServeGRPC(lis net.Listener) error {
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ServingCertificate returns the serving certificate in use (for tests and
// status).
func (s *Server) ServingCertificate() *tls.Certificate { return s.tls.serving.Load() }

// Close stops serving, closes every agent stream, waits for every
// goroutine and writes the agents' last status to the store. Agents keep
// enforcing and reconnect when a controller is back.
func (s *Server) Close() error {
	var err error
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
		err = s.flush(context.Background())
		if err != nil {
			err = fmt.Errorf("final flush of agent status: %w", err)
		}
	})
	return err
}
