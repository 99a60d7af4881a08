package online

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var AgentsCmd = &cli.Command{
	Name:    "agents",
	Summary: "list the nodes' agents: connected, applied and latest version, agent version, certificate expiry, last error",
	Usage:   "egctl agents [-o table|json|yaml] [flags]",
	Help: `
Lists every node the controller knows (agents that joined, and nodes the
policy names that have no agent yet): whether its agent is connected, the
rule-set version it has applied to the kernel against the latest one, the
agent's own version (its --version, sent when it connects), when its
certificate expires, and the last error (an update it could not apply, a
lost stream, a revocation).

-o json prints a JSON array of objects with at least the keys node,
connected, appliedVersion, latestVersion, certExpiry and lastError, and
agentVersion once the agent has connected; -o yaml the same objects as YAML.
` + cli.RemoteHelp + `

Examples:
  egctl agents
  egctl agents -o json | jq '.[] | select(.appliedVersion != .latestVersion)'`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl agents: unexpected arguments %q (to revoke: egctl agent revoke NAME)\n", args)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			return listAgents(e, remote, *output)
		}
	},
}

func listAgents(e *cli.Env, remote *cli.RemoteFlags, output string) int {
	agents, code := cli.GetList[apiclient.AgentStatus](e, remote, "/api/v1/agents")
	if code != cli.ExitOK {
		return code
	}
	return cli.PrintListing(e, output, agents, func() {
		tw := cli.NewTable(e)
		fmt.Fprintln(tw, "NODE\tCONNECTED\tAPPLIED\tLATEST\tAGENT-VERSION\tCERT-EXPIRY\tLAST-ERROR")
		for _, a := range agents {
			expiry := "-"
			if a.CertExpiry != nil {
				expiry = a.CertExpiry.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%t\t%d\t%d\t%s\t%s\t%s\n", a.Node, a.Connected, a.AppliedVersion, a.LatestVersion, cli.Dash(a.AgentVersion), expiry, cli.Dash(a.LastError))
		}
		tw.Flush()
	})
}

var AgentCmd = &cli.Command{
	Name:    "agent",
	Summary: "act on one node's agent: revoke",
	Usage:   "egctl agent revoke NAME [flags]",
	Help: `
revoke NAME revokes every certificate issued to node NAME: the controller
refuses them from now on, at every handshake and every call, and closes the
node's stream. The agent keeps enforcing the rule set it has; it gets no
updates until it joins again with a new token (egctl token create): the
node's unused tokens are deleted, and only a token created after the
revocation admits it again. The node stays listed by egctl agents,
disconnected, its last error saying it was revoked.
` + cli.RemoteHelp + `

Examples:
  egctl agent revoke node-b`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) != 2 || args[0] != "revoke" {
				fmt.Fprintln(e.Stderr, "egctl agent: want: egctl agent revoke NAME")
				return cli.ExitBadInput
			}
			var res apiclient.RevokeResult
			if code := remote.Call(e, http.MethodPost, "/api/v1/agents/"+url.PathEscape(args[1])+"/revoke", nil, &res); code != cli.ExitOK {
				return code
			}
			fmt.Fprintf(e.Stdout, "node %s revoked (%s; %s deleted)\n", res.Node, cli.Count(res.RevokedCertificates, "certificate"),
				cli.Count(res.DeletedJoinTokens, "unused join token"))
			return cli.ExitOK
		}
	},
}
