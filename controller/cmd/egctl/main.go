// Command egctl is Eastguard's command-line client. This package holds
// the command table and main; the commands live in packages by concern:
// controller/egctl/cli (the command type, dispatch and usage, flag
// parsing, output, the controller connection), controller/egctl/offline
// (validate, compile, explain, import: files only) and controller/egctl/online
// (the commands that call the controller).
//
// Exit codes shared by every command: 0 success, 1 bad input (unreadable or
// invalid files, bad flags). explain adds 3 (denied) and 4 (would-deny);
// the online commands (apply, get, delete, agents, agent, flows, recommend,
// alerts, alert, token, admin-token, audit) add 2 (the controller could not be
// reached or refused the credential); audit --verify adds 3 (the trail's hash
// chain is broken).
//
// It must not import agent/... .
package main

import (
	"io"
	"os"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/offline"
	"github.com/eastguard/eastguard/controller/egctl/online"
)

// version is set at build time (make build: -ldflags "-X
// main.version=$(git describe --tags --always --dirty)"), reported by
// --version.
var version = "dev"

// commands is the command table, in the order egctl --help lists it.
var commands = []*cli.Command{
	offline.ValidateCmd, offline.CompileCmd, offline.ExplainCmd, offline.ImportCmd,
	online.ApplyCmd, online.GetCmd, online.DeleteCmd,
	online.AgentsCmd, online.AgentCmd, online.StatusCmd, online.WebhooksCmd,
	online.FlowsCmd, online.RecommendCmd, online.AlertsCmd, online.AlertCmd,
	online.TokenCmd, online.AdminTokenCmd, online.AuditCmd,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Run(commands, version, args, stdout, stderr)
}
