package online

import (
	"flag"
	"fmt"
	"net/http"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/offline"
)

var ApplyCmd = &cli.Command{
	Name:    "apply",
	Summary: "apply policy files to the controller, as one change",
	Usage:   "egctl apply -f FILE|DIR [-f ...] [--dry-run] [flags]",
	Help: `
Sends the resources in the files and directories (every *.yaml and *.yml
below a directory; - reads standard input) to the controller, which adds
them to its policy or replaces the ones of the same kind and name, checks
the result whole, compiles every node's rule set and pushes the changed ones
to their agents. Invalid input is refused whole, with every problem as

  file:line:col: path: message

and the policy in force stays. --dry-run checks and compiles without
applying. Prints what was created, updated or unchanged, and each node's
new rule-set version.

Then it warns, at the workload, about every host-mode workload whose policy
does not let its node reach the controller (TCP to --controller-address):
only the agent's own control connection passes there, by the agent's
failsafe (failsafe/control-plane); everything else on the node is cut off
from the controller. It decides with the rule sets the controller now
holds for the changed nodes (with --dry-run, with the files alone). The
controller's address is --controller-address, else
$` + offline.EnvControllerAddress + `, else the API server's host on port ` + offline.DefaultGRPCPort + `.
` + cli.RemoteHelp + `

Examples:
  egctl apply -f policies/
  egctl apply -f workloads.yaml -f shop.yaml
  egctl apply --dry-run -f policies/
  egctl apply --controller-address ctl.example.com:7443 -f policies/
  EGCTL_CONFIG=/var/lib/eastguard-controller/admin.conf egctl apply -f shop.yaml`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		var files cli.FileFlags
		fs.Var(&files, "f", "policy file or directory (repeatable; - for standard input)")
		dryRun := fs.Bool("dry-run", false, "check and compile only; change nothing")
		ctlAddrs := offline.AddControllerAddressFlag(fs)
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			files = append(files, args...)
			inputs, err := cli.ReadInputs(files)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl apply: %v\n", err)
				return cli.ExitBadInput
			}
			var res apiclient.ChangeResult
			if code := remote.Call(e, http.MethodPost, "/api/v1/apply", apiclient.ApplyRequest{Files: inputs, DryRun: *dryRun}, &res); code != cli.ExitOK {
				return code
			}
			printChange(e, &res)
			offline.CheckControlPlane(e, remote, &res, inputs, *ctlAddrs)
			return cli.ExitOK
		}
	},
}

// printChange prints what an apply or delete did: resources on standard
// output, warnings on standard error.
func printChange(e *cli.Env, res *apiclient.ChangeResult) {
	suffix := ""
	if res.DryRun {
		suffix = " (dry run)"
	}
	for _, group := range []struct {
		names []string
		verb  string
	}{{res.Created, "created"}, {res.Updated, "updated"}, {res.Unchanged, "unchanged"}, {res.Deleted, "deleted"}} {
		for _, n := range group.names {
			fmt.Fprintf(e.Stdout, "%s %s%s\n", n, group.verb, suffix)
		}
	}
	for _, n := range res.Nodes {
		fmt.Fprintf(e.Stdout, "node %s: rule set version %d%s\n", n.Node, n.Version, suffix)
	}
	for _, w := range res.Warnings {
		fmt.Fprintln(e.Stderr, w)
	}
}
