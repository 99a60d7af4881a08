// Command egctl is Eastguard's command-line client. This file is the
// subcommand dispatcher; each command lives in a file of its own and
// registers itself in commands, so later commands (apply, get, agents,
// flows, alerts, token) slot in the same way.
//
// Exit codes shared by every command: 0 success, 1 bad input (unreadable or
// invalid files, bad flags). explain adds 3 (denied) and 4 (would-deny);
// the online commands (apply, get, delete, agents, agent, flows, alerts,
// alert, token) add 2 (the controller could not be reached or refused the
// credential).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const (
	exitOK        = 0
	exitBadInput  = 1
	exitDenied    = 3
	exitWouldDeny = 4
)

// command is one egctl subcommand.
type command struct {
	name    string
	summary string
	// usage is the synopsis line; help the long text with examples.
	usage string
	help  string
	// flags declares the command's flags on fs and returns the function
	// that runs it with the positional arguments.
	flags func(fs *flag.FlagSet) func(env *env, args []string) int
}

// env is what a command may touch: its output streams.
type env struct {
	stdout, stderr io.Writer
}

var commands = []*command{validateCmd, compileCmd, explainCmd, applyCmd, getCmd, deleteCmd, agentsCmd, agentCmd, webhooksCmd, flowsCmd, alertsCmd, alertCmd, tokenCmd}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitBadInput
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
	}
	c := find(name)
	if c == nil {
		fmt.Fprintf(stderr, "egctl: unknown command %q\n\n", name)
		usage(stderr)
		return exitBadInput
	}
	return runCommand(c, e, args[1:])
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "egctl is the Eastguard command-line client.\n\nUsage:\n  egctl COMMAND [flags] [arguments]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"egctl COMMAND --help\" for a command's flags and examples.\n")
}

func runCommand(c *command, e *env, args []string) int {
	fs := flag.NewFlagSet("egctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	runFn := c.flags(fs)
	printUsage := func(w io.Writer) {
		fs.SetOutput(w)
		fmt.Fprintf(w, "Usage: %s\n\n%s\n", c.usage, strings.TrimSpace(c.help))
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	// flag would print the usage itself on --help and on errors; it is
	// printed once below instead: on stdout when asked for, on stderr
	// after an error.
	fs.Usage = func() {}
	positional, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(e.stdout)
		return exitOK
	}
	if err != nil {
		printUsage(e.stderr) // flag has printed the error
		return exitBadInput
	}
	return runFn(e, positional)
}

// parseInterleaved parses flags wherever they stand among the positional
// arguments ("egctl compile policies/ --node n1" works as well as flags
// first); "--" ends flag parsing.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}
