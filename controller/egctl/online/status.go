package online

import (
	"flag"
	"fmt"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var StatusCmd = &cli.Command{
	Name:    "status",
	Summary: "list the controllers and which one leads (high availability on PostgreSQL)",
	Usage:   "egctl status [-o table|json|yaml] [flags]",
	Help: `
Lists the controllers sharing the store: the leader first, with its term
(it grows at each change of leader), then the standbys, and controllers
not seen for 10 s as gone; for each, the agents' gRPC address and the API
URL it advertises, its version, when it started and when it was last seen.
With SQLite there is one controller, the leader.

The answer comes from the leader: with several servers (--server or the
config's server, separated by commas) egctl tries them in turn.

-o json prints a JSON array of objects with the keys instance, role
(leader, standby or gone), grpc, api, version, started, lastSeen and, on
the leader, term; -o yaml the same objects as YAML.
` + cli.RemoteHelp + `

Examples:
  egctl status
  egctl status -o json | jq -r '.[] | select(.role == "leader") | .api'`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl status: unexpected arguments %q\n", args)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			list, code := cli.GetList[apiclient.Controller](e, remote, "/api/v1/controllers")
			if code != cli.ExitOK {
				return code
			}
			return cli.PrintListing(e, *output, list, func() {
				tw := cli.NewTable(e)
				fmt.Fprintln(tw, "INSTANCE\tROLE\tTERM\tGRPC\tAPI\tVERSION\tLAST-SEEN")
				for _, c := range list {
					term, seen := "-", "-"
					if c.Term > 0 {
						term = fmt.Sprint(c.Term)
					}
					if !c.LastSeen.IsZero() {
						seen = c.LastSeen.Local().Format(time.DateTime)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cli.Dash(c.Instance), c.Role, term, cli.Dash(c.GRPC), cli.Dash(c.API),
						cli.Dash(c.Version), seen)
				}
				tw.Flush()
			})
		}
	},
}
