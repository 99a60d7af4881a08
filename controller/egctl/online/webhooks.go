package online

import (
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var WebhooksCmd = &cli.Command{
	Name:    "webhooks",
	Summary: "list the webhooks with their deliveries: last delivered, last error, pending, given up",
	Usage:   "egctl webhooks [-o table|json] [flags]",
	Help: `
Lists every Webhook of the policy with the state of its deliveries: when a
delivery to it last succeeded, the error of the newest delivery that
failed (a receiver down, a refused destination, a secret the controller
cannot read), how many deliveries wait in the outbox and how many were
given up (--webhook-give-up). Counts are as far as the outbox keeps
finished deliveries (--webhook-outbox-max, --alert-retention).

-o json prints GET /api/v1/webhooks: a JSON array of objects with the
keys name, url, format, updated, pending and gaveUp, and lastDelivered
and lastError when set.
` + cli.RemoteHelp + `

Examples:
  egctl webhooks
  egctl webhooks -o json | jq '.[] | select(.pending > 0)'`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		output := fs.String("o", "table", "output format: table or json")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl webhooks: unexpected arguments %q\n", args)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json") {
				return cli.ExitBadInput
			}
			return listWebhooks(e, remote, *output)
		}
	},
}

func listWebhooks(e *cli.Env, remote *cli.RemoteFlags, output string) int {
	var hooks []apiclient.WebhookView
	if code := remote.Call(e, http.MethodGet, "/api/v1/webhooks", nil, &hooks); code != cli.ExitOK {
		return code
	}
	if output == "json" {
		if hooks == nil {
			hooks = []apiclient.WebhookView{}
		}
		return cli.PrintJSON(e, hooks)
	}
	tw := cli.NewTable(e)
	fmt.Fprintln(tw, "NAME\tFORMAT\tLAST-DELIVERED\tPENDING\tGAVE-UP\tLAST-ERROR")
	for _, h := range hooks {
		last := "-"
		if !h.LastDelivered.IsZero() {
			last = h.LastDelivered.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", h.Name, h.Format, last, h.Pending, h.GaveUp, cli.Dash(h.LastError))
	}
	tw.Flush()
	return cli.ExitOK
}
