package offline

import (
	"fmt"
	"slices"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/policy"
)

// loadPolicy reads and validates the policy files and directories, prints
// every diagnostic to stderr, and returns nil when the input is unusable
// (the caller exits with cli.ExitBadInput).
func loadPolicy(e *cli.Env, paths []string) *policy.Set {
	if len(paths) == 0 {
		fmt.Fprintln(e.Stderr, "egctl: no policy files or directories given")
		return nil
	}
	set, diags, err := policy.Load(paths...)
	if err != nil {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return nil
	}
	cli.PrintDiagnostics(e, diags)
	if set == nil {
		fmt.Fprintf(e.Stderr, "egctl: %s, nothing applied\n", cli.Count(len(diags.Errors()), "error"))
	}
	return set
}

// nodeNames lists the nodes the workloads of set name, sorted.
func nodeNames(set *policy.Set) []string {
	var names []string
	for _, w := range set.Workloads {
		if !slices.Contains(names, w.Node) {
			names = append(names, w.Node)
		}
	}
	slices.Sort(names)
	return names
}
