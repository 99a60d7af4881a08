package restapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/storetest"
)

// TestAuditRoutesCannotModify walks the route table and calls every
// route, with path parameters and bodies aimed at the audit trail, as an
// admin: afterwards every record is as it was (records may only have been
// added after them) and the chain holds. The audit trail's only route is
// a GET; and the store offers no method that changes a record.
func TestAuditRoutesCannotModify(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	ctx := context.Background()
	now := time.Now()
	if _, err := h.St.AppendAudit(ctx, storetest.AuditRecord("policy.apply", "Policy/shop", now),
		storetest.AuditRecord("node.join", "node/node-a", now)); err != nil {
		t.Fatal(err)
	}
	before := storetest.AllAudit(t, h.St)
	if len(before) < 3 {
		t.Fatalf("%d records to start with", len(before))
	}

	patterns, _ := restapi.Routes()
	var auditRoutes []string
	param := regexp.MustCompile(`\{[a-z]+\}`)
	client := &http.Client{Timeout: 2 * time.Second} // the live flow stream never ends by itself
	calls := 0
	for _, p := range patterns {
		method, path, _ := strings.Cut(p, " ")
		if strings.Contains(path, "audit") {
			auditRoutes = append(auditRoutes, p)
		}
		for _, v := range []string{"audit", "1", "2", "0123456789ab"} {
			for _, body := range []string{"", `{"id":1,"action":"policy.delete","hash":""}`, `{"resources":[{"kind":"audit","name":"1"}]}`} {
				url := cfg.Server + param.ReplaceAllString(path, v) + "?id=1&before=2&limit=1"
				req, err := http.NewRequest(method, url, strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+cfg.Token)
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				calls++
			}
		}
	}
	// And the methods a client might try on the trail itself.
	for _, method := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		for _, path := range []string{"/api/v1/audit", "/api/v1/audit/1", "/api/v1/audit/2", "/api/v1/audit/1/delete"} {
			code, body := controllertest.Call(t, method, cfg.Server+path, cfg.Token, `{"id":1}`)
			if code < 400 {
				t.Errorf("%s %s: %d %s, want refused", method, path, code, body)
			}
			calls++
		}
	}
	t.Logf("%d calls over %d routes", calls, len(patterns))

	after := storetest.AllAudit(t, h.St)
	if len(after) < len(before) || !reflect.DeepEqual(after[:len(before)], before) {
		t.Errorf("records changed by API calls:\nbefore %+v\nafter  %+v", before, after[:min(len(after), len(before))])
	}
	if err := store.VerifyAuditChain(nil, after); err != nil {
		t.Errorf("chain after the calls: %v", err)
	}
	if !slices.Equal(auditRoutes, []string{"GET /api/v1/audit"}) {
		t.Errorf("audit routes %q, want only GET /api/v1/audit", auditRoutes)
	}
	// The store's audit methods: append, read, and retention's prune of
	// the oldest; none changes a record.
	var methods []string
	at := reflect.TypeFor[store.AuditStore]()
	for i := range at.NumMethod() {
		methods = append(methods, at.Method(i).Name)
	}
	if want := []string{"AppendAudit", "AuditRecords", "LastAudit", "PruneAudit"}; !slices.Equal(methods, want) {
		t.Errorf("store.AuditStore methods %q, want %q: a method that changes records must not exist", methods, want)
	}
}

// TestAuditQuery: the filters and paging of GET /api/v1/audit, and its
// refusals of a malformed query.
func TestAuditQuery(t *testing.T) {
	h := controllertest.New(t)
	cfg := h.ServeAPI() // record 1: its admin token
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour)
	for i := range 5 {
		r := storetest.AuditRecord("policy.apply", fmt.Sprintf("Policy/p%d", i), t0.Add(time.Duration(i)*time.Minute))
		if i == 4 {
			r.Action, r.Object, r.ActorKind, r.Actor = "node.join", "node/node-a", store.ActorNode, "node-a"
		}
		if _, err := h.St.AppendAudit(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	get := func(query string) apiclient.AuditList {
		t.Helper()
		code, body := controllertest.Call(t, "GET", cfg.Server+"/api/v1/audit?"+query, cfg.Token, "")
		if code != 200 {
			t.Fatalf("GET /api/v1/audit?%s: %d %s", query, code, body)
		}
		var l apiclient.AuditList
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	ids := func(l apiclient.AuditList) string {
		var s []string
		for _, r := range l.Records {
			s = append(s, fmt.Sprint(r.ID))
		}
		return strings.Join(s, ",") + " next=" + l.Next
	}
	for q, want := range map[string]string{
		"":                                      "6,5,4,3,2,1 next=",
		"limit=2":                               "6,5 next=before=5",
		"limit=2&before=5":                      "4,3 next=before=3",
		"order=oldest&limit=4":                  "1,2,3,4 next=after=4",
		"order=oldest&after=4":                  "5,6 next=",
		"actor=node-a":                          "6 next=",
		"actorKind=controller":                  "1 next=",
		"action=policy.":                        "5,4,3,2 next=",
		"object=Policy/p1":                      "3 next=",
		"object=Policy/&since=62m&until=58m30s": "3,2 next=",
	} {
		if got := ids(get(q)); got != want {
			t.Errorf("?%s: %s, want %s", q, got, want)
		}
	}
	for _, q := range []string{"actorKind=robot", "order=sideways", "before=0", "before=x", "limit=0", "nope=1", "since=yesterday", "actor="} {
		code, body := controllertest.Call(t, "GET", cfg.Server+"/api/v1/audit?"+q, cfg.Token, "")
		var e apiclient.Error
		if code != 400 || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("?%s: %d %s, want 400 with a message", q, code, body)
		}
	}
	if code, _ := controllertest.Call(t, "GET", cfg.Server+"/api/v1/audit", "", ""); code != 401 {
		t.Errorf("without a credential: %d", code)
	}
}
