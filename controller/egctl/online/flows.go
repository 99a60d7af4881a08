package online

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

var FlowsCmd = &cli.Command{
	Name:    "flows",
	Summary: "list recorded flows, newest first, filtered by verdict, port, workload, address, rule, node, time",
	Usage:   "egctl flows [--verdict V] [--port N] [--protocol P] [--workload W] [--addr IP] [--rule R] [--node N] [--since T] [--until T] [--limit N] [-o table|json|yaml] [flags]",
	Help: `
Lists the flow records the agents reported, newest first: a table by
default, with -o json a JSON array of flow records with the keys time,
node, direction, protocol, srcAddr, srcPort, srcWorkload, srcIdentity,
dstAddr, dstPort, dstWorkload, dstIdentity, verdict, rule, packets, bytes,
firstSeen, lastSeen (the same records as the agents' --flow-log).

Filters combine (all must match). --port is the destination port;
--workload and --addr match either end. --since and --until take a
duration back from now (10m, 2h, 7d) or an RFC 3339 time; --limit caps the
answer (default 100, at most 10000). In the table SOURCE and DESTINATION
are the workload, or the address of an end no workload has.
` + cli.RemoteHelp + `

Examples:
  egctl flows --verdict denied --since 10m
  egctl flows --port 22 --protocol TCP --workload db-1
  egctl flows --addr 10.0.0.7 --since 2025-06-01T08:00:00Z --until 2025-06-01T09:00:00Z
  egctl flows --verdict would-deny --limit 10000 -o json | jq -r '.[].rule' | sort | uniq -c`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		fs.String("verdict", "", "only flows with this verdict: allowed, denied or would-deny")
		fs.String("port", "", "only flows to this destination port (1-65535)")
		fs.String("protocol", "", "only flows of this protocol: TCP, UDP, ICMP, ICMPv6 or proto-N")
		fs.String("workload", "", "only flows from or to this workload")
		fs.String("addr", "", "only flows from or to this IP address")
		fs.String("rule", "", "only flows decided by this rule: POLICY/RULE or default-deny")
		fs.String("node", "", "only flows reported by this node")
		fs.String("since", "", "only flows from this time on: a duration back from now (10m, 2h, 7d) or an RFC 3339 time")
		fs.String("until", "", "only flows before this time: a duration back from now or an RFC 3339 time")
		fs.String("limit", "", "at most this many flows (default 100, at most 10000)")
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl flows: unexpected arguments %q (filters are flags: --workload %s)\n", args, args[0])
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			params, ok := queryFlags(e, fs, "flows", func(v url.Values) error {
				_, err := apiclient.ParseFlowFilter(v, time.Now())
				return err
			})
			if !ok {
				return cli.ExitBadInput
			}
			var raw bytes.Buffer
			if code := remote.Call(e, http.MethodGet, "/api/v1/flows?"+params, nil, &raw); code != cli.ExitOK {
				return code
			}
			var recs []flowrecord.Record
			if err := json.Unmarshal(raw.Bytes(), &recs); err != nil {
				fmt.Fprintf(e.Stderr, "egctl flows: controller answer: %v\n", err)
				return cli.ExitRemote
			}
			if *output != "table" {
				// The records alone, as documented (the API adds each
				// flow's id in the store, the dashboard's page cursor).
				b, err := json.MarshalIndent(recs, "", "  ")
				if err != nil {
					fmt.Fprintf(e.Stderr, "egctl flows: %v\n", err)
					return cli.ExitRemote
				}
				return printList(e, *output, len(recs), append(b, '\n'))
			}
			tw := cli.NewTable(e)
			fmt.Fprintln(tw, "TIME\tNODE\tDIR\tPROTO\tSOURCE\tDESTINATION\tPORT\tVERDICT\tRULE\tSTATE\tPACKETS\tSENT\tRECEIVED")
			for _, r := range recs {
				src := endpoint(r.SrcWorkload, r.SrcAddr)
				if r.SrcPort != 0 {
					if r.SrcWorkload == "" && r.SrcAddr.Is6() {
						src = "[" + src + "]"
					}
					src += ":" + strconv.Itoa(int(r.SrcPort))
				}
				port := "-"
				if r.DstPort != 0 {
					port = strconv.Itoa(int(r.DstPort))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Time.Local().Format(time.DateTime), r.Node,
					r.Direction, r.Protocol, src, endpoint(r.DstWorkload, r.DstAddr), port, r.Verdict, cli.Dash(r.Rule),
					cli.Dash(string(r.State)), r.Packets, byteSize(r.BytesSent), byteSize(r.BytesReceived))
			}
			tw.Flush()
			return cli.ExitOK
		}
	},
}

// byteSize shows a byte count for people: exact below 1 KiB, else in
// KiB, MiB, GiB or TiB with one decimal (SENT and RECEIVED are bytes from
// the source's point of view; -o json has the exact counts).
func byteSize(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + "B"
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + unit
}

// queryFlags turns the filter flags given on the command line (every
// string flag but the output and connection ones) into an API query,
// checked with the server's own parser so that a mistake is refused
// before any call, with the server's message. A flag given empty is sent
// as given and refused: it must not silently mean "any".
func queryFlags(e *cli.Env, fs *flag.FlagSet, cmd string, check func(url.Values) error) (string, bool) {
	v := url.Values{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "o", "config", "server", "token", "timeout", "open":
			return
		}
		v.Set(f.Name, f.Value.String())
	})
	if err := check(v); err != nil {
		var pes apiclient.ParamErrors
		if errors.As(err, &pes) {
			for _, pe := range pes {
				fmt.Fprintf(e.Stderr, "egctl %s: --%v\n", cmd, pe)
			}
		} else {
			fmt.Fprintf(e.Stderr, "egctl %s: %v\n", cmd, err)
		}
		return "", false
	}
	return v.Encode(), true
}

// endpoint names one end of a flow or alert: its workload, or its
// address when no workload has it.
func endpoint(workload string, addr netip.Addr) string {
	switch {
	case workload != "":
		return workload
	case addr.IsValid():
		return addr.String()
	}
	return "-"
}

// printList prints a listing's JSON answer as it came (-o json), an empty
// array (never null) when it has nothing, or the same objects as YAML.
func printList(e *cli.Env, output string, n int, raw []byte) int {
	if n == 0 {
		raw = []byte("[]\n")
	}
	if output == "yaml" {
		return cli.PrintYAML(e, json.RawMessage(raw))
	}
	if _, err := e.Stdout.Write(raw); err != nil {
		fmt.Fprintf(e.Stderr, "egctl: %v\n", err)
		return cli.ExitRemote
	}
	return cli.ExitOK
}
