package offline

import (
	"flag"
	"fmt"
	"slices"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/ruleset"
)

var ValidateCmd = &cli.Command{
	Name:    "validate",
	Summary: "check policy files offline: errors, warnings, and whether every node's rule set fits",
	Usage:   "egctl validate [flags] FILE|DIR...",
	Help: `
Parses every resource (Workload, Policy, AlertRule, Webhook) in the files and
directories (every *.yaml and *.yml below a directory; - reads standard
input), checks them, and compiles every node's rule set to check that it fits
the datapath's maps. Problems are printed to standard error as

  file:line:col: path: message
  file:line:col: path: warning: message

--sizes prints each node's map entries against the datapath limits; a node
over a limit is an error whether or not it is given.

With --controller-address (or $` + EnvControllerAddress + `), it also warns, at
the workload, about every host-mode workload whose policy does not let its
node reach the controller there (TCP egress to that address and port): only
the agent's own control connection would pass, by its failsafe
(failsafe/control-plane); everything else on the node would be cut off from
the controller.

Exit status: 0 valid (warnings may have been printed), 1 invalid or
unreadable input.

Examples:
  egctl validate policies/
  egctl validate workloads.yaml shop.yaml
  egctl validate --sizes policies/
  egctl validate --controller-address 10.0.0.5:7443 policies/
  cat shop.yaml | egctl validate -`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		sizes := fs.Bool("sizes", false, "also print, per node, the datapath map entries its rule set needs against the limits")
		ctlFlag := AddControllerAddressFlag(fs)
		return func(e *cli.Env, args []string) int {
			ctl, err := controllerAddresses(*ctlFlag)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
				return cli.ExitBadInput
			}
			set := loadPolicy(e, args)
			if set == nil {
				return cli.ExitBadInput
			}
			res, err := compile.Compile(set, compile.Options{Validate: true})
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
				return cli.ExitBadInput
			}
			warnings := slices.Concat(res.Warnings, compile.ControlPlaneWarnings(set, res, ctl))
			warnings.Sort()
			cli.PrintDiagnostics(e, warnings)
			if *sizes {
				l := ruleset.DefaultLimits()
				for _, n := range res.Nodes {
					s := res.Sizes[n]
					fmt.Fprintf(e.Stdout, "%s: endpoints %d/%d, ipcache %d/%d, policy %d/%d, policy ranges %d/%d\n", n,
						s.Endpoints, l.Endpoints, s.IPCache, l.IPCache, s.Policy, l.Policy, s.PolicyRanges, l.PolicyRanges)
				}
			}
			rules := 0
			for _, p := range set.Policies {
				rules += len(p.Rules)
			}
			fmt.Fprintf(e.Stdout, "valid: %s, %s (%s), %s, %s; %s compiled\n",
				cli.Count(len(set.Workloads), "workload"), cli.Count(len(set.Policies), "policy"), cli.Count(rules, "rule"),
				cli.Count(len(set.AlertRules), "alert rule"), cli.Count(len(set.Webhooks), "webhook"), cli.Count(len(res.Nodes), "node"))
			return cli.ExitOK
		}
	},
}
