package online

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var AlertsCmd = &cli.Command{
	Name:    "alerts",
	Summary: "list alerts, most recently seen first: open, acknowledged, resolved",
	Usage:   "egctl alerts [--open | --state S[,S]] [--rule R] [--since T] [--limit N] [-o table|json|yaml] [flags]",
	Help: `
Lists the alerts the controller raised, most recently seen first. An alert
is a run of flows matching one alert rule between one source and one
destination on one port; COUNT is the connection attempts it covers. Its
state is open, acknowledged (someone has seen it: egctl alert ack ID) or
resolved (no repeat for a whole window of its rule).

--open lists the live alerts: open and acknowledged, as an acknowledged
alert still counts repeats until it is resolved. --state selects states
(a comma-separated list). --since selects alerts last seen at or after a
time: a duration back from now (10m, 2h, 7d) or an RFC 3339 time. --limit
caps the answer (default 100, at most 10000).

-o json prints a JSON array of objects with at least the keys id, rule,
severity, state, count, source, destination, port, protocol, firstSeen and
lastSeen.
` + cli.RemoteHelp + `

Examples:
  egctl alerts --open
  egctl alerts --state resolved --rule ssh-attempts --since 7d
  egctl alerts --open -o json | jq '.[] | select(.severity == "critical") | .id'`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		open := fs.Bool("open", false, "only live alerts: open and acknowledged (same as --state open,acknowledged)")
		fs.String("state", "", "only alerts in these states: open, acknowledged, resolved (comma-separated)")
		fs.String("rule", "", "only alerts of this alert rule")
		fs.String("since", "", "only alerts last seen from this time on: a duration back from now (10m, 2h, 7d) or an RFC 3339 time")
		fs.String("limit", "", "at most this many alerts (default 100, at most 10000)")
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl alerts: unexpected arguments %q (to acknowledge: egctl alert ack ID)\n", args)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			params, ok := queryFlags(e, fs, "alerts", func(v url.Values) error {
				if *open {
					if v.Has("state") {
						return fmt.Errorf("give --open or --state, not both")
					}
					v.Set("state", "open,acknowledged")
				}
				_, err := apiclient.ParseAlertFilter(v, time.Now())
				return err
			})
			if !ok {
				return cli.ExitBadInput
			}
			var raw bytes.Buffer
			if code := remote.Call(e, http.MethodGet, "/api/v1/alerts?"+params, nil, &raw); code != cli.ExitOK {
				return code
			}
			var list []apiclient.Alert
			if err := json.Unmarshal(raw.Bytes(), &list); err != nil {
				fmt.Fprintf(e.Stderr, "egctl alerts: controller answer: %v\n", err)
				return cli.ExitRemote
			}
			if *output != "table" {
				return printList(e, *output, len(list), raw.Bytes())
			}
			tw := cli.NewTable(e)
			fmt.Fprintln(tw, "ID\tSTATE\tSEVERITY\tRULE\tSOURCE\tDESTINATION\tPORT\tCOUNT\tFIRST-SEEN\tLAST-SEEN")
			for _, a := range list {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.ID, a.State, cli.Dash(a.Severity), a.Rule,
					cli.Dash(a.Source), cli.Dash(a.Destination), alertPorts(a), a.Count,
					a.FirstSeen.Local().Format(time.DateTime), a.LastSeen.Local().Format(time.DateTime))
			}
			tw.Flush()
			return cli.ExitOK
		}
	},
}

var AlertCmd = &cli.Command{
	Name:    "alert",
	Summary: "act on one alert: ack",
	Usage:   "egctl alert ack ID [flags]",
	Help: `
ack ID acknowledges an open alert: the security team has seen it. The
alert stays live (egctl alerts --open lists it, its count goes on) until a
whole window of its rule passes without a repeat; then it is resolved.
Acknowledging an acknowledged alert changes nothing; a resolved alert
cannot be acknowledged (exit 1), nor an ID that does not exist (exit 1).
` + cli.RemoteHelp + `

Examples:
  egctl alert ack 42
  egctl alerts --state open -o json | jq '.[].id' | xargs -n1 egctl alert ack`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) != 2 || args[0] != "ack" {
				fmt.Fprintln(e.Stderr, "egctl alert: want: egctl alert ack ID")
				return cli.ExitBadInput
			}
			id, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil || id < 1 {
				fmt.Fprintf(e.Stderr, "egctl alert ack: %q is not an alert id (a positive integer, the ID column of egctl alerts)\n", args[1])
				return cli.ExitBadInput
			}
			var a apiclient.Alert
			if code := remote.Call(e, http.MethodPost, "/api/v1/alerts/"+strconv.FormatInt(id, 10)+"/ack", nil, &a); code != cli.ExitOK {
				return code
			}
			fmt.Fprintf(e.Stdout, "alert %d %s", a.ID, a.State)
			if !a.AcknowledgedAt.IsZero() {
				fmt.Fprintf(e.Stdout, " at %s", a.AcknowledgedAt.Local().Format(time.DateTime))
			}
			fmt.Fprintf(e.Stdout, " (%s: %s -> %s %s)\n", a.Rule, cli.Dash(a.Source), cli.Dash(a.Destination), alertPorts(a))
			return cli.ExitOK
		}
	},
}

// portProto shows an alert's port and protocol: 22/TCP, or ICMP alone for
// protocols without ports.
func portProto(port uint16, proto string) string {
	switch {
	case port == 0:
		return cli.Dash(proto)
	case proto == "":
		return strconv.Itoa(int(port))
	}
	return strconv.Itoa(int(port)) + "/" + proto
}

// alertPorts is the alert's port and protocol, "22/TCP", with the number
// of other ports when it covers several: "1/TCP +1999".
func alertPorts(a apiclient.Alert) string {
	s := portProto(a.Port, a.Protocol)
	if a.PortCount > 1 {
		s += fmt.Sprintf(" +%d", a.PortCount-1)
	}
	return s
}
