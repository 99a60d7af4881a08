package online

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var RecommendCmd = &cli.Command{
	Name:    "recommend",
	Summary: "write a policy from the stored flows: one allow rule per observed edge between label groups, or --diff it with the policy in force",
	Usage:   "egctl recommend [--since 24h] [--until T] [--group-by app] [--workload W] [--include-denied] [--name N] [--diff] [-o yaml|json|table] [flags]",
	Help: `
Reads the flows the controller stored (not the agents) and prints a Policy,
YAML ready for egctl apply: one allow rule per observed edge between groups
of workloads, from the source's group to the destination's, with the
protocols and ports the traffic used, and above each rule a comment with
its evidence (flows, first and last seen). The intended workflow: run the
workloads in monitor mode (mode: monitor), let them work a day, recommend,
review, apply, then switch them to enforce.

- --group-by KEY (default app; role, k8s:namespace or any label key):
  workloads are grouped by that label, and each rule selects its groups
  with {KEY: VALUE}, so it also covers the group's workloads not seen. A
  workload without the label is selected by its full label set (which
  also selects workloads with those labels and more), one without labels
  by its addresses (cidr /32, /128); notes on standard error say so.
- Ports: each run of consecutive ports used is one range (port, endPort);
  other ports stay single. ICMP is allowed by protocol, every type (the
  store keeps no ICMP type). Other protocols are left out, with a note.
- Addresses no workload owns become cidr peers: a /24 (IPv4) or /64 (IPv6)
  when several observed addresses share it, else the address alone.
- Flows counted: allowed and would-deny (monitor mode), the traffic to keep.
  Denied flows (enforced drops) only with --include-denied.
- --workload W: only the flows from or to W.
- --name N: the Policy's name (default recommended).
- --since, --until: the flows' range (default the last 24 hours): a
  duration back from now (10m, 2h, 7d) or an RFC 3339 time.

The controller reads at most 20,000 aggregated edges (source, destination,
protocol, port, verdict), those with the most flows; beyond that the
answer is truncated, said on standard error: narrow --since or --workload.

--diff compares the traffic with the policy in force instead: the observed
edges it does not allow, decided as the datapath would with every workload
in enforce mode (they break when you switch to enforce), and the edges its
allow rules admit between workloads that no flow used (candidates to
remove; rules with cidr or world peers are not compared). A table by
default.

-o json prints GET /api/v1/recommend's answer: since, until, groupBy,
includeDenied, truncated, yaml, rules (name, from, to, ports, evidence),
notes, and with --diff diff (notAllowed, unused, truncated). -o yaml
prints the policy (without --diff) or the diff as YAML.
` + cli.RemoteHelp + `

Examples:
  egctl recommend --since 24h --group-by app > recommended.yaml
  egctl recommend --workload db-1 --group-by role
  egctl recommend --diff
  egctl recommend --diff -o json | jq '.diff.notAllowed'`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		since := fs.String("since", "", "flows from this time on: a duration back from now (default 24h) or an RFC 3339 time")
		until := fs.String("until", "", "flows before this time: a duration back from now or an RFC 3339 time (default now)")
		groupBy := fs.String("group-by", "", "the label key workloads are grouped by (default app)")
		workload := fs.String("workload", "", "only the flows from or to this workload")
		denied := fs.Bool("include-denied", false, "also recommend flows the datapath denied (enforced)")
		name := fs.String("name", "", "the recommended Policy's name (default recommended)")
		diff := fs.Bool("diff", false, "compare the traffic with the policy in force instead")
		output := fs.String("o", "", "output format: yaml or json; with --diff also table (the default then)")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl recommend: unexpected arguments %q\n", args)
				return cli.ExitBadInput
			}
			out := *output
			switch {
			case out == "" && *diff:
				out = "table"
			case out == "":
				out = "yaml"
			}
			allowed := []string{"yaml", "json"}
			if *diff {
				allowed = append(allowed, "table")
			}
			if !cli.CheckOutput(e, out, allowed...) {
				return cli.ExitBadInput
			}
			v := url.Values{}
			for param, val := range map[string]string{"since": *since, "until": *until, "groupBy": *groupBy,
				"workload": *workload, "name": *name} {
				if val != "" {
					v.Set(param, val)
				}
			}
			if *denied {
				v.Set("includeDenied", "true")
			}
			if *diff {
				v.Set("diff", "true")
			}
			if _, err := apiclient.ParseRecommendQuery(v, time.Now()); err != nil {
				flagName := map[string]string{"groupBy": "group-by", "includeDenied": "include-denied"}
				var pes apiclient.ParamErrors
				if !errors.As(err, &pes) {
					fmt.Fprintf(e.Stderr, "egctl recommend: %v\n", err)
				}
				for _, pe := range pes {
					fmt.Fprintf(e.Stderr, "egctl recommend: --%s: %s\n", cmp.Or(flagName[pe.Param], pe.Param), pe.Msg)
				}
				return cli.ExitBadInput
			}
			var rec apiclient.Recommendation
			if code := remote.Call(e, http.MethodGet, "/api/v1/recommend?"+v.Encode(), nil, &rec); code != cli.ExitOK {
				return code
			}
			return printRecommendation(e, &rec, out, *diff)
		}
	},
}

func printRecommendation(e *cli.Env, rec *apiclient.Recommendation, output string, diff bool) int {
	for _, n := range rec.Notes {
		fmt.Fprintf(e.Stderr, "egctl recommend: note: %s\n", n)
	}
	if rec.Truncated {
		fmt.Fprintln(e.Stderr, "egctl recommend: warning: more edges were stored than the controller reads; "+
			"the ones with the fewest flows are left out: narrow --since or --workload")
	}
	switch {
	case output == "json":
		return cli.PrintJSON(e, rec)
	case diff && rec.Diff == nil:
		fmt.Fprintln(e.Stderr, "egctl recommend: the controller's answer has no diff")
		return cli.ExitRemote
	case diff && output == "yaml":
		return cli.PrintYAML(e, rec.Diff)
	case diff:
		printDiff(e, rec.Diff)
		return cli.ExitOK
	case rec.YAML == "":
		fmt.Fprintf(e.Stderr, "egctl recommend: no flow to recommend from between %s and %s\n",
			rec.Since.Local().Format(time.DateTime), rec.Until.Local().Format(time.DateTime))
		return cli.ExitOK
	}
	fmt.Fprint(e.Stdout, rec.YAML)
	return cli.ExitOK
}

func printDiff(e *cli.Env, d *apiclient.RecommendDiff) {
	fmt.Fprintf(e.Stdout, "Observed, not allowed by the policy in force (break under enforce): %d\n", len(d.NotAllowed))
	if len(d.NotAllowed) > 0 {
		tw := cli.NewTable(e)
		fmt.Fprintln(tw, "SOURCE\tDESTINATION\tSERVICE\tFLOWS\tFIRST-SEEN\tLAST-SEEN\tVERDICT\tRULE")
		for _, x := range d.NotAllowed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", x.Src, x.Dst, service(x.Protocol, x.Port, 0), x.Flows,
				x.FirstSeen.Local().Format(time.DateTime), x.LastSeen.Local().Format(time.DateTime), x.Verdict, x.Rule)
		}
		tw.Flush()
	}
	fmt.Fprintf(e.Stdout, "\nAllowed, never used (candidates to remove): %d\n", len(d.Unused))
	if len(d.Unused) > 0 {
		tw := cli.NewTable(e)
		fmt.Fprintln(tw, "SOURCE\tDESTINATION\tSERVICE\tRULE")
		for _, x := range d.Unused {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\n", x.Src, x.Dst, service(x.Protocol, x.Port, x.EndPort), x.Policy, x.Rule)
		}
		tw.Flush()
	}
	if d.Truncated {
		fmt.Fprintln(e.Stderr, "egctl recommend: warning: the policy's edges were cut at their bound; unused ones may be missing")
	}
}

// service is "TCP/5432", "TCP/8000-8009", "ICMP" or "any".
func service(proto string, port, end uint16) string {
	switch {
	case port == 0:
		return proto
	case end > port:
		return fmt.Sprintf("%s/%d-%d", proto, port, end)
	}
	return fmt.Sprintf("%s/%d", proto, port)
}
