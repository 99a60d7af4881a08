package main

import (
	"flag"
	"io"
	"text/tabwriter"

	"github.com/eastguard/eastguard/controller/egctl/cli"
)

// The commands declared in this package (flows, alerts, alert) are
// written against the names below, which adapt cli's: flows.go is edited
// on other branches and must merge, so it keeps the names it had before
// the commands moved to controller/egctl/...

const (
	exitOK       = cli.ExitOK
	exitBadInput = cli.ExitBadInput
	exitRemote   = cli.ExitRemote
)

const remoteHelp = cli.RemoteHelp

// command is an entry of the command table: a command declared here, or
// one of cli's (cmd set) with its name and summary copied for the table.
type command struct {
	name    string
	summary string
	usage   string
	help    string
	flags   func(fs *flag.FlagSet) func(env *env, args []string) int
	cmd     *cli.Command
}

// env is cli.Env with the stream names of this package.
type env struct {
	*cli.Env
	stdout, stderr io.Writer
}

func fromCLI(c *cli.Command) *command {
	return &command{name: c.Name, summary: c.Summary, usage: c.Usage, help: c.Help, cmd: c}
}

// cli returns the command as cli runs it.
func (c *command) cli() *cli.Command {
	if c.cmd != nil {
		return c.cmd
	}
	return &cli.Command{Name: c.name, Summary: c.summary, Usage: c.usage, Help: c.help,
		Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
			runFn := c.flags(fs)
			return func(e *cli.Env, args []string) int {
				return runFn(&env{Env: e, stdout: e.Stdout, stderr: e.Stderr}, args)
			}
		}}
}

type remoteFlags struct{ *cli.RemoteFlags }

func addRemoteFlags(fs *flag.FlagSet) *remoteFlags { return &remoteFlags{cli.AddRemoteFlags(fs)} }

func (f *remoteFlags) call(e *env, method, path string, body, out any) int {
	return f.Call(e.Env, method, path, body, out)
}

func checkOutput(e *env, o string, allowed ...string) bool {
	return cli.CheckOutput(e.Env, o, allowed...)
}

func newTable(e *env) *tabwriter.Writer { return cli.NewTable(e.Env) }

func dash(s string) string { return cli.Dash(s) }
