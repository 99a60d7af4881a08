package online

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // the raw handle that edits a record around its trigger

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
)

// The keys of an audit record scripts rely on (docs/ARCHITECTURE.md).
var auditKeys = []string{"id", "time", "actorKind", "actor", "action", "hash"}

func TestOnlineAudit(t *testing.T) {
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret") // shop's webhook signs with it
	h := eventController(t)                        // record 1: the admin token of its admin.conf
	if code, out, errs := egctl(t, "apply", "-f", shop); code != exitOK {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs := egctl(t, "audit", "-o", "json")
	var raw []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &raw) != nil || len(raw) < 2 {
		t.Fatalf("audit -o json: exit %d\n%s\n%s", code, out, errs)
	}
	for _, k := range auditKeys {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("audit -o json: no key %q in %v", k, raw[0])
		}
	}
	var list []apiclient.AuditRecord
	json.Unmarshal([]byte(out), &list)
	admin := list[len(list)-1].Object // admin-token/ID, created by the controller
	if list[0].Action != "policy.apply" || list[0].ActorKind != "admin-token" || "admin-token/"+list[0].Actor != admin {
		t.Errorf("newest record %+v, want a policy.apply by %s", list[0], admin)
	}

	code, out, _ = egctl(t, "audit", "--action", "policy.", "--object", "Policy/")
	if code != exitOK || !strings.Contains(out, "ACTOR") || !strings.Contains(out, "policy.apply") || strings.Contains(out, "admintoken.create") {
		t.Errorf("audit table filtered: exit %d\n%s", code, out)
	}
	if code, out, _ := egctl(t, "audit", "--actor", "nobody", "-o", "json"); code != exitOK || out != "[]\n" {
		t.Errorf("audit --actor nobody: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"--since", "yesterday"}, {"--limit", "0"}, {"--verify", "--since", "1h"}, {"extra"}, {"-o", "xml"}} {
		if code, out, errs := egctl(t, append([]string{"audit"}, args...)...); code != exitBadInput || errs == "" {
			t.Errorf("audit %q: exit %d\n%s\n%s", args, code, out, errs)
		}
	}

	code, out, errs = egctl(t, "audit", "--verify")
	if code != exitOK || !strings.Contains(out, "audit trail intact") || !strings.Contains(out, "from record 1") {
		t.Fatalf("audit --verify: exit %d\n%s\n%s", code, out, errs)
	}
	// Against a copy: the same records match; a copy that differs, or
	// that holds records the store lost, breaks the check.
	dir := t.TempDir()
	writeCopy := func(name string, edit func([]apiclient.AuditRecord) []apiclient.AuditRecord) string {
		t.Helper()
		recs, err := h.St.AuditRecords(context.Background(), store.AuditQuery{OldestFirst: true})
		if err != nil {
			t.Fatal(err)
		}
		views := make([]apiclient.AuditRecord, len(recs))
		for i, r := range recs {
			views[i] = apiclient.AuditRecord{ID: r.ID, Time: r.Time, ActorKind: r.ActorKind, Actor: r.Actor, Action: r.Action, Hash: r.Hash}
		}
		var b strings.Builder
		for _, v := range edit(views) {
			line, _ := json.Marshal(v)
			b.Write(line)
			b.WriteByte('\n')
		}
		b.WriteString(`{"id":99,"ti`) // a line cut short by a crash
		path := filepath.Join(dir, name)
		writeFile(t, path, b.String())
		return path
	}
	same := writeCopy("same.jsonl", func(v []apiclient.AuditRecord) []apiclient.AuditRecord { return v })
	code, out, errs = egctl(t, "audit", "--verify", "--against", same)
	if code != exitOK || !strings.Contains(out, "audit trail intact") || !strings.Contains(out, " of them match their copy") {
		t.Errorf("audit --verify --against an equal copy: exit %d\n%s\n%s", code, out, errs)
	}
	changed := writeCopy("changed.jsonl", func(v []apiclient.AuditRecord) []apiclient.AuditRecord {
		v[1].Hash = strings.Repeat("0", 64)
		return v
	})
	code, out, _ = egctl(t, "audit", "--verify", "--against", changed)
	if code != ExitAuditBroken || !strings.Contains(out, "audit record 2 differs from its copy") {
		t.Errorf("audit --verify --against a differing copy: exit %d\n%s", code, out)
	}
	ahead := writeCopy("ahead.jsonl", func(v []apiclient.AuditRecord) []apiclient.AuditRecord {
		next := v[len(v)-1]
		next.ID++
		return append(v, next)
	})
	code, out, _ = egctl(t, "audit", "--verify", "--against", ahead)
	if code != ExitAuditBroken || !strings.Contains(out, "after the store's newest") {
		t.Errorf("audit --verify --against a copy with more records: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"--against", same}, {"--verify", "--against", filepath.Join(dir, "none")}} {
		if code, out, errs := egctl(t, append([]string{"audit"}, args...)...); code != exitBadInput || errs == "" {
			t.Errorf("audit %q: exit %d\n%s\n%s", args, code, out, errs)
		}
	}

	// An edit in the database, made around the trigger, shows.
	db, err := sql.Open("sqlite", h.St.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("DROP TRIGGER audit_append_only; UPDATE audit SET actor = 'someone-else' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	code, out, _ = egctl(t, "audit", "--verify")
	if code != ExitAuditBroken || !strings.Contains(out, "BROKEN") || !strings.Contains(out, "record 2") {
		t.Errorf("audit --verify of an edited trail: exit %d\n%s", code, out)
	}
}
