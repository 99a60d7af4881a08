package main

import (
	"testing"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/egctltest"
)

// The names this package's tests use, bound to egctltest's helpers and
// main's run.

const (
	exitOK       = cli.ExitOK
	exitBadInput = cli.ExitBadInput
	exitRemote   = cli.ExitRemote

	envConfig = cli.EnvConfig
)

var (
	shop       = egctltest.Shop
	controller = egctltest.Controller
)

func egctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return egctltest.Run(t, run, args...)
}
