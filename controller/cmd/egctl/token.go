package main

import (
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
)

var tokenCmd = &command{
	name:    "token",
	summary: "create a one-time join token for a node's agent",
	usage:   "egctl token create --node NAME [--ttl DURATION] [flags]",
	help: `
create makes a join token for one node: single use, bound to the node
name, expiring after --ttl, and carrying the fingerprint of the
controller's CA, so that the agent can verify the controller the first time
it connects. The token is printed alone on the last line of standard output:

  eastguard-agent --node NAME --controller HOST:PORT --join-token TOKEN

The controller keeps only a hash of it.
` + remoteHelp + `

Examples:
  egctl token create --node node-a --ttl 1h
  TOKEN=$(egctl token create --node node-a --ttl 15m | tail -n1)`,
	flags: func(fs *flag.FlagSet) func(*env, []string) int {
		node := fs.String("node", "", "the node the token admits (required)")
		ttl := fs.Duration("ttl", time.Hour, "how long the token stays valid")
		remote := addRemoteFlags(fs)
		return func(e *env, args []string) int {
			if len(args) != 1 || args[0] != "create" {
				fmt.Fprintln(e.stderr, "egctl token: want: egctl token create --node NAME [--ttl DURATION]")
				return exitBadInput
			}
			if *node == "" {
				fmt.Fprintln(e.stderr, "egctl token create: --node is required")
				return exitBadInput
			}
			var tok apiclient.JoinToken
			if code := remote.call(e, http.MethodPost, "/api/v1/tokens", apiclient.TokenRequest{Node: *node, TTL: ttl.String()}, &tok); code != exitOK {
				return code
			}
			fmt.Fprintf(e.stderr, "join token for node %s, single use, valid until %s\n", tok.Node, tok.Expires.Local().Format(time.RFC3339))
			fmt.Fprintln(e.stdout, tok.Token)
			return exitOK
		}
	},
}
