package apiclient

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzParseFilters: no query string makes the flow, alert or audit query
// parser panic, and every error it returns is a ParamErrors whose every
// entry names a parameter the query gave, its message starting with that
// name; an audit query that parses asks the same again through Values
// (egctl's way). (make fuzz runs it.)
func FuzzParseFilters(f *testing.F) {
	for _, seed := range []string{
		"",
		"verdict=denied&port=22&protocol=tcp&since=10m",
		"workload=db-1&rule=shop%2Fweb-to-db&node=node-a&addr=%3A%3Affff%3A10.1.2.3&limit=10000",
		"since=7d&until=2025-06-01T11:00:00%2B02:00",
		"since=2025-06-01T11:00:00+02:00",
		"until=1h&since=2h",
		"state=open,resolved&state=acknowledged&rule=r&limit=1",
		"state=open,",
		"limit=0&zz=1&port=x&port=y",
		"since=99999999999d&until=-5d&since=",
		"addr=fe80::1%25eth0&protocol=proto-256",
		"%zz&;&=&==",
		"actor=node-a&actorKind=node&action=policy.&object=Policy%2F&before=9&order=oldest&since=1h&until=2025-06-01T11:59:00Z",
		"after=0&before=x&order=up&actorKind=robot&until=2h&since=1h",
	} {
		f.Add(seed)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		v, _ := url.ParseQuery(raw) // the values it could parse, as the server sees them
		_, ferr := ParseFlowFilter(v, now)
		_, aerr := ParseAlertFilter(v, now)
		audit, uerr := ParseAuditFilter(v, now)
		if uerr == nil {
			again, err := ParseAuditFilter(audit.Values(), now)
			if err != nil || !again.Since.Equal(audit.Since) || !again.Until.Equal(audit.Until) {
				t.Fatalf("%q: %+v through Values: %+v, %v", raw, audit, again, err)
			}
			again.Since, again.Until = audit.Since, audit.Until
			if again != audit {
				t.Fatalf("%q: %+v through Values: %+v", raw, audit, again)
			}
		}
		for _, err := range []error{ferr, aerr, uerr} {
			if err == nil {
				continue
			}
			var es ParamErrors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("%q: error %v is not ParamErrors", raw, err)
			}
			for _, e := range es {
				if _, given := v[e.Param]; !given {
					t.Errorf("%q: error %q names %q, not a parameter of the query", raw, e, e.Param)
				}
				if !strings.HasPrefix(e.Error(), e.Param+": ") || e.Msg == "" {
					t.Errorf("%q: error %q does not start with its parameter", raw, e)
				}
			}
		}
	})
}
