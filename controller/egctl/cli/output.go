package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/policy"
)

// CheckOutput validates an -o value.
func CheckOutput(e *Env, o string, allowed ...string) bool {
	for _, a := range allowed {
		if o == a {
			return true
		}
	}
	fmt.Fprintf(e.Stderr, "egctl: -o %q: want one of %v\n", o, allowed)
	return false
}

func PrintJSON(e *Env, v any) int {
	enc := json.NewEncoder(e.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return ExitRemote
	}
	return ExitOK
}

// PrintYAML prints v as YAML: the objects -o json prints, with the same
// keys in the same order (v goes through its JSON encoding).
func PrintYAML(e *Env, v any) int {
	b, err := json.Marshal(v)
	var doc yaml.Node
	if err == nil {
		err = yaml.Unmarshal(b, &doc)
	}
	if err == nil {
		blockStyle(&doc)
		enc := yaml.NewEncoder(e.Stdout)
		enc.SetIndent(2)
		if err = enc.Encode(&doc); err == nil {
			err = enc.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return ExitRemote
	}
	return ExitOK
}

// blockStyle drops the flow style and quotes JSON's syntax gave the
// nodes: the encoder then writes block YAML, and quotes only the strings
// that would read as something else.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// PrintListing prints a listing as JSON, YAML or, through table, a table.
func PrintListing(e *Env, output string, v any, table func()) int {
	switch output {
	case "json":
		return PrintJSON(e, v)
	case "yaml":
		return PrintYAML(e, v)
	}
	table()
	return ExitOK
}

func NewTable(e *Env) *tabwriter.Writer {
	return tabwriter.NewWriter(e.Stdout, 0, 4, 2, ' ', 0)
}

// Dash stands for an empty value in a table.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// PrintDiagnostics prints policy diagnostics, one a line, on standard
// error.
func PrintDiagnostics(e *Env, diags policy.Diagnostics) {
	for _, d := range diags {
		fmt.Fprintln(e.Stderr, d)
	}
}

// Count says "1 policy", "2 policies", "0 rules".
func Count(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", what)
	}
	if stem, ok := strings.CutSuffix(what, "y"); ok {
		return fmt.Sprintf("%d %sies", n, stem)
	}
	return fmt.Sprintf("%d %ss", n, what)
}
