package offline

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/eastguard/eastguard/controller/apiclient"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/ruleset"
)

var ExplainCmd = &cli.Command{
	Name:    "explain",
	Summary: "say whether a flow is allowed, at each end, and which rule decides",
	Usage:   "egctl explain --from WORKLOAD|ADDRESS --to WORKLOAD|ADDRESS --port PORT/PROTO (FILE|DIR... | --live [flags])",
	Help: `
Compiles the rule sets of the nodes of both ends and decides the new flow
exactly as their datapaths would: the source end (egress, on the source
workload's node) and the destination end (ingress, on the destination's
node). An address no workload owns has no end of its own. The flow is denied
if either end denies it, would-deny if either end only reports it (a monitor
mode is in force), and allowed otherwise. The deciding rule is printed as
policy/rule, or default-deny when no rule admits the flow.

--port takes PORT/tcp, PORT/udp, icmp (echo request), icmpv6, or
TYPE/icmp, TYPE:CODE/icmp (and icmpv6). A workload given by name uses its
first address of a family the other end also has (IPv4 first).

A node's agent always lets its own control traffic through, whatever the
policy: TCP to and from its controller's address and port, and DNS to its
resolvers when the controller is a name (the failsafe, rule
failsafe/control-plane). Only the agent knows those addresses; give
--controller-address (or $` + EnvControllerAddress + `) to decide flows of
host-mode workloads with the failsafe for a controller there. Without it, a
flow with a host-mode end is decided by the policy alone, with a note.

--live asks the controller instead of reading files: it explains the flow
with the policy in force and, for each managed end, compares the rule set
the controller last pushed to the end's node with what that node's agent
applies (its version and hash) and what its datapath's maps decide (the
agent looks the flow up in the kernel's maps, read-only), each node within
2 s. A "live:" line per end says in-sync, differs (with what, in plain
words: "node-b applies version 6, the controller pushed 7: version 7 not
applied: ..."), offline or unknown; -o json adds them as "live". The exit
status is the controller's verdict's, whatever the nodes do; a script that
must know whether they agree reads live.differs in -o json.
` + cli.RemoteHelp + `

Exit status: 0 allowed, 3 denied, 4 would-deny (allowed only because a
monitor mode is in force), 1 bad input; with --live also 2 (above).

Examples:
  egctl explain --from web-1 --to db-1 --port 5432/tcp policies/
  egctl explain --from 192.0.2.10 --to bastion --port 22/tcp policies/
  egctl explain --from web-1 --to 10.10.0.21 --port icmp -o json policies/
  egctl explain --from bastion --to 10.0.0.5 --port 7443/tcp --controller-address 10.0.0.5:7443 policies/
  egctl explain --live --from web-1 --to db-1 --port 5432/tcp`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		from := fs.String("from", "", "source: a workload name or an IP address (required)")
		to := fs.String("to", "", "destination: a workload name or an IP address (required)")
		port := fs.String("port", "", "destination port and protocol, e.g. 22/tcp, 53/udp, icmp (required)")
		output := fs.String("o", "text", "output format: text or json")
		ctlFlag := AddControllerAddressFlag(fs)
		live := fs.Bool("live", false, "ask the controller, and each end's agent, instead of reading files")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if *from == "" || *to == "" || *port == "" {
				fmt.Fprintln(e.Stderr, "egctl explain: --from, --to and --port are required (see egctl explain --help)")
				return cli.ExitBadInput
			}
			if *output != "text" && *output != "json" {
				fmt.Fprintf(e.Stderr, "egctl explain: -o %q: want text or json\n", *output)
				return cli.ExitBadInput
			}
			proto, p, err := compile.ParseService(*port)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl explain: --port %v\n", err)
				return cli.ExitBadInput
			}
			if *live {
				if len(args) > 0 || len(*ctlFlag) > 0 {
					fmt.Fprintln(e.Stderr, "egctl explain: --live takes no files and no --controller-address (the controller explains with the policy in force, each agent with its own failsafe)")
					return cli.ExitBadInput
				}
				return explainLive(e, remote, *from, *to, proto, p, *output)
			}
			ctl, err := controllerAddresses(*ctlFlag)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl explain: %v\n", err)
				return cli.ExitBadInput
			}
			set := loadPolicy(e, args)
			if set == nil {
				return cli.ExitBadInput
			}
			q := compile.Query{From: *from, To: *to, Protocol: proto, Port: p}
			nodes := q.Nodes(set)
			res, err := compile.Compile(set, compile.Options{Nodes: nodes, Validate: true})
			if err == nil {
				err = res.WithFailsafe(ctl)
			}
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl explain: %v\n", err)
				return cli.ExitBadInput
			}
			x, err := compile.Explain(set, res, q)
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl explain: %v\n", err)
				return cli.ExitBadInput
			}
			notes := failsafeNotes(x, len(ctl) > 0)
			if *output == "json" {
				err = printExplainJSON(e.Stdout, x, notes)
			} else {
				printExplain(e.Stdout, x, notes)
			}
			if err != nil {
				fmt.Fprintf(e.Stderr, "egctl explain: %v\n", err)
				return cli.ExitBadInput
			}
			return verdictExit(x.Verdict)
		}
	},
}

func verdictExit(v ruleset.Verdict) int {
	switch v {
	case ruleset.VerdictDenied:
		return cli.ExitDenied
	case ruleset.VerdictWouldDeny:
		return cli.ExitWouldDeny
	}
	return cli.ExitOK
}

// explainLive asks the controller (GET /api/v1/explain?live=1) and prints
// its answer as offline explain prints its own, plus a live line per end.
func explainLive(e *cli.Env, remote *cli.RemoteFlags, from, to string, proto ruleset.Protocol, port uint16, output string) int {
	q := url.Values{"src": {from}, "dst": {to}, "protocol": {proto.String()}, "live": {"1"}}
	if proto.IsICMP() {
		q.Set("port", fmt.Sprintf("%d:%d", port>>8, port&0xff))
	} else {
		q.Set("port", strconv.Itoa(int(port)))
	}
	var x apiclient.Explanation
	if code := remote.Call(e, http.MethodGet, "/api/v1/explain?"+q.Encode(), nil, &x); code != cli.ExitOK {
		return code
	}
	if output == "json" {
		b, err := json.MarshalIndent(x, "", "  ")
		if err != nil {
			fmt.Fprintf(e.Stderr, "egctl explain: render explanation: %v\n", err)
			return cli.ExitRemote
		}
		fmt.Fprintf(e.Stdout, "%s\n", b)
	} else {
		printLive(e.Stdout, &x)
	}
	return verdictExit(x.Verdict)
}

// printLive prints an explanation from the API as printExplain does,
// then a live line per managed end and its messages.
func printLive(w io.Writer, x *apiclient.Explanation) {
	printExplanation(w, x)
	if x.Live == nil {
		fmt.Fprintf(w, "%-12s the controller gave no live answer (a controller older than egctl?)\n", "live:")
		return
	}
	for _, l := range x.Live.Ends {
		var parts []string
		if c := l.Controller; c != nil {
			parts = append(parts, fmt.Sprintf("pushed version %d: %s by %s", c.Version, c.Verdict, c.Rule))
		}
		if a := l.Agent; a != nil {
			if a.Error == "" {
				parts = append(parts, fmt.Sprintf("applied version %d, datapath: %s by %s", a.AppliedVersion, a.Verdict, a.Rule))
			} else {
				parts = append(parts, fmt.Sprintf("applied version %d", a.AppliedVersion))
			}
		}
		detail := ""
		if len(parts) > 0 {
			detail = "; " + strings.Join(parts, "; ")
		}
		fmt.Fprintf(w, "%-12s %s %s on %s: %s%s\n", "live:", l.End, l.Workload, l.Node, l.Status, detail)
		for _, m := range l.Messages {
			fmt.Fprintf(w, "%-12s   %s\n", "", m)
		}
	}
}

func service(proto ruleset.Protocol, port uint16) string {
	if proto.IsICMP() {
		return fmt.Sprintf("%s type %d code %d", proto, port>>8, port&0xff)
	}
	return fmt.Sprintf("%s %d", proto, port)
}

// failsafeNotes says, for each host-mode end decided without the failsafe,
// that the agent's own control traffic passes whatever this verdict.
func failsafeNotes(x *compile.Explanation, withFailsafe bool) []string {
	if withFailsafe {
		return nil
	}
	var notes []string
	for _, p := range []compile.Party{x.From, x.To} {
		if p.Workload != nil && p.Workload.HostMode() {
			notes = append(notes, fmt.Sprintf("%s is in host mode: its agent lets its own control traffic through whatever the policy "+
				"(TCP to and from its controller, DNS to its resolvers: %s); give --controller-address to decide with it",
				p.Workload.Name, ruleset.FailsafeName))
		}
	}
	return notes
}

func printExplain(w io.Writer, x *compile.Explanation, notes []string) {
	out := apiclient.NewExplanation(x, notes)
	printExplanation(w, &out)
}

// printExplanation is explain's text: the flow, each end's decision, the
// verdict and the notes. An end without a decision is unmanaged.
func printExplanation(w io.Writer, x *apiclient.Explanation) {
	party := func(name, addr string, d *apiclient.ExplainEnd) string {
		if d == nil {
			return addr + " (unmanaged)"
		}
		return fmt.Sprintf("%s (%s on %s)", name, addr, d.Node)
	}
	fmt.Fprintf(w, "flow:        %s -> %s, %s\n", party(x.From, x.FromAddr, x.Source), party(x.To, x.ToAddr, x.Destination), service(x.Protocol, x.Port))
	end := func(label, addr string, d *apiclient.ExplainEnd) {
		if d == nil {
			fmt.Fprintf(w, "%-12s %s is not a managed workload: no end of its own\n", label, addr)
			return
		}
		mode := ""
		if d.Mode == ruleset.ModeMonitor {
			mode = " (monitor mode)"
		}
		fmt.Fprintf(w, "%-12s %s on %s%s, %s, peer identity %d %s: %s by %s\n",
			label, d.Workload, d.Node, mode, d.Direction, d.Peer, d.PeerName, d.Verdict, d.Rule)
	}
	end("source:", x.FromAddr, x.Source)
	end("destination:", x.ToAddr, x.Destination)
	fmt.Fprintf(w, "verdict:     %s (%s)\n", x.Verdict, x.DecidingRule)
	for _, n := range x.Notes {
		fmt.Fprintf(w, "note:        %s\n", n)
	}
}

func printExplainJSON(w io.Writer, x *compile.Explanation, notes []string) error {
	out := apiclient.NewExplanation(x, notes)
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("render explanation: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
