package online

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/store"
)

// ExitAuditBroken is egctl audit --verify's status when the chain is
// broken.
const ExitAuditBroken = 3

var AuditCmd = &cli.Command{
	Name:    "audit",
	Summary: "list the audit trail: who changed what, when and from where; --verify checks its hash chain",
	Usage:   "egctl audit [--since T] [--until T] [--actor A] [--action A] [--object O] [--limit N] [-o table|json|yaml] | --verify [--against FILE] [flags]",
	Help: `
Lists the controller's audit trail, newest first: every policy change
(policy.apply, policy.delete), join token (token.create, token.delete) and
admin token (admintoken.create, admintoken.revoke) created or removed,
node joined, renewed or revoked (node.join, node.renew, node.revoke),
alert acknowledged (alert.acknowledge) and dashboard login
(login.success, login.failure). Each record names its actor (an admin
token's id, a client certificate, a node, kubernetes, or the controller
itself), the object, the address the change came from, and the SHA-256
of the object before and after.

--since and --until bound the time: a duration back from now (10m, 2h,
7d) or an RFC 3339 time. --actor selects an actor by name exactly (the
token id egctl admin-token list shows, a node name, kubernetes).
--action selects one action, or a family when it ends in a dot
(policy.); --object one object, or a family when it ends in a slash
(Policy/). --limit caps the answer (default 100, at most 10000).

-o json prints a JSON array of objects with the keys id, time, actorKind,
actor, action, object, before, after, source, detail, prev and hash.

--verify reads the whole trail and checks its hash chain: each record's
hash covers its content and the previous record's hash, so a record
changed, inserted or deleted in the database shows. It prints how many
records it checked and exits 0, or names the first break and exits 3.
Records pruned by --audit-retention go oldest first and break nothing.

Whoever can write the database can rewrite the whole chain, though.
--against FILE also compares the trail with a copy kept out of their
reach: the controller's --audit-log file (or a copy shipped off the
host). A record whose hash differs from the file's, or records the file
holds beyond the store's newest (the newest records deleted, or the
store restored from an older backup), break the check too; records the
file holds from before the store's oldest were pruned by retention.
` + cli.RemoteHelp + `

Examples:
  egctl audit --since 24h
  egctl audit --object Policy/shop -o json
  egctl audit --action node. --since 7d
  egctl audit --verify
  egctl audit --verify --against /var/log/eastguard/audit.jsonl`,
	Flags: func(fs *flag.FlagSet) func(*cli.Env, []string) int {
		fs.String("since", "", "only records from this time on: a duration back from now (10m, 2h, 7d) or an RFC 3339 time")
		fs.String("until", "", "only records before this time: a duration back from now or an RFC 3339 time")
		fs.String("actor", "", "only records of this actor: an admin token's id, a node name, kubernetes")
		fs.String("action", "", "only this action (policy.apply), or the actions beginning so when it ends in a dot (policy.)")
		fs.String("object", "", "only this object (Policy/shop), or the objects beginning so when it ends in a slash (Policy/)")
		fs.String("limit", "", "at most this many records (default 100, at most 10000)")
		verify := fs.Bool("verify", false, "check the whole trail's hash chain instead of listing it")
		against := fs.String("against", "", "with --verify: also compare the trail with this copy of it (an --audit-log file)")
		output := fs.String("o", "table", "output format: table, json or yaml")
		remote := cli.AddRemoteFlags(fs)
		return func(e *cli.Env, args []string) int {
			if len(args) > 0 {
				fmt.Fprintf(e.Stderr, "egctl audit: unexpected arguments %q\n", args)
				return cli.ExitBadInput
			}
			if !cli.CheckOutput(e, *output, "table", "json", "yaml") {
				return cli.ExitBadInput
			}
			params, ok := queryFlags(e, fs, "audit", func(v url.Values) error {
				v.Del("verify")
				v.Del("against")
				if *against != "" && !*verify {
					return errors.New("--against goes with --verify")
				}
				if *verify && len(v) > 0 {
					return errors.New("--verify checks the whole trail: give no filter with it")
				}
				_, err := apiclient.ParseAuditFilter(v, time.Now())
				return err
			})
			if !ok {
				return cli.ExitBadInput
			}
			if *verify {
				var copyOf map[uint64]string
				if *against != "" {
					var err error
					if copyOf, err = readAuditCopy(*against); err != nil {
						fmt.Fprintf(e.Stderr, "egctl audit: --against: %v\n", err)
						return cli.ExitBadInput
					}
				}
				return verifyAudit(e, remote, *against, copyOf)
			}
			var list apiclient.AuditList
			if code := remote.Call(e, http.MethodGet, "/api/v1/audit?"+params, nil, &list); code != cli.ExitOK {
				return code
			}
			if *output != "table" {
				raw, err := json.MarshalIndent(list.Records, "", "  ")
				if err != nil {
					fmt.Fprintf(e.Stderr, "egctl audit: %v\n", err)
					return cli.ExitRemote
				}
				return printList(e, *output, len(list.Records), append(raw, '\n'))
			}
			tw := cli.NewTable(e)
			fmt.Fprintln(tw, "ID\tTIME\tACTOR\tACTION\tOBJECT\tSOURCE\tDETAIL")
			for _, r := range list.Records {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Time.Local().Format(time.DateTime), r.ActorKind+":"+cli.Dash(r.Actor),
					r.Action, cli.Dash(r.Object), cli.Dash(r.Source), cli.Dash(r.Detail))
			}
			tw.Flush()
			if list.Next != "" {
				fmt.Fprintln(e.Stderr, "(more records: narrow the query or raise --limit)")
			}
			return cli.ExitOK
		}
	},
}

// readAuditCopy reads a copy of the trail (JSON lines, as --audit-log
// writes them): each record's hash by id, the last line of an id
// winning. A line that does not parse (one cut short by a crash) is
// skipped; a file with no record at all is refused.
func readAuditCopy(path string) (map[uint64]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[uint64]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r apiclient.AuditRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.ID > 0 && r.Hash != "" {
			out[r.ID] = r.Hash
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no audit record", path)
	}
	return out, nil
}

// verifyAudit reads the whole trail oldest first, page by page, and
// checks each page's chain on the one before, and each record against
// copyOf (ids to hashes; nil: no copy).
func verifyAudit(e *cli.Env, remote *cli.RemoteFlags, copyPath string, copyOf map[uint64]string) int {
	var prev *store.AuditRecord
	var first, n uint64
	var compared int
	after := uint64(0)
	for {
		f := apiclient.AuditFilter{Oldest: true, After: after, Limit: apiclient.MaxListLimit}
		var list apiclient.AuditList
		if code := remote.Call(e, http.MethodGet, "/api/v1/audit?"+f.Values().Encode(), nil, &list); code != cli.ExitOK {
			return code
		}
		recs := make([]store.AuditRecord, len(list.Records))
		for i, v := range list.Records {
			// The hash covers what the store keeps: the answer's fields
			// as they are (times to the nanosecond).
			recs[i] = store.AuditRecord{ID: v.ID, Time: v.Time, ActorKind: v.ActorKind, Actor: v.Actor, Action: v.Action,
				Object: v.Object, Before: v.Before, After: v.After, Source: v.Source, Detail: v.Detail, Prev: v.Prev, Hash: v.Hash}
		}
		if err := store.VerifyAuditChain(prev, recs); err != nil {
			fmt.Fprintf(e.Stdout, "audit trail BROKEN: %v\n", err)
			return ExitAuditBroken
		}
		for _, r := range recs {
			if h, ok := copyOf[r.ID]; ok {
				if h != r.Hash {
					fmt.Fprintf(e.Stdout, "audit trail BROKEN: audit record %d differs from its copy in %s: one of them was changed\n", r.ID, copyPath)
					return ExitAuditBroken
				}
				compared++
			}
		}
		if len(recs) > 0 {
			if prev == nil {
				first = recs[0].ID
			}
			prev = &recs[len(recs)-1]
			after = prev.ID
			n += uint64(len(recs))
		}
		if list.Next == "" {
			break
		}
	}
	var last uint64
	if prev != nil {
		last = prev.ID
	}
	var beyond []uint64
	for id := range copyOf {
		if id > last {
			beyond = append(beyond, id)
		}
	}
	if len(beyond) > 0 {
		slices.Sort(beyond)
		fmt.Fprintf(e.Stdout, "audit trail BROKEN: %s holds records %d to %d, after the store's newest (%d): records were deleted from the store, or it was restored from an older backup\n",
			copyPath, beyond[0], beyond[len(beyond)-1], last)
		return ExitAuditBroken
	}
	if n == 0 {
		fmt.Fprintln(e.Stdout, "audit trail empty: nothing to check")
		return cli.ExitOK
	}
	from := "record 1, the first"
	if first != 1 {
		from = "record " + strconv.FormatUint(first, 10) + " (older ones pruned by retention)"
	}
	fmt.Fprintf(e.Stdout, "audit trail intact: %d records, from %s to record %d\n", n, from, prev.ID)
	if copyOf != nil {
		fmt.Fprintf(e.Stdout, "%d of them match their copy in %s (%d copied records are older than the store's oldest)\n",
			compared, copyPath, len(copyOf)-compared)
	}
	return cli.ExitOK
}
