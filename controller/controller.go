// Package controller wires Eastguard's central service together: the
// node table (nodes), the policy repository (policyrepo), the agent-facing
// gRPC service (agentapi), flow ingest and alerts (flowingest, alert,
// alert/webhook) and the admin REST API (restapi), over one store. New
// builds them for a store and a CA (tests use it in-process); Run is the
// whole process as eastguard-controller runs it: the store in the data
// directory, the CA, both listeners and admin.conf.
//
// It must not import anything under agent/.
package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/alert/webhook/egress"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/clientcert"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/policy"
)

// Config configures a Controller. Zero durations take the defaults.
type Config struct {
	Store store.Store
	CA    *pki.CA
	Log   *zap.Logger
	// Registry receives the controller's metrics; nil means none.
	Registry prometheus.Registerer
	// Version is the controller's version as agents see it.
	Version string
	// ServingHosts returns the DNS names and IP addresses the serving
	// certificate must cover, at every rotation.
	ServingHosts func() []string
	// NodeCertTTL is the lifetime of node certificates (default 1h);
	// ServerCertTTL that of the serving certificate (default 24h).
	NodeCertTTL   time.Duration
	ServerCertTTL time.Duration
	// Heartbeat is how often the controller sends heartbeats on each
	// stream.
	Heartbeat time.Duration
	// AgentLimits bound the agent-facing listener's connections, streams
	// and Joins; zero fields take agentapi's defaults.
	AgentLimits agentapi.Limits
	// ServiceAccounts, if set, checks the ServiceAccount tokens agents
	// join with (Kubernetes mode); nil refuses such joins.
	ServiceAccounts agentapi.ServiceAccountVerifier
	// ClientCerts, if set, lets the client certificates it accepts log
	// in to the dashboard (the HTTP listener must have TLS).
	ClientCerts *clientcert.Verifier
	// FlushInterval is how often agents' status is written to the store.
	FlushInterval time.Duration
	// Now is the clock (tests move it); nil is time.Now.
	Now func() time.Time
	// Settings are the flow and alert handling (retention, rates, the
	// built-in alert, alert limits); zero values take flowingest's
	// defaults.
	flowingest.Settings
	// DashboardURL is the base of the alert links sent to webhooks ("" for
	// none).
	DashboardURL string
	// WebhookGiveUp is how long a webhook delivery is retried;
	// WebhookTimeout bounds one attempt; WebhookMinBackoff is the first
	// retry's wait. Zero takes the webhook package's defaults.
	WebhookGiveUp     time.Duration
	WebhookTimeout    time.Duration
	WebhookMinBackoff time.Duration
	// WebhookRate is each webhook's attempts per second (0: the webhook
	// package's default; negative: unlimited), WebhookBurst how many it
	// may get at once; deliveries beyond wait in the outbox.
	WebhookRate  float64
	WebhookBurst int
	// WebhookAllowPrivate lets webhooks reach loopback and link-local
	// addresses (tests' and demos' receivers on 127.0.0.1); OwnAddrs are
	// the controller's listening addresses, which webhooks never reach.
	WebhookAllowPrivate bool
	OwnAddrs            func() []netip.AddrPort
	// SecretsDir is where webhooks' secretFrom.file names files ("":
	// file secrets are refused).
	SecretsDir string
	// Controllers lists the controllers sharing the store (GET
	// /api/v1/controllers); nil: this one alone, the leader.
	Controllers func(context.Context) ([]apiclient.Controller, error)
	// OnAck, if set, is called after each agent ack is recorded (tests
	// and benchmarks wait on it). It must not block.
	OnAck func(agentapi.Ack)
	// AuditLogFile, if set, receives every audit record as a JSON line
	// (--audit-log); AuditRetention is how long the store keeps them (0:
	// audit.DefaultRetention; negative: forever).
	AuditLogFile   string
	AuditRetention time.Duration
}

// DefaultFlushInterval is how often agents' status is written to the
// store by default.
const DefaultFlushInterval = time.Second

// Controller is the central service's parts, wired. Its fields are for
// callers that drive a part directly (egctl's API handlers go through
// API; tests apply policy through Policy).
type Controller struct {
	Nodes  *nodes.Table
	Policy *policyrepo.Repo
	Agents *agentapi.Service
	Flows  *flowingest.Ingester
	API    *restapi.API
	Audit  *audit.Recorder

	nodes    *nodes.Table
	webhooks *webhook.Deliverer
	flush    time.Duration
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   sync.Once
	// abandoned skips Close's final flush (Abandon).
	abandoned atomic.Bool
}

// New loads the controller's state from the store and reconciles it with
// the compiler: nodes whose compiled rule set changed (a new controller
// version) get a new version. Its background work (status flushes, flow
// ingest, webhook deliveries, certificate rotation) runs until Close.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.CA == nil {
		return nil, errors.New("controller: a store and a CA are required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.AlertRefresh <= 0 {
		cfg.AlertRefresh = alert.DefaultRefreshInterval
	}
	switch {
	case cfg.AuditRetention == 0:
		cfg.AuditRetention = audit.DefaultRetention
	case cfg.AuditRetention < 0:
		cfg.AuditRetention = 0 // the Recorder keeps every record
	}
	log := cfg.Log
	c := &Controller{flush: cfg.FlushInterval}
	var err error
	c.Audit, err = audit.NewRecorder(ctx, audit.Config{Store: cfg.Store, Log: log.Named("audit"), Now: cfg.Now, Registry: cfg.Registry,
		LogFile: cfg.AuditLogFile, Retention: cfg.AuditRetention})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Audit.Close()
		}
	}()
	c.nodes = nodes.New(cfg.Store, cfg.Now, log)
	c.Nodes = c.nodes
	c.Flows = flowingest.New(flowingest.Config{
		Store: cfg.Store, Log: log.Named("flows"), Now: cfg.Now, Registry: cfg.Registry,
		Settings: cfg.Settings,
	})
	secrets := egress.NewSecrets(cfg.SecretsDir)
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "eastguard_controller_webhook_deliveries_total",
		Help: "Webhook delivery attempts, by webhook and outcome (delivered, retry, gave_up).",
	}, []string{"webhook", "outcome"})
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(deliveries)
	}
	c.webhooks, err = webhook.New(webhook.Config{
		Store: cfg.Store,
		// Read at every attempt: deliveries already queued follow a
		// webhook whose URL or secret changed.
		Webhooks:    func(name string) (policy.Webhook, bool) { return c.Flows.Policy().Webhook(name) },
		Log:         log.Named("webhooks"),
		Timeout:     cfg.WebhookTimeout,
		MinBackoff:  cfg.WebhookMinBackoff,
		GiveUpAfter: cfg.WebhookGiveUp,
		Rate:        cfg.WebhookRate,
		Burst:       cfg.WebhookBurst,
		Destinations: egress.Destinations{
			AllowPrivate: cfg.WebhookAllowPrivate, Own: cfg.OwnAddrs,
		},
		Secrets: secrets,
		// Five re-post intervals: Alertmanager keeps a live alert through
		// a few missed re-posts (a controller restart) but resolves it by
		// itself once the controller is gone for good.
		AlertmanagerResolveAfter: 5 * cfg.AlertRefresh,
		DashboardURL:             cfg.DashboardURL,
		Now:                      cfg.Now,
		Outcome:                  func(hook, outcome string) { deliveries.WithLabelValues(hook, outcome).Inc() },
	})
	if err != nil {
		return nil, err
	}
	c.Flows.OnDeliveries(c.webhooks.Kick)
	dests := &egress.Destinations{AllowPrivate: cfg.WebhookAllowPrivate, Own: cfg.OwnAddrs}
	c.Policy = policyrepo.New(policyrepo.Config{
		Store: cfg.Store, Nodes: c.nodes, Log: log, Now: cfg.Now, OnChange: c.Flows.SetPolicy, Audit: c.Audit,
		Check: func(set *policy.Set, changed func(policy.Pos) bool) policy.Diagnostics {
			return egress.CheckPolicy(set, changed, secrets, dests, cfg.BuiltinAlerts.Notify)
		},
	})
	if err := c.nodes.Load(ctx); err != nil {
		return nil, err
	}
	if err := c.Policy.Load(ctx); err != nil {
		return nil, err
	}
	if err := checkNotify(c.Flows.Policy(), cfg.BuiltinAlerts.Notify, log); err != nil {
		return nil, err
	}
	c.Agents, err = agentapi.New(ctx, agentapi.Config{
		Store: cfg.Store, CA: cfg.CA, Log: log, Now: cfg.Now, Registry: cfg.Registry,
		Nodes: c.nodes, Policy: c.Policy, Flows: c.Flows,
		ServingHosts: cfg.ServingHosts, NodeCertTTL: cfg.NodeCertTTL, ServerCertTTL: cfg.ServerCertTTL,
		Heartbeat: cfg.Heartbeat, Version: cfg.Version, OnAck: cfg.OnAck, Limits: cfg.AgentLimits,
		ServiceAccounts: cfg.ServiceAccounts, Audit: c.Audit,
	})
	if err != nil {
		return nil, err
	}
	c.API = restapi.New(restapi.Config{
		Store: cfg.Store, Log: log, Now: cfg.Now, Nodes: c.nodes, Policy: c.Policy, Agents: c.Agents,
		ClientCerts: cfg.ClientCerts, Audit: c.Audit, Controllers: cfg.Controllers,
	})
	c.Flows.OnStored(c.API.PublishFlows)
	run, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Go(func() { c.nodes.Run(run, c.flush) })
	c.wg.Go(func() { c.Flows.Run(run) })
	c.wg.Go(func() { c.webhooks.Run(run) })
	c.wg.Go(func() { c.Audit.Run(run) })
	ok = true
	return c, nil
}

// ErrBadFlag is a flag the policy in force contradicts (eastguard-controller
// exits 2 with it).
var ErrBadFlag = errors.New("bad flag")

// checkNotify checks --alert-on-denied-notify against the policy in force:
// a name it does not define is refused when the policy defines webhooks
// (a typo: the built-in alerts would go nowhere), and only warned about
// when it defines none (a first start: webhooks come with a later apply,
// which must then define it, see egress.CheckPolicy).
func checkNotify(p *alert.Policy, notify []string, log *zap.Logger) error {
	defined := p.WebhookNames()
	for _, name := range notify {
		if _, ok := p.Webhook(name); ok {
			continue
		}
		if len(defined) > 0 {
			return fmt.Errorf("%w: --alert-on-denied-notify names webhook %q, which the policy does not define (it defines %s)",
				ErrBadFlag, name, strings.Join(defined, ", "))
		}
		log.Warn("--alert-on-denied-notify names a webhook the policy does not define yet; the next policy that defines webhooks must define it",
			zap.String("webhook", name))
	}
	return nil
}

// ServeGRPC serves the agent-facing gRPC service on lis until Close.
func (c *Controller) ServeGRPC(lis net.Listener) error { return c.Agents.Serve(lis) }

// Handler serves the HTTP listener: /healthz, /metrics (from metrics, if
// not nil), GET / and the admin API.
func (c *Controller) Handler(metrics prometheus.Gatherer) http.Handler { return c.API.Handler(metrics) }

// ServingCertificate returns the gRPC serving certificate in use.
func (c *Controller) ServingCertificate() *tls.Certificate { return c.Agents.ServingCertificate() }

// Abandon makes Close write nothing more to the store: the controller
// lost its leadership, and another may lead already.
func (c *Controller) Abandon() { c.abandoned.Store(true) }

// Close stops serving, closes every agent stream, waits for every
// goroutine and writes the agents' last status to the store. Agents keep
// enforcing and reconnect when a controller is back.
func (c *Controller) Close() error {
	var err error
	c.closed.Do(func() {
		c.Agents.Close()
		c.cancel()
		c.wg.Wait()
		if c.abandoned.Load() {
			return
		}
		if err = c.nodes.Flush(context.Background()); err != nil {
			err = fmt.Errorf("final flush of agent status: %w", err)
		}
		if aerr := c.Audit.Close(); aerr != nil {
			err = errors.Join(err, fmt.Errorf("audit log: %w", aerr))
		}
	})
	return err
}
