package restapi

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/clientcert"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/restapi/flowstream"
	"github.com/eastguard/eastguard/controller/restapi/session"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// Config configures an API.
type Config struct {
	Store  store.Store
	Log    *zap.Logger
	Now    func() time.Time
	Nodes  *nodes.Table
	Policy *policyrepo.Repo
	Agents *agentapi.Service
	// Sessions configures the dashboard's login sessions (its Log and Now
	// default to the API's).
	Sessions session.Config
	// Stream configures the live flows' broker (its Log defaults to the
	// API's).
	Stream flowstream.Config
	// ClientCerts, if set, lets client certificates it accepts log in to
	// the dashboard (POST /api/v1/login/certificate) on a TLS listener;
	// nil: only admin tokens log in.
	ClientCerts *clientcert.Verifier
	// Audit counts the audit records the API writes and copies them to
	// the audit log; nil: a Recorder of the Store alone.
	Audit *audit.Recorder
	// Controllers lists the controllers sharing the store (high
	// availability, controller/leader); nil: this one alone, the leader.
	Controllers func(context.Context) ([]apiclient.Controller, error)
}

// API serves the admin REST API.
type API struct {
	st     store.Store
	log    *zap.Logger
	now    func() time.Time
	nodes  *nodes.Table
	policy *policyrepo.Repo
	agents *agentapi.Service

	sessions *session.Store
	certs    *clientcert.Verifier
	stream   *flowstream.Broker
	audit    *audit.Recorder

	controllers func(context.Context) ([]apiclient.Controller, error)
}

// New returns the API over the controller's parts.
func New(cfg Config) *API {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sessions.Log == nil {
		cfg.Sessions.Log = cfg.Log.Named("sessions")
	}
	if cfg.Sessions.Now == nil {
		cfg.Sessions.Now = cfg.Now
	}
	if cfg.Stream.Log == nil {
		cfg.Stream.Log = cfg.Log.Named("flowstream")
	}
	if cfg.Audit == nil {
		// Without a log file NewRecorder cannot fail.
		cfg.Audit, _ = audit.NewRecorder(context.Background(), audit.Config{Store: cfg.Store, Log: cfg.Log, Now: cfg.Now})
	}
	return &API{st: cfg.Store, log: cfg.Log, now: cfg.Now, nodes: cfg.Nodes, policy: cfg.Policy, agents: cfg.Agents,
		sessions: session.New(cfg.Sessions), certs: cfg.ClientCerts, stream: flowstream.New(cfg.Stream), audit: cfg.Audit,
		controllers: cfg.Controllers}
}

// PublishFlows hands newly stored flows to the live subscribers
// (GET /api/v1/flows/stream); the flow ingest calls it after each commit.
// It never blocks.
func (s *API) PublishFlows(recs []flowrecord.Record) { s.stream.Publish(recs) }
