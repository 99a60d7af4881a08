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

var TokenCmd = &cli.Command{
	Name:    "token",
	Summary: "create, list and delete one-time join tokens for nodes' agents",
	Usage:   "egctl token create --node NAME [--ttl DURATION] | token list [-o table|json] | token delete ID [flags]",
	Help: `
create makes a join token for one node: single use, bound to the node
name, expiring after --ttl (at most 7 days), and carrying the fingerprint
of the controller's CA, so that the agent can verify the controller the
first time it connects. The token is printed alone on the last line of
standard output:

  eastguard-agent --node NAME --controller HOST:PORT --join-token TOKEN

The controller keeps only a hash of it.

list shows every token the controller keeps: its id (the second field of
the token), node, when it was created, when it expires, when it was used,
and its state (pending, used, expired). Secrets are never shown: they
cannot be, only their hashes are kept. -o json prints a JSON array of
objects with the keys id, node, created, expires, used (null until used)
and state.

delete ID deletes a token, so that it can no longer admit its node.
Revoking a node (egctl agent revoke) deletes its unused tokens itself, and
a node revoked can only join again with a token created after the
revocation.
` + cli.RemoteHelp + `

Examples:
  egctl token create --node node-a --ttl 1h
  TOKEN=$(egctl token create --node node-a --ttl 15m | tail -n1)
  egctl token list -o json | jq -r '.[] | select(.state == "pending") | .id'
  egctl token delete 3f2a9c01d7e4`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		node := fs.String("node", "", "create: the node the token admits (required)")
		ttl := fs.Duration("ttl", time.Hour, "create: how long the token stays valid")
		output := fs.String("o", "table", "list: output format, table or json")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			set := map[string]bool{}
			fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
			misplaced := func(sub string, flags ...string) bool {
				for _, f := range flags {
					if set[f] {
						fmt.Fprintf(e.Stderr, "egctl token %s: -%s is not a flag of %s\n", sub, f, sub)
						return true
					}
				}
				return false
			}
			switch {
			case len(args) == 1 && args[0] == "create":
				if misplaced("create", "o") {
					return cli.ExitBadInput
				}
				return createToken(e, remote, *node, *ttl)
			case len(args) == 1 && args[0] == "list":
				if misplaced("list", "node", "ttl") || !cli.CheckOutput(e, *output, "table", "json") {
					return cli.ExitBadInput
				}
				return listTokens(e, remote, *output)
			case len(args) == 2 && args[0] == "delete":
				if misplaced("delete", "node", "ttl", "o") {
					return cli.ExitBadInput
				}
				return deleteToken(e, remote, args[1])
			}
			fmt.Fprintln(e.Stderr, "egctl token: want: egctl token create --node NAME [--ttl DURATION] | egctl token list [-o json] | egctl token delete ID")
			return cli.ExitBadInput
		}
	},
}

func createToken(e *cli.Env, remote *cli.RemoteFlags, node string, ttl time.Duration) int {
	if node == "" {
		fmt.Fprintln(e.Stderr, "egctl token create: --node is required")
		return cli.ExitBadInput
	}
	var tok apiclient.JoinToken
	if code := remote.Call(e, http.MethodPost, "/api/v1/tokens", apiclient.TokenRequest{Node: node, TTL: ttl.String()}, &tok); code != cli.ExitOK {
		return code
	}
	fmt.Fprintf(e.Stderr, "join token for node %s, single use, valid until %s\n", tok.Node, tok.Expires.Local().Format(time.RFC3339))
	fmt.Fprintln(e.Stdout, tok.Token)
	return cli.ExitOK
}

func listTokens(e *cli.Env, remote *cli.RemoteFlags, output string) int {
	var toks []apiclient.JoinTokenInfo
	if code := remote.Call(e, http.MethodGet, "/api/v1/tokens", nil, &toks); code != cli.ExitOK {
		return code
	}
	if output == "json" {
		if toks == nil {
			toks = []apiclient.JoinTokenInfo{}
		}
		return cli.PrintJSON(e, toks)
	}
	tw := cli.NewTable(e)
	fmt.Fprintln(tw, "ID\tNODE\tSTATE\tCREATED\tEXPIRES\tUSED")
	for _, t := range toks {
		used := "-"
		if t.Used != nil {
			used = t.Used.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Node, t.State,
			t.Created.Local().Format(time.DateTime), t.Expires.Local().Format(time.DateTime), used)
	}
	tw.Flush()
	return cli.ExitOK
}

func deleteToken(e *cli.Env, remote *cli.RemoteFlags, id string) int {
	var tok apiclient.JoinTokenInfo
	if code := remote.Call(e, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(id), nil, &tok); code != cli.ExitOK {
		return code
	}
	fmt.Fprintf(e.Stdout, "join token %s (node %s, %s) deleted\n", tok.ID, tok.Node, tok.State)
	return cli.ExitOK
}
