// Command egctl is Eastguard's command-line client. This file is the
// subcommand dispatcher; each command lives in a file of its own and
// registers itself in commands, so later commands (apply, get, agents,
// flows, alerts, token) slot in the same way.
//
// Exit codes shared by every command: 0 success, 1 bad input (unreadable or
// invalid files, bad flags). explain adds 3 (denied) and 4 (would-deny);
// the online commands (apply, get, delete, agents, agent, flows, alerts,
// alert, token, admin-token) add 2 (the controller could not be reached
// or refused the credential).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

const (
	exitOK        = 0
	exitBadInput  = 1
	exitDenied    = 3
	exitWouldDeny = 4
)

// version is set at build time (make build: -ldflags "-X
// main.version=$(git describe --tags --always --dirty)"), reported by
// --version.
var version = "dev"

var commands = []*command{validateCmd, compileCmd, explainCmd, applyCmd, getCmd, deleteCmd, agentsCmd, agentCmd, webhooksCmd, flowsCmd, alertsCmd, alertCmd, tokenCmd, adminTokenCmd}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitBadInput
	}
	switch args[0] {
	case "-h", "-help", "--help", "help", "-version", "--version", "version":
	default:
		var err error
		if e.globals, args, err = parseGlobals(args); err != nil {
			fmt.Fprintf(stderr, "egctl: %v\n\n", err)
			usage(stderr)
			return exitBadInput
		}
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && name == "help" {
			if c := find(args[1]); c != nil {
				return runCommand(c, e, []string{"--help"})
			}
		}
		usage(stdout)
		return exitOK
	case "-version", "--version", "version":
		fmt.Fprintf(stdout, "egctl %s\n", version)
		return exitOK
	}
	c := find(name)
	if c == nil {
		fmt.Fprintf(stderr, "egctl: unknown command %q\n\n", name)
		usage(stderr)
		return exitBadInput
	}
	return runCommand(c, e, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "egctl is the Eastguard command-line client.\n\nUsage:\n  egctl [global flags] COMMAND [flags] [arguments]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nGlobal flags, before or after the command (after it, they win); commands\nthat do not call the controller ignore them:\n")
	fs := flag.NewFlagSet("egctl", flag.ContinueOnError)
	addRemoteFlags(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nRun \"egctl COMMAND --help\" for a command's flags and examples, \"egctl --version\" for the version.\n")
}
