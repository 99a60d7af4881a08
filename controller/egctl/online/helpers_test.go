package online

import (
	"testing"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/egctltest"
	"github.com/eastguard/eastguard/controller/egctl/offline"
)

// The names this package's tests use, bound to egctltest's helpers and
// this package's commands.

const (
	exitOK       = cli.ExitOK
	exitBadInput = cli.ExitBadInput
	exitRemote   = cli.ExitRemote

	envConfig            = cli.EnvConfig
	envServer            = cli.EnvServer
	envToken             = cli.EnvToken
	envControllerAddress = offline.EnvControllerAddress
)

var (
	shop                = egctltest.Shop
	writeFile           = egctltest.WriteFile
	readFile            = egctltest.ReadFile
	controller          = egctltest.Controller
	controllerWithStore = egctltest.ControllerWithStore
	run                 = egctltest.Commands(ApplyCmd, GetCmd, DeleteCmd, AgentsCmd, AgentCmd, StatusCmd, WebhooksCmd, FlowsCmd, RecommendCmd, AlertsCmd, AlertCmd, TokenCmd, AdminTokenCmd, AuditCmd)
)

func egctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return egctltest.Run(t, run, args...)
}
