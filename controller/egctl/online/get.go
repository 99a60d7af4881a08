package online

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var GetCmd = &cli.Command{
	Name:    "get",
	Summary: "list the controller's workloads, policies, alert rules, webhooks or agents",
	Usage:   "egctl get workloads|policies|alertrules|webhooks|agents [-o table|json|yaml] [flags]",
	Help: `
Lists one kind of resource from the controller: a table by default, a JSON
array of objects with camelCase keys with -o json, the stored YAML documents
with -o yaml (which egctl apply takes back). "egctl get agents" is "egctl
agents"; its -o yaml prints the objects of -o json as YAML.
` + cli.RemoteHelp + `

Examples:
  egctl get workloads
  egctl get policies -o yaml > backup.yaml
  egctl get agents -o json | jq '.[] | select(.connected | not)'
  egctl get agents -o yaml`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) != 1 {
				fmt.Fprintln(e.Stderr, "egctl get: name one kind: workloads, policies, alertrules, webhooks or agents")
				return cli.ExitBadInput
			}
			if args[0] == "agents" || args[0] == "agent" {
				if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
					return cli.ExitBadInput
				}
				return listAgents(e, remote, *output)
			}
			kind, err := apiclient.ParseKind(args[0])
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl get: %v\n", err)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			path := "/api/v1/" + apiclient.KindPaths[kind]
			switch *output {
			case "yaml":
				return remote.Call(e, http.MethodGet, path+"?output=yaml", nil, e.Stdout)
			case "json":
				return remote.Call(e, http.MethodGet, path, nil, e.Stdout)
			}
			var raw bytes.Buffer
			if code := remote.Call(e, http.MethodGet, path, nil, &raw); code != cli.ExitOK {
				return code
			}
			return printResources(e, kind, raw.Bytes())
		}
	},
}

// printResources prints a resource list as a table.
func printResources(e *cli.Env, kind string, data []byte) int {
	tw := cli.NewTable(e)
	var err error
	switch kind {
	case "Workload":
		var list []apiclient.WorkloadView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tNODE\tINTERFACE\tADDRESSES\tMODE\tSOURCE\tLABELS")
			for _, w := range list {
				addrs := make([]string, len(w.Addresses))
				for i, a := range w.Addresses {
					addrs[i] = a.String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.Name, w.Node, cli.Dash(w.Interface), strings.Join(addrs, ","),
					cli.Dash(w.Mode), cli.Dash(w.Source), labels(w.Labels))
			}
		}
	case "Policy":
		var list []apiclient.PolicyView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tMODE\tSOURCE\tRULES")
			for _, p := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, cli.Dash(p.Mode), cli.Dash(p.Source), strings.Join(p.Rules, ","))
			}
		}
	case "AlertRule":
		var list []apiclient.AlertRuleView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tSEVERITY\tSOURCE\tNOTIFY")
			for _, a := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, a.Severity, cli.Dash(a.Source), strings.Join(a.Notify, ","))
			}
		}
	case "Webhook":
		var list []apiclient.WebhookView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tFORMAT\tSOURCE\tURL")
			for _, w := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", w.Name, w.Format, cli.Dash(w.Source), w.URL)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(e.Stderr, "egctl get: controller answer: %v\n", err)
		return cli.ExitRemote
	}
	tw.Flush()
	return cli.ExitOK
}

func labels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return cli.Dash(strings.Join(parts, ","))
}
