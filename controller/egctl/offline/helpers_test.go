package offline

import (
	"testing"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/egctltest"
)

// The names this package's tests use, bound to egctltest's helpers and
// this package's commands.

const (
	exitOK        = cli.ExitOK
	exitBadInput  = cli.ExitBadInput
	exitDenied    = cli.ExitDenied
	exitWouldDeny = cli.ExitWouldDeny

	envControllerAddress = EnvControllerAddress
)

var (
	shop      = egctltest.Shop
	writeFile = egctltest.WriteFile
	run       = egctltest.Commands(ValidateCmd, CompileCmd, ExplainCmd, ImportCmd)
)

func egctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return egctltest.Run(t, run, args...)
}
