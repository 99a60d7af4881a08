package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
)

// loadPolicy reads and validates the policy files and directories, prints
// every diagnostic to stderr, and returns nil when the input is unusable
// (the caller exits with exitBadInput).
func loadPolicy(e *env, paths []string) *policy.Set {
	if len(paths) == 0 {
		fmt.Fprintln(e.stderr, "egctl: no policy files or directories given")
		return nil
	}
	set, diags, err := policy.Load(paths...)
	if err != nil {
		fmt.Fprintf(e.stderr, "egctl: %v\n", err)
		return nil
	}
	printDiagnostics(e, diags)
	if set == nil {
		fmt.Fprintf(e.stderr, "egctl: %s, nothing applied\n", count(len(diags.Errors()), "error"))
	}
	return set
}

func printDiagnostics(e *env, diags policy.Diagnostics) {
	for _, d := range diags {
		fmt.Fprintln(e.stderr, d)
	}
}

// count says "1 policy", "2 policies", "0 rules".
func count(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", what)
	}
	if stem, ok := strings.CutSuffix(what, "y"); ok {
		return fmt.Sprintf("%d %sies", n, stem)
	}
	return fmt.Sprintf("%d %ss", n, what)
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
