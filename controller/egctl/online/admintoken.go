package online

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
)

var AdminTokenCmd = &cli.Command{
	Name:    "admin-token",
	Summary: "list, create or revoke the admin tokens that may call the controller's API",
	Usage:   "egctl admin-token list [-o table|json|yaml] | create [--name N] [--ttl D] [--write-config FILE] | revoke ID [flags]",
	Help: `
Admin tokens are the credentials of the controller's API: whoever holds one
can change every node's policy. The controller writes the first one to
<data-dir>/admin.conf; it never expires.

list shows every token: its id, name, state (active, expired, revoked),
when it was created, when it expires and when it was revoked, and which
token created it. The token this command uses is marked with *. Secrets
are never shown: the controller keeps only a hash of each.

create makes a new token, named --name, expiring after --ttl (default:
never). The token is printed alone on the last line of standard output,
this once; or, with --write-config FILE, written to a new admin.conf
(mode 0600) with this one's server address and CA (an existing file is
never overwritten); --write-config - prints that admin.conf instead.

revoke ID revokes a token at once: its next call gets 401, here and in any
controller sharing the store. You may revoke the token you are using; the
output says so. If no active token remains, restart the controller: it
writes a new admin.conf when the token in it is no longer valid.
` + cli.RemoteHelp + `

Examples:
  egctl admin-token list
  egctl admin-token create --name ci --ttl 720h --write-config ci.conf
  kubectl -n eastguard exec eastguard-controller-0 -- egctl --config /var/lib/eastguard-controller/admin.conf \
      admin-token create --name ops --ttl 720h --write-config - > ops.conf
  TOKEN=$(egctl admin-token create --name alice --ttl 8h | tail -n1)
  egctl admin-token revoke 3f2a9c0d1e4b`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		output := fs.String("o", "table", "list: output format: table, json or yaml")
		name := fs.String("name", "", "create: what the token is for (at most 64 characters)")
		ttl := fs.Duration("ttl", 0, "create: how long the token stays valid (default: never expires)")
		writeConfig := fs.String("write-config", "", "create: write the new token to this new admin config file (- for standard output) instead of printing it alone")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			switch {
			case len(args) == 1 && args[0] == "list":
				if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
					return cli.ExitBadInput
				}
				return listAdminTokens(e, remote, *output)
			case len(args) == 1 && args[0] == "create":
				if *ttl < 0 {
					fmt.Fprintf(e.Stderr, "egctl admin-token create: --ttl %s: want a positive duration, or none for a token that never expires\n", *ttl)
					return cli.ExitBadInput
				}
				return createAdminToken(e, remote, *name, *ttl, *writeConfig)
			case len(args) == 2 && args[0] == "revoke":
				return revokeAdminToken(e, remote, args[1])
			}
			fmt.Fprintln(e.Stderr, "egctl admin-token: want: egctl admin-token list | create [--name N] [--ttl D] | revoke ID")
			return cli.ExitBadInput
		}
	},
}

func listAdminTokens(e *cli.Env, remote *cli.RemoteFlags, output string) int {
	list, code := cli.GetList[apiclient.AdminToken](e, remote, "/api/v1/admin-tokens")
	if code != cli.ExitOK {
		return code
	}
	return cli.PrintListing(e, output, list, func() {
		tw := cli.NewTable(e)
		fmt.Fprintln(tw, "ID\tNAME\tSTATE\tCREATED\tEXPIRES\tREVOKED\tCREATED-BY")
		for _, t := range list {
			id := t.ID
			if t.Current {
				id += " *"
			}
			expires := "never"
			if !t.Expires.IsZero() {
				expires = localTime(t.Expires)
			}
			revoked := "-"
			if !t.Revoked.IsZero() {
				revoked = localTime(t.Revoked)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, cli.Dash(t.Name), t.State, localTime(t.Created), expires, revoked, cli.Dash(t.CreatedBy))
		}
		tw.Flush()
	})
}

func localTime(t time.Time) string { return t.Local().Format(time.DateTime) }

func createAdminToken(e *cli.Env, remote *cli.RemoteFlags, name string, ttl time.Duration, writeConfig string) int {
	cfg := remote.Resolve(e)
	if cfg == nil {
		return cli.ExitRemote
	}
	// The file is created before the token, so that a token is never made
	// whose secret nobody receives.
	var file *os.File
	if writeConfig != "" && writeConfig != "-" {
		var err error
		if file, err = os.OpenFile(writeConfig, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			if errors.Is(err, fs.ErrExist) {
				err = fmt.Errorf("%s exists; choose a new file (it is never overwritten)", writeConfig)
			}
			fmt.Fprintf(e.Stderr, "egctl admin-token create: --write-config: %v\n", err)
			return cli.ExitBadInput
		}
		defer file.Close()
	}
	req := apiclient.AdminTokenRequest{Name: name}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	var tok apiclient.CreatedAdminToken
	if code := remote.Call(e, http.MethodPost, "/api/v1/admin-tokens", req, &tok); code != cli.ExitOK {
		if file != nil {
			os.Remove(writeConfig)
		}
		return code
	}
	until := "never expires"
	if !tok.Expires.IsZero() {
		until = "valid until " + tok.Expires.Local().Format(time.RFC3339)
	}
	if writeConfig == "" {
		fmt.Fprintf(e.Stderr, "admin token %s (%s), %s; it is shown this once\n", tok.ID, cli.Dash(tok.Name), until)
		fmt.Fprintln(e.Stdout, tok.Token)
		return cli.ExitOK
	}
	data, err := (&apiclient.Config{Server: cfg.Server, Token: tok.Token, CACert: cfg.CACert}).Marshal()
	if err == nil && file == nil {
		fmt.Fprintf(e.Stderr, "admin token %s (%s), %s; its admin.conf follows, shown this once\n", tok.ID, cli.Dash(tok.Name), until)
		_, err = e.Stdout.Write(data)
	} else if err == nil {
		_, err = file.Write(data)
	}
	if err == nil && file != nil {
		err = file.Close()
	}
	if err != nil {
		fmt.Fprintf(e.Stderr, "egctl admin-token create: --write-config: %v; token %s is of no use: revoke it with egctl admin-token revoke %s\n",
			err, tok.ID, tok.ID)
		return cli.ExitBadInput
	}
	if file != nil {
		fmt.Fprintf(e.Stdout, "admin token %s (%s), %s, written to %s\n", tok.ID, cli.Dash(tok.Name), until, writeConfig)
	}
	return cli.ExitOK
}

func revokeAdminToken(e *cli.Env, remote *cli.RemoteFlags, id string) int {
	var res apiclient.RevokedAdminToken
	if code := remote.Call(e, http.MethodPost, "/api/v1/admin-tokens/"+url.PathEscape(id)+"/revoke", nil, &res); code != cli.ExitOK {
		return code
	}
	switch {
	case res.AlreadyRevoked:
		fmt.Fprintf(e.Stdout, "admin token %s (%s) was already revoked at %s\n", res.ID, cli.Dash(res.Name), localTime(res.Revoked))
	case res.Current:
		fmt.Fprintf(e.Stdout, "admin token %s (%s) revoked: it is the token this command used, so its next call is refused (401)\n",
			res.ID, cli.Dash(res.Name))
	default:
		fmt.Fprintf(e.Stdout, "admin token %s (%s) revoked\n", res.ID, cli.Dash(res.Name))
	}
	if res.ActiveTokens == 0 {
		fmt.Fprintln(e.Stdout, "no active admin token remains: restart the controller to get a new <data-dir>/admin.conf")
	}
	return cli.ExitOK
}
