package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
)

var agentsCmd = &command{
	name:    "agents",
	summary: "list the nodes' agents: connected, applied and latest version, agent version, certificate expiry, last error",
	usage:   "egctl agents [-o table|json|yaml] [flags]",
	help: `
Lists every node the controller knows (agents that joined, and nodes the
policy names that have no agent yet): whether its agent is connected, the
rule-set version it has applied to the kernel against the latest one, the
agent's own version (its --version, sent when it connects), when its
certificate expires, and the last error (an update it could not apply, a
lost stream, a revocation).

-o json prints a JSON array of objects with at least the keys node,
connected, appliedVersion, latestVersion, certExpiry and lastError, and
agentVersion once the agent has connected; -o yaml the same objects as YAML.
` + remoteHelp + `

Examples:
  egctl agents
  egctl agents -o json | jq '.[] | select(.appliedVersion != .latestVersion)'`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := addRemoteFlags(fs)
		return func(e *env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.stderr, "egctl agents: unexpected arguments %q (to revoke: egctl agent revoke NAME)\n", args)
				return exitBadInput
			}
			if !checkOutput(e, *output, "table", "json", "yaml") {
				return exitBadInput
			}
			return listAgents(e, remote, *output)
		}
	},
}

func listAgents(e *env, remote *remoteFlags, output string) int {
	agents, code := getList[apiclient.AgentStatus](e, remote, "/api/v1/agents")
	if code != exitOK {
		return code
	}
	return printListing(e, output, agents, func() {
		tw := newTable(e)
		fmt.Fprintln(tw, "NODE\tCONNECTED\tAPPLIED\tLATEST\tAGENT-VERSION\tCERT-EXPIRY\tLAST-ERROR")
		for _, a := range agents {
			expiry := "-"
			if a.CertExpiry != nil {
				expiry = a.CertExpiry.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%t\t%d\t%d\t%s\t%s\t%s\n", a.Node, a.Connected, a.AppliedVersion, a.LatestVersion, dash(a.AgentVersion), expiry, dash(a.LastError))
		}
		tw.Flush()
	})
}

var agentCmd = &command{
	name:    "agent",
	summary: "act on one node's agent: revoke",
	usage:   "egctl agent revoke NAME [flags]",
	help: `
revoke NAME revokes every certificate issued to node NAME: the controller
refuses them from now on, at every handshake and every call, and closes the
node's stream. The agent keeps enforcing the rule set it has; it gets no
updates until it joins again with a new token (egctl token create): the
node's unused tokens are deleted, and only a token created after the
revocation admits it again. The node stays listed by egctl agents,
disconnected, its last error saying it was revoked.
` + remoteHelp + `

Examples:
  egctl agent revoke node-b`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		remote := addRemoteFlags(fs)
		return func(e *env, args []string) int {
			if len(args) != 2 || args[0] != "revoke" {
				fmt.Fprintln(e.stderr, "egctl agent: want: egctl agent revoke NAME")
				return exitBadInput
			}
			var res apiclient.RevokeResult
			if code := remote.call(e, http.MethodPost, "/api/v1/agents/"+url.PathEscape(args[1])+"/revoke", nil, &res); code != exitOK {
				return code
			}
			fmt.Fprintf(e.stdout, "node %s revoked (%s; %s deleted)\n", res.Node, count(res.RevokedCertificates, "certificate"),
				count(res.DeletedJoinTokens, "unused join token"))
			return exitOK
		}
	},
}
