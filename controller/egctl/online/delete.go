package online

import (
	"flag"
	"fmt"
	"net/http"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/policy"
)

var DeleteCmd = &cli.Command{
	Name:    "delete",
	Summary: "delete resources from the controller's policy, as one change",
	Usage:   "egctl delete KIND NAME... | egctl delete -f FILE|DIR [flags]",
	Help: `
Deletes the named resources of one kind (workloads, policies, alertrules,
webhooks), or every resource defined in the files given with -f. The
controller checks the policy that remains whole (an alert rule may not lose
its webhook) and refuses the change, deleting nothing, if it is invalid or
names a resource that does not exist. The changed nodes' new rule sets are
pushed to their agents.
` + cli.RemoteHelp + `

Examples:
  egctl delete policy shop
  egctl delete workloads web-1 web-2
  egctl delete -f policies/extra.yaml
  egctl delete --dry-run policy shop`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		var files cli.FileFlags
		fs.Var(&files, "f", "delete the resources defined in this file or directory (repeatable)")
		dryRun := fs.Bool("dry-run", false, "check only; change nothing")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			refs, ok := deleteRefs(e, files, args)
			if !ok {
				return cli.ExitBadInput
			}
			var res apiclient.ChangeResult
			if code := remote.Call(e, http.MethodPost, "/api/v1/delete", apiclient.DeleteRequest{Resources: refs, DryRun: *dryRun}, &res); code != cli.ExitOK {
				return code
			}
			printChange(e, &res)
			return cli.ExitOK
		}
	},
}

// deleteRefs turns "KIND NAME..." or -f files into resource references.
func deleteRefs(e *cli.Env, files, args []string) ([]apiclient.ResourceRef, bool) {
	var refs []apiclient.ResourceRef
	switch {
	case len(files) > 0 && len(args) > 0:
		fmt.Fprintln(e.Stderr, "egctl delete: give either KIND NAME... or -f, not both")
		return nil, false
	case len(files) > 0:
		inputs, err := cli.ReadInputs(files)
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl delete: %v\n", err)
			return nil, false
		}
		for _, in := range inputs {
			set, diags := policy.Parse(in.Name, []byte(in.Content))
			cli.PrintDiagnostics(e, diags.Errors())
			if diags.HasErrors() {
				fmt.Fprintf(e.Stderr, "egctl delete: %s, nothing deleted\n", cli.Count(len(diags.Errors()), "error"))
				return nil, false
			}
			refs = append(refs, apiclient.RefsOf(set)...)
		}
	case len(args) >= 2:
		kind, err := apiclient.ParseKind(args[0])
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl delete: %v\n", err)
			return nil, false
		}
		for _, name := range args[1:] {
			refs = append(refs, apiclient.ResourceRef{Kind: kind, Name: name})
		}
	default:
		fmt.Fprintln(e.Stderr, "egctl delete: give KIND NAME... or -f FILE|DIR")
		return nil, false
	}
	if len(refs) == 0 {
		fmt.Fprintln(e.Stderr, "egctl delete: the files define no resources")
		return nil, false
	}
	return refs, true
}
