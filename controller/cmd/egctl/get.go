package main

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
)

var getCmd = &command{
	name:    "get",
	summary: "list the controller's workloads, policies, alert rules, webhooks or agents",
	usage:   "egctl get workloads|policies|alertrules|webhooks|agents [-o table|json|yaml] [flags]",
	help: `
Lists one kind of resource from the controller: a table by default, a JSON
array of objects with camelCase keys with -o json, the stored YAML documents
with -o yaml (which egctl apply takes back). "egctl get agents" is "egctl
agents"; its -o yaml prints the objects of -o json as YAML.
` + remoteHelp + `

Examples:
  egctl get workloads
  egctl get policies -o yaml > backup.yaml
  egctl get agents -o json | jq '.[] | select(.connected | not)'
  egctl get agents -o yaml`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := addRemoteFlags(fs)
		return func(e *env, args []string) int {
			if len(args) != 1 {
				fmt.Fprintln(e.stderr, "egctl get: name one kind: workloads, policies, alertrules, webhooks or agents")
				return exitBadInput
			}
			if args[0] == "agents" || args[0] == "agent" {
				if !checkOutput(e, *output, "table", "json", "yaml") {
					return exitBadInput
				}
				return listAgents(e, remote, *output)
			}
			kind, err := apiclient.ParseKind(args[0])
			if err != nil {
				fmt.Fprintf(e.stderr, "egctl get: %v\n", err)
				return exitBadInput
			}
			if !checkOutput(e, *output, "table", "json", "yaml") {
				return exitBadInput
			}
			path := "/api/v1/" + apiclient.KindPaths[kind]
			switch *output {
			case "yaml":
				return remote.call(e, http.MethodGet, path+"?output=yaml", nil, e.stdout)
			case "json":
				return remote.call(e, http.MethodGet, path, nil, e.stdout)
			}
			var raw bytes.Buffer
			if code := remote.call(e, http.MethodGet, path, nil, &raw); code != exitOK {
				return code
			}
			return printResources(e, kind, raw.Bytes())
		}
	},
}

// printResources prints a resource list as a table.
func printResources(e *env, kind string, data []byte) int {
	tw := newTable(e)
	var err error
	switch kind {
	case "Workload":
		var list []apiclient.WorkloadView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tNODE\tINTERFACE\tADDRESSES\tMODE\tLABELS")
			for _, w := range list {
				addrs := make([]string, len(w.Addresses))
				for i, a := range w.Addresses {
					addrs[i] = a.String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.Name, w.Node, dash(w.Interface), strings.Join(addrs, ","),
					dash(w.Mode), labels(w.Labels))
			}
		}
	case "Policy":
		var list []apiclient.PolicyView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tMODE\tRULES")
			for _, p := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, dash(p.Mode), strings.Join(p.Rules, ","))
			}
		}
	case "AlertRule":
		var list []apiclient.AlertRuleView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tSEVERITY\tNOTIFY")
			for _, a := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Name, a.Severity, strings.Join(a.Notify, ","))
			}
		}
	case "Webhook":
		var list []apiclient.WebhookView
		if err = json.Unmarshal(data, &list); err == nil {
			fmt.Fprintln(tw, "NAME\tFORMAT\tURL")
			for _, w := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", w.Name, w.Format, w.URL)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "egctl get: controller answer: %v\n", err)
		return exitRemote
	}
	tw.Flush()
	return exitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func labels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return dash(strings.Join(parts, ","))
}
