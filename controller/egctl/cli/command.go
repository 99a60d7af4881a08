// Package cli is egctl's command machinery, shared by every command: the
// command type and its environment, the dispatcher and usage (Run), flag
// parsing, output helpers (tables, JSON and YAML, -o checks), and the
// plumbing of the online commands (where the controller is, the API
// client, listings).
//
// It owns no command. It must not import agent/... nor any controller
// package but controller/apiclient, nor egctl's command packages
// (controller/egctl/offline, controller/egctl/online): they import it.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes shared by every command: 0 success, 1 bad input (unreadable
// or invalid files, bad flags). explain adds 3 (denied) and 4
// (would-deny); the online commands add ExitRemote (remote.go).
const (
	ExitOK        = 0
	ExitBadInput  = 1
	ExitDenied    = 3
	ExitWouldDeny = 4
)

// Command is one egctl subcommand.
type Command struct {
	Name    string
	Summary string
	// Usage is the synopsis line; Help the long text with examples.
	Usage string
	Help  string
	// Flags declares the command's flags on fs and returns the function
	// that runs it with the positional arguments.
	Flags func(fs *flag.FlagSet) func(env *Env, args []string) int
}

// Env is what a command may touch: its output streams, and the global
// flags given before the command (name -> value).
type Env struct {
	Stdout, Stderr io.Writer
	globals        map[string]string
}

// Run runs egctl with args (without the program name) over the command
// table commands; version is what --version reports. It returns the exit
// status.
func Run(commands []*Command, version string, args []string, stdout, stderr io.Writer) int {
	e := &Env{Stdout: stdout, Stderr: stderr}
	if len(args) == 0 {
		usage(commands, stderr)
		return ExitBadInput
	}
	switch args[0] {
	case "-h", "-help", "--help", "help", "-version", "--version", "version":
	default:
		var err error
		if e.globals, args, err = parseGlobals(args); err != nil {
			fmt.Fprintf(stderr, "egctl: %v\n\n", err)
			usage(commands, stderr)
			return ExitBadInput
		}
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && name == "help" {
			if c := find(commands, args[1]); c != nil {
				return runCommand(c, e, []string{"--help"})
			}
		}
		usage(commands, stdout)
		return ExitOK
	case "-version", "--version", "version":
		fmt.Fprintf(stdout, "egctl %s\n", version)
		return ExitOK
	}
	c := find(commands, name)
	if c == nil {
		fmt.Fprintf(stderr, "egctl: unknown command %q\n\n", name)
		usage(commands, stderr)
		return ExitBadInput
	}
	return runCommand(c, e, args[1:])
}

func usage(commands []*Command, w io.Writer) {
	fmt.Fprintf(w, "egctl is the Eastguard command-line client.\n\nUsage:\n  egctl [global flags] COMMAND [flags] [arguments]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(w, "\nGlobal flags, before or after the command (after it, they win); commands\nthat do not call the controller ignore them:\n")
	fs := flag.NewFlagSet("egctl", flag.ContinueOnError)
	AddRemoteFlags(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nRun \"egctl COMMAND --help\" for a command's flags and examples, \"egctl --version\" for the version.\n")
}

func find(commands []*Command, name string) *Command {
	for _, c := range commands {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func runCommand(c *Command, e *Env, args []string) int {
	fs := flag.NewFlagSet("egctl "+c.Name, flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	runFn := c.Flags(fs)
	// Global flags given before the command are the defaults of the
	// command's own; commands without them (offline ones) ignore them.
	for name, value := range e.globals {
		if fs.Lookup(name) != nil {
			if err := fs.Set(name, value); err != nil {
				fmt.Fprintf(e.Stderr, "egctl: --%s: %v\n", name, err)
				return ExitBadInput
			}
		}
	}
	printUsage := func(w io.Writer) {
		fs.SetOutput(w)
		fmt.Fprintf(w, "Usage: %s\n\n%s\n", c.Usage, strings.TrimSpace(c.Help))
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
		printUsage(e.Stdout)
		return ExitOK
	}
	if err != nil {
		printUsage(e.Stderr) // flag has printed the error
		return ExitBadInput
	}
	return runFn(e, positional)
}
