package restapi

import (
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
)

// Config configures an API.
type Config struct {
	Store  store.Store
	Log    *zap.Logger
	Now    func() time.Time
	Nodes  *nodes.Table
	Policy *policyrepo.Repo
	Agents *agentapi.Service
}

// API serves the admin REST API.
type API struct {
	st     store.Store
	log    *zap.Logger
	now    func() time.Time
	nodes  *nodes.Table
	policy *policyrepo.Repo
	agents *agentapi.Service
}

// New returns the API over the controller's parts.
func New(cfg Config) *API {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &API{st: cfg.Store, log: cfg.Log, now: cfg.Now, nodes: cfg.Nodes, policy: cfg.Policy, agents: cfg.Agents}
}
