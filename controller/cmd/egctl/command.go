package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
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

// env is what a command may touch: its output streams, and the global
// flags given before the command (name -> value).
type env struct {
	stdout, stderr io.Writer
	globals        map[string]string
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func runCommand(c *command, e *env, args []string) int {
	fs := flag.NewFlagSet("egctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	runFn := c.flags(fs)
	// Global flags given before the command are the defaults of the
	// command's own; commands without them (offline ones) ignore them.
	for name, value := range e.globals {
		if fs.Lookup(name) != nil {
			if err := fs.Set(name, value); err != nil {
				fmt.Fprintf(e.stderr, "egctl: --%s: %v\n", name, err)
				return exitBadInput
			}
		}
	}
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
