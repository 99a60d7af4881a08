package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

// AuditRecord is a well-formed record of action on object by an admin
// token, at at.
func AuditRecord(action, object string, at time.Time) store.AuditRecord {
	return store.AuditRecord{Time: at, ActorKind: store.ActorAdminToken, Actor: "0123456789ab", Action: action, Object: object,
		Source: "192.0.2.1:4000", Detail: "a test"}
}

// AllAudit returns every audit record, oldest first.
func AllAudit(t testing.TB, s store.Store) []store.AuditRecord {
	t.Helper()
	recs, err := s.AuditRecords(context.Background(), store.AuditQuery{OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// auditActions lists the records' actions, oldest first.
func auditActions(recs []store.AuditRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Action + " " + r.Object
	}
	return out
}

func checkChain(t *testing.T, recs []store.AuditRecord) {
	t.Helper()
	if err := store.VerifyAuditChain(nil, recs); err != nil {
		t.Errorf("chain broken: %v", err)
	}
	for i, r := range recs {
		if i > 0 && r.ID != recs[i-1].ID+1 {
			t.Errorf("record %d follows %d", r.ID, recs[i-1].ID)
		}
	}
}

// testAuditWithChanges checks that every audited change writes its
// records in its transaction: once when it is made, never when it is not
// (an error, a revocation already made), and that a record the store
// refuses refuses the change with it.
func testAuditWithChanges(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	rec := func(action, object string) store.AuditRecord { return AuditRecord(action, object, now) }

	tok := store.AdminToken{ID: "0123456789ab", SecretHash: "h", Name: "alice", Created: now}
	if err := s.AddAdminToken(ctx, tok, rec("admintoken.create", "admin-token/0123456789ab")); err != nil {
		t.Fatal(err)
	}
	// A token whose id is taken changes nothing and records nothing.
	if err := s.AddAdminToken(ctx, tok, rec("admintoken.create", "admin-token/again")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate admin token: %v", err)
	}
	if _, err := s.RevokeAdminToken(ctx, tok.ID, now, rec("admintoken.revoke", "admin-token/0123456789ab")); err != nil {
		t.Fatal(err)
	}
	// Revoked already: nothing changes, nothing is recorded.
	if _, err := s.RevokeAdminToken(ctx, tok.ID, now.Add(time.Second), rec("admintoken.revoke", "admin-token/twice")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeAdminToken(ctx, "nope", now, rec("admintoken.revoke", "admin-token/nope")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown admin token: %v", err)
	}
	jt := store.JoinToken{ID: "j1", SecretHash: "h", Node: "node-a", Created: now, Expires: now.Add(time.Hour)}
	if err := s.AddJoinToken(ctx, jt, rec("token.create", "join-token/j1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteJoinToken(ctx, "j1", rec("token.delete", "join-token/j1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteJoinToken(ctx, "j1", rec("token.delete", "join-token/gone")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted twice: %v", err)
	}
	if err := s.AddCert(ctx, store.Cert{Serial: "c1", Node: "node-a", NotAfter: now.Add(time.Hour)}, rec("node.join", "node/node-a")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RevokeNode(ctx, "node-a", now, rec("node.revoke", "node/node-a")); err != nil {
		t.Fatal(err)
	}
	err := s.CommitPolicy(ctx, store.PolicyCommit{
		Put:    []store.Resource{{ResourceKey: store.ResourceKey{Kind: "Policy", Name: "shop"}, Document: []byte("x"), Updated: now}},
		Delete: []store.ResourceKey{{Kind: "Policy", Name: "old"}},
		Audit:  []store.AuditRecord{rec("policy.apply", "Policy/shop"), rec("policy.delete", "Policy/old")},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A record without an actor is refused, and the change with it.
	bad := rec("token.create", "join-token/j2")
	bad.ActorKind = ""
	if err := s.AddJoinToken(ctx, store.JoinToken{ID: "j2", SecretHash: "h", Node: "node-b", Created: now, Expires: now.Add(time.Hour)}, bad); err == nil {
		t.Error("a record without an actor was accepted")
	}
	if _, err := s.JoinToken(ctx, "j2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the change of a refused record was stored: %v", err)
	}
	if _, err := s.AppendAudit(ctx, bad); err == nil {
		t.Error("AppendAudit accepted a record without an actor")
	}
	// And without records, changes record nothing.
	if err := s.AddJoinToken(ctx, store.JoinToken{ID: "j3", SecretHash: "h", Node: "node-b", Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}

	recs := AllAudit(t, s)
	want := []string{"admintoken.create admin-token/0123456789ab", "admintoken.revoke admin-token/0123456789ab",
		"token.create join-token/j1", "token.delete join-token/j1", "node.join node/node-a", "node.revoke node/node-a",
		"policy.apply Policy/shop", "policy.delete Policy/old"}
	if got := auditActions(recs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records:\n got %q\nwant %q", got, want)
	}
	if len(recs) > 0 && recs[0].ID != 1 {
		t.Errorf("first record's id %d", recs[0].ID)
	}
	checkChain(t, recs)
	// Every field round-trips.
	if len(recs) > 0 {
		got, want := recs[0], rec("admintoken.create", "admin-token/0123456789ab")
		want.ID, want.Prev, want.Hash = got.ID, got.Prev, got.Hash
		if !got.Time.Equal(want.Time) {
			t.Errorf("time %v, want %v", got.Time, want.Time)
		}
		got.Time = want.Time
		if got != want {
			t.Errorf("stored\n %+v\nwant\n %+v", got, want)
		}
	}
}

// testAuditAppendQuery checks AppendAudit, LastAudit and every filter of
// AuditRecords.
func testAuditAppendQuery(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.LastAudit(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LastAudit of an empty trail: %v", err)
	}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	var in []store.AuditRecord
	for i, a := range []struct{ action, object, actor string }{
		{"login.success", "", "aaaaaaaaaaaa"},
		{"policy.apply", "Policy/shop", "aaaaaaaaaaaa"},
		{"policy.apply", "Policy/shop2", "bbbbbbbbbbbb"},
		{"policy.delete", "Policy/shop", "kubernetes"},
		{"policy-x.apply", "Policy0", "aaaaaaaaaaaa"},
		{"node.join", "node/a", "a"},
	} {
		r := AuditRecord(a.action, a.object, t0.Add(time.Duration(i)*time.Minute))
		r.Actor = a.actor
		in = append(in, r)
	}
	out, err := s.AppendAudit(ctx, in[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].ID != 1 || out[1].ID != 2 || out[1].Prev != out[0].Hash || out[0].Hash == "" {
		t.Fatalf("appended %+v", out)
	}
	if _, err := s.AppendAudit(ctx, in[2:]...); err != nil {
		t.Fatal(err)
	}
	last, err := s.LastAudit(ctx)
	if err != nil || last.ID != 6 || last.Action != "node.join" {
		t.Fatalf("LastAudit: %+v, %v", last, err)
	}
	for _, c := range []struct {
		q    store.AuditQuery
		want []uint64
	}{
		{store.AuditQuery{}, []uint64{6, 5, 4, 3, 2, 1}},
		{store.AuditQuery{OldestFirst: true, Limit: 2}, []uint64{1, 2}},
		{store.AuditQuery{Limit: 2}, []uint64{6, 5}},
		{store.AuditQuery{BeforeID: 5, Limit: 2}, []uint64{4, 3}},
		{store.AuditQuery{AfterID: 4, OldestFirst: true}, []uint64{5, 6}},
		{store.AuditQuery{Since: t0.Add(time.Minute), Until: t0.Add(3 * time.Minute)}, []uint64{3, 2}},
		{store.AuditQuery{Actor: "aaaaaaaaaaaa"}, []uint64{5, 2, 1}},
		{store.AuditQuery{Actor: "aaaa"}, nil},
		{store.AuditQuery{ActorKind: store.ActorAdminToken, Actor: "kubernetes"}, []uint64{4}},
		{store.AuditQuery{ActorKind: store.ActorNode}, nil},
		{store.AuditQuery{Action: "policy.apply"}, []uint64{3, 2}},
		{store.AuditQuery{Action: "policy."}, []uint64{4, 3, 2}},
		{store.AuditQuery{Action: "policy"}, nil},
		{store.AuditQuery{Object: "Policy/shop"}, []uint64{4, 2}},
		{store.AuditQuery{Object: "Policy/"}, []uint64{4, 3, 2}},
		{store.AuditQuery{Object: "Policy/", Action: "policy.delete"}, []uint64{4}},
	} {
		got, err := s.AuditRecords(ctx, c.q)
		if err != nil {
			t.Fatalf("%+v: %v", c.q, err)
		}
		var ids []uint64
		for _, r := range got {
			ids = append(ids, r.ID)
		}
		if fmt.Sprint(ids) != fmt.Sprint(c.want) {
			t.Errorf("%+v: ids %v, want %v", c.q, ids, c.want)
		}
	}
	checkChain(t, AllAudit(t, s))
}

// testAuditPrune checks retention: the oldest whole records go, the
// newest always stays, and the IDs and the chain go on after it.
func testAuditPrune(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		if _, err := s.AppendAudit(ctx, AuditRecord("policy.apply", fmt.Sprintf("Policy/p%d", i), t0.Add(time.Duration(i)*time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PruneAudit(ctx, t0); err != nil || n != 0 {
		t.Fatalf("prune before the oldest: %d, %v", n, err)
	}
	if n, err := s.PruneAudit(ctx, t0.Add(2*time.Hour)); err != nil || n != 2 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	recs := AllAudit(t, s)
	if len(recs) != 3 || recs[0].ID != 3 {
		t.Fatalf("after prune: %q", auditActions(recs))
	}
	checkChain(t, recs)
	// Everything is older: the newest is kept, so the chain goes on.
	if n, err := s.PruneAudit(ctx, t0.Add(100*time.Hour)); err != nil || n != 2 {
		t.Fatalf("prune all: %d, %v", n, err)
	}
	if _, err := s.AppendAudit(ctx, AuditRecord("policy.delete", "Policy/p0", t0.Add(101*time.Hour))); err != nil {
		t.Fatal(err)
	}
	recs = AllAudit(t, s)
	if len(recs) != 2 || recs[0].ID != 5 || recs[1].ID != 6 {
		t.Fatalf("after pruning all and appending: %+v", recs)
	}
	checkChain(t, recs)
}

// testAuditConcurrent appends from many goroutines at once: no ID is
// given twice or skipped, and the chain holds.
func testAuditConcurrent(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	const n, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, n*each)
	for g := range n {
		wg.Go(func() {
			for i := range each {
				var err error
				if i%2 == 0 {
					_, err = s.AppendAudit(ctx, AuditRecord("login.success", "", now))
				} else {
					id := fmt.Sprintf("g%di%d", g, i)
					err = s.AddJoinToken(ctx, store.JoinToken{ID: id, SecretHash: "h", Node: "n", Created: now, Expires: now.Add(time.Hour)},
						AuditRecord("token.create", "join-token/"+id, now))
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := AllAudit(t, s)
	if len(recs) != n*each || recs[0].ID != 1 || recs[len(recs)-1].ID != n*each {
		t.Fatalf("%d records, want %d numbered from 1", len(recs), n*each)
	}
	checkChain(t, recs)
}
