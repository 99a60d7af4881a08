package offline

import (
	"flag"
	"fmt"
	"strings"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/ruleset"
)

var CompileCmd = &cli.Command{
	Name:    "compile",
	Summary: "print the rule set one node enforces, compiled offline",
	Usage:   "egctl compile --node NAME [-o yaml|json] FILE|DIR...",
	Help: `
Compiles the policy into the rule set of one node (the node named in the
spec.node of its workloads) and prints it: the hash (the version the
controller would push), entry counts, the datapath map entries it needs
against the limits, and the endpoints, ipcache, policy entries and rule
names. YAML output comments every line with the workload, identity and rule
it stands for; JSON output uses the rule set's own field names.

Exit status: 0 printed, 1 invalid input, unknown node, or a rule set that
does not fit the datapath.

Examples:
  egctl compile --node node-a policies/
  egctl compile --node node-a -o json policies/ | jq '.counts'
  egctl compile --node node-a --default-mode monitor policies/`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		node := fs.String("node", "", "the node whose rule set to print (required)")
		output := fs.String("o", "yaml", "output format: yaml or json")
		defaultMode := fs.String("default-mode", "enforce", "mode of workloads without one, as the node's agent --default-mode: enforce or monitor")
		return func(e *cli.Env, args []string) int {
			var mode ruleset.Mode
			if err := mode.UnmarshalText([]byte(*defaultMode)); err != nil {
				fmt.Fprintf(e.Stderr, "egctl compile: --default-mode: %v\n", err)
				return cli.ExitBadInput
			}
			if *output != "yaml" && *output != "json" {
				fmt.Fprintf(e.Stderr, "egctl compile: -o %q: want yaml or json\n", *output)
				return cli.ExitBadInput
			}
			set := loadPolicy(e, args)
			if set == nil {
				return cli.ExitBadInput
			}
			if *node == "" {
				fmt.Fprintf(e.Stderr, "egctl compile: --node is required; nodes in this policy: %s\n", strings.Join(nodeNames(set), ", "))
				return cli.ExitBadInput
			}
			res, err := compile.Compile(set, compile.Options{
				Nodes: []string{*node}, Validate: true,
				DefaultMode: func(string) ruleset.Mode { return mode },
			})
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl compile: %v\n", err)
				if strings.Contains(err.Error(), compile.ErrUnknownNode.Error()) {
					fmt.Fprintf(e.Stderr, "nodes in this policy: %s\n", strings.Join(nodeNames(set), ", "))
				}
				return cli.ExitBadInput
			}
			cli.PrintDiagnostics(e, res.Warnings)
			v, err := res.View(*node, ruleset.Limits{})
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl compile: %v\n", err)
				return cli.ExitBadInput
			}
			var out []byte
			if *output == "json" {
				out, err = v.JSON()
			} else {
				out, err = v.YAML(res.Identities)
			}
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl compile: %v\n", err)
				return cli.ExitBadInput
			}
			_, _ = e.Stdout.Write(out)
			return cli.ExitOK
		}
	},
}
