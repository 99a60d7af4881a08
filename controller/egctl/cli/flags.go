package cli

import (
	"errors"
	"flag"
	"io"
)

// parseGlobals parses the global flags (the controller connection's) that
// stand before the command, and returns those given and the rest of the
// arguments, the command first.
func parseGlobals(args []string) (map[string]string, []string, error) {
	fs := flag.NewFlagSet("egctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints the error, then the usage
	AddRemoteFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() == 0 {
		return nil, nil, errors.New("no command after the global flags")
	}
	globals := map[string]string{}
	fs.Visit(func(f *flag.Flag) { globals[f.Name] = f.Value.String() })
	return globals, fs.Args(), nil
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
