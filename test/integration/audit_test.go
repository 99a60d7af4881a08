package integration_test

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"

	_ "modernc.org/sqlite" // a raw handle on the store's file, as an attacker would have
)

// auditOf reads the whole trail through GET /api/v1/audit, oldest first.
func auditOf(t *testing.T, cfg *apiclient.Config) []apiclient.AuditRecord {
	t.Helper()
	code, body := controllertest.Call(t, "GET", cfg.Server+"/api/v1/audit?order=oldest&limit=10000", cfg.Token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/audit: %d %s", code, body)
	}
	var list apiclient.AuditList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	return list.Records
}

// call sends a request as an admin and fails the test unless it answers
// want.
func call(t *testing.T, cfg *apiclient.Config, method, path, body string, want int) []byte {
	t.Helper()
	code, out := controllertest.Call(t, method, cfg.Server+path, cfg.Token, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, out, want)
	}
	return out
}

type auditEntry struct{ action, object, actorKind, actor string }

func (e auditEntry) String() string {
	return fmt.Sprintf("%s %s by %s:%s", e.action, e.object, e.actorKind, e.actor)
}

func entries(recs []apiclient.AuditRecord) []auditEntry {
	out := make([]auditEntry, len(recs))
	for i, r := range recs {
		out[i] = auditEntry{r.Action, r.Object, r.ActorKind, r.Actor}
	}
	return out
}

// TestAuditTrail: every audited action, made through the real REST API
// and the real agent (join, renewal), appears once with the right actor
// and source; nothing else does; the records survive a controller
// restart with their chain; and --audit-log holds each once, mode 0600.
func TestAuditTrail(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "audit.jsonl")
	h := newHarness(t, func(c *controller.Config) { c.NodeCertTTL = 3 * time.Second; c.AuditLogFile = logFile })
	cfg := h.ServeAPI()
	admin := strings.Split(cfg.Token, ".")[1]
	want := []auditEntry{{"admintoken.create", "admin-token/" + admin, "controller", "controller"}}
	byAdmin := func(action, object string) auditEntry { return auditEntry{action, object, "admin-token", admin} }

	// Policy applied, changed and deleted through the API.
	body, _ := json.Marshal(apiclient.ApplyRequest{Files: []apiclient.File{{Name: "lab.yaml", Content: twoNodes}}})
	var res apiclient.ChangeResult
	if err := json.Unmarshal(call(t, cfg, "POST", "/api/v1/apply", string(body), 200), &res); err != nil {
		t.Fatal(err)
	}
	slices.Sort(res.Created)
	for _, obj := range res.Created {
		want = append(want, byAdmin("policy.apply", obj))
	}
	body, _ = json.Marshal(apiclient.ApplyRequest{Files: []apiclient.File{{Name: "admin.yaml", Content: adminSSH}}})
	call(t, cfg, "POST", "/api/v1/apply", string(body), 200)
	want = append(want, byAdmin("policy.apply", "Policy/admin"))
	call(t, cfg, "POST", "/api/v1/apply", string(body), 200) // unchanged: no record
	call(t, cfg, "POST", "/api/v1/apply", `{"files":[{"name":"bad.yaml","content":"kind: Nope"}]}`, 422)
	call(t, cfg, "DELETE", "/api/v1/policies/admin", "", 200)
	want = append(want, byAdmin("policy.delete", "Policy/admin"))

	// Join tokens: one for node-a, one made and deleted.
	var jt apiclient.JoinToken
	if err := json.Unmarshal(call(t, cfg, "POST", "/api/v1/tokens", `{"node":"node-a","ttl":"1h"}`, 201), &jt); err != nil {
		t.Fatal(err)
	}
	joinA := jt.Token
	tokA, err := pki.ParseJoinToken(joinA)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, byAdmin("token.create", "join-token/"+tokA.ID))
	if err := json.Unmarshal(call(t, cfg, "POST", "/api/v1/tokens", `{"node":"node-b","ttl":"1h"}`, 201), &jt); err != nil {
		t.Fatal(err)
	}
	tokB, err := pki.ParseJoinToken(jt.Token)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, byAdmin("token.create", "join-token/"+tokB.ID))
	call(t, cfg, "DELETE", "/api/v1/tokens/"+tokB.ID, "", 200)
	want = append(want, byAdmin("token.delete", "join-token/"+tokB.ID))
	call(t, cfg, "DELETE", "/api/v1/tokens/"+tokB.ID, "", 404) // gone: no record

	// Admin tokens: made, revoked (twice: one record).
	var at apiclient.CreatedAdminToken
	if err := json.Unmarshal(call(t, cfg, "POST", "/api/v1/admin-tokens", `{"name":"bob","ttl":"1h"}`, 201), &at); err != nil {
		t.Fatal(err)
	}
	want = append(want, byAdmin("admintoken.create", "admin-token/"+at.ID))
	call(t, cfg, "POST", "/api/v1/admin-tokens/"+at.ID+"/revoke", "", 200)
	call(t, cfg, "POST", "/api/v1/admin-tokens/"+at.ID+"/revoke", "", 200)
	want = append(want, byAdmin("admintoken.revoke", "admin-token/"+at.ID))

	// Dashboard logins: one good, one with a made-up token, one with the
	// revoked token.
	call(t, cfg, "POST", "/api/v1/login", `{"token":"`+cfg.Token+`"}`, 200)
	want = append(want, auditEntry{"login.success", "admin-token/" + admin, "admin-token", admin})
	call(t, cfg, "POST", "/api/v1/login", `{"token":"egadm1.0123456789ab.`+strings.Repeat("0", 32)+`"}`, 401)
	call(t, cfg, "POST", "/api/v1/login", `{"token":"`+at.Token+`"}`, 401)

	// The node joins with its token and renews its certificate.
	a := h.startAgent("node-a", joinA, nil, nil)
	h.waitApplied(a)
	want = append(want, auditEntry{"node.join", "node/node-a", "node", "node-a"})
	first := a.client.CertExpiry()
	testutil.Eventually(t, 20*time.Second, "a renewal", func() error {
		if !a.client.CertExpiry().After(first) {
			return fmt.Errorf("certificate expiry %v, first %v", a.client.CertExpiry(), first)
		}
		return nil
	})

	// An alert acknowledged (twice: one record).
	now := time.Now()
	alert := &store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: "k", State: store.AlertOpen, Count: 1,
		Source: "web", Destination: "db", Port: 22, Protocol: "TCP", FirstSeen: now, LastSeen: now, Window: time.Hour, Created: now}
	h.InsertAlerts(alert)
	call(t, cfg, "POST", fmt.Sprintf("/api/v1/alerts/%d/ack", alert.ID), "", 200)
	call(t, cfg, "POST", fmt.Sprintf("/api/v1/alerts/%d/ack", alert.ID), "", 200)

	// The node revoked; its agent stops renewing.
	call(t, cfg, "POST", "/api/v1/agents/node-a/revoke", "", 200)
	a.wait(t, 10*time.Second)

	recs := auditOf(t, cfg)
	// Renewals happen on their own clock: as many as the controller
	// logged (a renewal is logged just after its commit: polled), each by
	// the node; they are checked apart.
	var renewals int
	testutil.Eventually(t, 10*time.Second, "every recorded renewal logged", func() error {
		renewals = len(h.Logged("node certificate renewed"))
		n := 0
		for _, r := range recs {
			if r.Action == "node.renew" {
				n++
			}
		}
		if n != renewals {
			return fmt.Errorf("%d renewals recorded, %d logged", n, renewals)
		}
		return nil
	})
	var got []auditEntry
	var renews int
	for _, e := range entries(recs) {
		if e.action == "node.renew" {
			renews++
			if e != (auditEntry{"node.renew", "node/node-a", "node", "node-a"}) {
				t.Errorf("renewal recorded as %v", e)
			}
			continue
		}
		got = append(got, e)
	}
	if renews == 0 || renews != renewals {
		t.Errorf("%d renewals recorded, %d logged", renews, renewals)
	}
	// The login failures and the ack are between the join and the
	// revocation; their objects say what they were about.
	want = append(want,
		auditEntry{"login.failure", "admin-token/0123456789ab", "anonymous", ""},
		auditEntry{"login.failure", "admin-token/" + at.ID, "anonymous", ""},
		auditEntry{"alert.acknowledge", fmt.Sprintf("alert/%d", alert.ID), "admin-token", admin},
		auditEntry{"node.revoke", "node/node-a", "admin-token", admin})
	sortTail := func(es []auditEntry) []string {
		out := make([]string, len(es))
		for i, e := range es {
			out[i] = e.String()
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(sortTail(got), sortTail(want)) {
		t.Errorf("audit trail:\n got %q\nwant %q", sortTail(got), sortTail(want))
	}
	for _, r := range recs {
		switch {
		case r.ActorKind == "controller" || r.ActorKind == "node":
		case !strings.HasPrefix(r.Source, "127.0.0.1:"):
			t.Errorf("record %d (%s): source %q, want the API caller's address", r.ID, r.Action, r.Source)
		}
		if r.Action == "policy.apply" && (r.After == "" || len(r.After) != 64) {
			t.Errorf("record %d: policy.apply without the document's hash: %+v", r.ID, r)
		}
	}
	if !chainOK(t, recs) {
		t.FailNow()
	}
	// Every record this controller wrote is counted, by action.
	perAction := map[string]int{}
	for _, r := range recs {
		perAction[r.Action]++
	}
	for action, n := range perAction {
		if got := h.Counter("eastguard_controller_audit_records_total", "action", action); got != float64(n) {
			t.Errorf("eastguard_controller_audit_records_total{action=%q} = %v, want %d", action, got, n)
		}
	}

	// A restart keeps every record, chain and all, and numbering goes on.
	h.Restart()
	cfg2 := h.ServeAPI()
	cfg2.Token = cfg.Token
	after := auditOf(t, cfg2)
	if len(after) != len(recs)+1 || !slices.Equal(after[:len(recs)], recs) {
		t.Fatalf("after a restart: %d records, before %d (+1 for ServeAPI's admin token)", len(after), len(recs))
	}
	if last := after[len(after)-1]; last.Action != "admintoken.create" || last.ID != recs[len(recs)-1].ID+1 {
		t.Errorf("first record after the restart: %+v", last)
	}
	chainOK(t, after)

	// The log file: each record once, in order, as the API shows it.
	h.Stop()
	info, err := os.Stat(logFile)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("audit log: %v, %v", info, err)
	}
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var logged []apiclient.AuditRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r apiclient.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit log line %q: %v", sc.Text(), err)
		}
		logged = append(logged, r)
	}
	if len(logged) != len(after) {
		t.Fatalf("audit log has %d lines, the store %d records", len(logged), len(after))
	}
	for i := range logged {
		if !logged[i].Time.Equal(after[i].Time) || logged[i].Hash != after[i].Hash || logged[i].ID != after[i].ID {
			t.Errorf("audit log line %d: %+v, store %+v", i+1, logged[i], after[i])
		}
	}
}

// chainOK checks the records' hash chain as egctl audit --verify does.
func chainOK(t *testing.T, recs []apiclient.AuditRecord) bool {
	t.Helper()
	srecs := make([]store.AuditRecord, len(recs))
	for i, v := range recs {
		srecs[i] = store.AuditRecord{ID: v.ID, Time: v.Time, ActorKind: v.ActorKind, Actor: v.Actor, Action: v.Action,
			Object: v.Object, Before: v.Before, After: v.After, Source: v.Source, Detail: v.Detail, Prev: v.Prev, Hash: v.Hash}
	}
	if err := store.VerifyAuditChain(nil, srecs); err != nil {
		t.Errorf("chain: %v", err)
		return false
	}
	return true
}

// TestAuditChainCheckedAtStart: a record edited in the database while the
// controller was stopped (around the trigger, as whoever holds the file
// can) is reported at the next start: an error naming the record, and
// the gauge.
func TestAuditChainCheckedAtStart(t *testing.T) {
	h := newHarness(t)
	h.Token("node-a", time.Hour)
	h.Token("node-b", time.Hour)
	h.Stop()
	db, err := sql.Open("sqlite", h.St.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DROP TRIGGER audit_append_only; UPDATE audit SET detail = 'for node node-c' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	h.Start()
	testutil.Eventually(t, 10*time.Second, "the chain check's error", func() error {
		if lines := h.Logged("audit trail: hash chain check failed", "audit record 1"); len(lines) != 1 {
			return fmt.Errorf("logged %q", h.Logged("audit"))
		}
		return nil
	})
	mfs, err := h.Reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	broken := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "eastguard_controller_audit_chain_broken" {
			broken = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if broken != 1 {
		t.Errorf("eastguard_controller_audit_chain_broken = %v, want 1", broken)
	}
}
