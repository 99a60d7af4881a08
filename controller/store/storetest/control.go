package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
)

func testConsumeJoinToken(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	if err := s.AddJoinToken(ctx, store.JoinToken{ID: "t1", SecretHash: "h", Node: "n", Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddJoinToken(ctx, store.JoinToken{ID: "t2", SecretHash: "h", Node: "n", Created: now, Expires: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	ok := func(store.JoinToken) error { return nil }
	bad := errors.New("bad secret")
	if _, err := s.ConsumeJoinToken(ctx, "t1", now, func(store.JoinToken) error { return bad }, nil); !errors.Is(err, bad) {
		t.Errorf("failed check: %v", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, "nope", now, ok, nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, "t2", now.Add(2*time.Minute), ok, nil); !errors.Is(err, store.ErrTokenExpiry) {
		t.Errorf("expired: %v", err)
	}
	// A join's certificate is recorded with the token's use, or neither
	// is: a certificate that cannot be recorded (here: its serial is
	// taken) leaves the token unused for the agent's retry.
	if err := s.AddJoinToken(ctx, store.JoinToken{ID: "t3", SecretHash: "h", Node: "n", Created: now, Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddCert(ctx, store.Cert{Serial: "taken", Node: "other", NotAfter: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeJoinToken(ctx, "t3", now, ok, &store.Cert{Serial: "taken", Node: "n", NotAfter: now.Add(time.Hour)}); err == nil {
		t.Fatal("a join whose certificate's serial is taken was recorded")
	}
	if tok, err := s.JoinToken(ctx, "t3"); err != nil || !tok.Used.IsZero() {
		t.Errorf("after a failed record the token reads %+v, %v: want it unused", tok, err)
	}
	ar := AuditRecord("node.join", "node/n", now)
	if tok, err := s.ConsumeJoinToken(ctx, "t3", now, ok, &store.Cert{Serial: "c-n", Node: "n", NotAfter: now.Add(time.Hour)}, ar); err != nil || tok.Used.IsZero() {
		t.Fatalf("retried join: %+v, %v", tok, err)
	}
	if err := s.AddCert(ctx, store.Cert{Serial: "c-n", Node: "n", NotAfter: now.Add(time.Hour)}); err == nil {
		t.Errorf("the join's certificate was not recorded: its serial is free")
	}
	if recs, err := s.AuditRecords(ctx, store.AuditQuery{}); err != nil || len(recs) != 1 || recs[0].Action != "node.join" {
		t.Errorf("audit after the join: %+v, %v", recs, err)
	}
	// Of many concurrent uses, exactly one wins.
	wins, used := ConsumeConcurrently(t, []store.Store{s}, "t1", now, 8)
	if wins != 1 || used != 7 {
		t.Errorf("%d wins, %d refused as used", wins, used)
	}
}

func testCertsAndRevocation(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	for _, c := range []store.Cert{{Serial: "1", Node: "a", NotAfter: now.Add(time.Hour)}, {Serial: "2", Node: "a", NotAfter: now.Add(-time.Hour)},
		{Serial: "3", Node: "b", NotAfter: now.Add(time.Hour)}} {
		if err := s.AddCert(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// Node a's unused tokens go with the revocation; its used one (a
	// record) and node b's stay.
	for _, tok := range []store.JoinToken{{ID: "a-pending", Node: "a"}, {ID: "a-used", Node: "a"}, {ID: "a-expired", Node: "a"}, {ID: "b-pending", Node: "b"}} {
		tok.SecretHash, tok.Created, tok.Expires = "h", now.Add(-2*time.Hour), now.Add(time.Hour)
		if tok.ID == "a-expired" {
			tok.Expires = now.Add(-time.Hour)
		}
		if err := s.AddJoinToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ConsumeJoinToken(ctx, "a-used", now.Add(-time.Hour), func(store.JoinToken) error { return nil }, nil); err != nil {
		t.Fatal(err)
	}
	certs, tokens, err := s.RevokeNode(ctx, "a", now)
	if err != nil || len(certs) != 2 || tokens != 2 {
		t.Fatalf("revoke: %v, %d tokens deleted, %v", certs, tokens, err)
	}
	revoked, err := s.RevokedCerts(ctx, now)
	if err != nil || len(revoked) != 1 || revoked[0].Serial != "1" {
		t.Errorf("revoked and unexpired: %+v, %v", revoked, err)
	}
	var left []string
	all, err := s.JoinTokens(ctx)
	for _, tok := range all {
		left = append(left, tok.ID)
	}
	if err != nil || strings.Join(left, ",") != "a-used,b-pending" {
		t.Errorf("tokens after the revocation: %q, %v", left, err)
	}
	// The revocation time is in the node's record at once, not only after
	// the node table's next flush.
	nodes, err := s.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "a" || !nodes[0].Revoked.Equal(now.Truncate(0).UTC()) {
		t.Errorf("node records after the revocation: %+v, %v", nodes, err)
	}
}

func testJoinTokenLookupListDelete(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for i, id := range []string{"t2", "t1"} {
		tok := store.JoinToken{ID: id, SecretHash: "h-" + id, Node: "n", Created: now.Add(time.Duration(i) * time.Second), Expires: now.Add(time.Hour)}
		if err := s.AddJoinToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.JoinToken(ctx, "t1")
	if err != nil || got.SecretHash != "h-t1" || got.Node != "n" || !got.Expires.Equal(now.Add(time.Hour)) || !got.Used.IsZero() {
		t.Errorf("lookup: %+v, %v", got, err)
	}
	if _, err := s.JoinToken(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("lookup of an unknown id: %v", err)
	}
	if all, err := s.JoinTokens(ctx); err != nil || len(all) != 2 || all[0].ID != "t2" {
		t.Errorf("list (oldest first): %+v, %v", all, err)
	}
	if del, err := s.DeleteJoinToken(ctx, "t2"); err != nil || del.ID != "t2" || del.Node != "n" {
		t.Errorf("delete: %+v, %v", del, err)
	}
	if _, err := s.DeleteJoinToken(ctx, "t2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete again: %v", err)
	}
	if all, err := s.JoinTokens(ctx); err != nil || len(all) != 1 || all[0].ID != "t1" {
		t.Errorf("list after the delete: %+v, %v", all, err)
	}
}

func testPolicyCommitAndRuleSets(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	wl := store.Resource{ResourceKey: store.ResourceKey{Kind: "Workload", Name: "web"}, Document: []byte("doc1"), Updated: now}
	for v := uint64(1); v <= store.KeepRuleSetVersions+3; v++ {
		c := store.PolicyCommit{RuleSets: []store.RuleSetRecord{{Node: "n", Version: v, Hash: "h", Data: []byte("{}"), Created: now}}}
		if v == 1 {
			c.Put = []store.Resource{wl}
		}
		if err := s.CommitPolicy(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	latest, err := s.LatestRuleSets(ctx)
	if err != nil || len(latest) != 1 || latest[0].Version != store.KeepRuleSetVersions+3 {
		t.Errorf("latest: %+v, %v", latest, err)
	}
	if _, err := s.RuleSet(ctx, "n", 3); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("version 3 should be pruned: %v", err)
	}
	if _, err := s.RuleSet(ctx, "n", 4); err != nil {
		t.Errorf("version 4 should be kept: %v", err)
	}
	// A failing commit changes nothing: the duplicate version aborts it.
	err = s.CommitPolicy(ctx, store.PolicyCommit{Delete: []store.ResourceKey{wl.ResourceKey},
		RuleSets: []store.RuleSetRecord{{Node: "n", Version: 4, Hash: "x", Data: []byte("{}")}}})
	if err == nil {
		t.Fatal("duplicate version committed")
	}
	res, err := s.Resources(ctx)
	if err != nil || len(res) != 1 || string(res[0].Document) != "doc1" {
		t.Errorf("resources after a failed commit: %+v, %v", res, err)
	}
}

// testRuleSetParts: a shared part is stored once for the versions that
// refer to it and read back with each; it stays while one does and goes
// with the last one pruned; a commit referring to a part neither stored
// nor given fails and changes nothing; a part given that no version
// refers to is not kept.
func testRuleSetParts(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	rec := func(node string, v uint64, shared string) store.RuleSetRecord {
		return store.RuleSetRecord{Node: node, Version: v, Hash: fmt.Sprintf("h%d", v), Data: []byte(node), Shared: shared, Created: now}
	}
	commit := func(c store.PolicyCommit) {
		t.Helper()
		if err := s.CommitPolicy(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// refused: a commit of rs without parts fails with ErrNotFound (its
	// part is not stored).
	refused := func(rs store.RuleSetRecord) {
		t.Helper()
		if err := s.CommitPolicy(ctx, store.PolicyCommit{RuleSets: []store.RuleSetRecord{rs}}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a commit of %s version %d referring to part %q not stored: %v, want ErrNotFound", rs.Node, rs.Version, rs.Shared, err)
		}
		if _, err := s.RuleSet(ctx, rs.Node, rs.Version); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the refused commit stored %s version %d: %v", rs.Node, rs.Version, err)
		}
	}
	// Two nodes share part p1, a third is stored whole.
	commit(store.PolicyCommit{RuleSets: []store.RuleSetRecord{rec("a", 1, "p1"), rec("b", 1, "p1"), rec("c", 1, "")},
		Parts: []store.RuleSetPart{{Key: "p1", Data: []byte("part one")}}})
	latest, err := s.LatestRuleSets(ctx)
	if err != nil || len(latest) != 3 {
		t.Fatalf("latest: %+v, %v", latest, err)
	}
	for _, r := range latest {
		wantShared, wantData := "p1", "part one"
		if r.Node == "c" {
			wantShared, wantData = "", ""
		}
		if r.Shared != wantShared || string(r.SharedData) != wantData || string(r.Data) != r.Node {
			t.Errorf("latest of %s: shared %q %q, data %q; want %q %q, %q", r.Node, r.Shared, r.SharedData, r.Data, wantShared, wantData, r.Node)
		}
	}
	// A part already stored is referred to without being given again;
	// one given again under its key is kept as stored.
	commit(store.PolicyCommit{RuleSets: []store.RuleSetRecord{rec("a", 2, "p1")}, Parts: []store.RuleSetPart{{Key: "p1", Data: []byte("other")}}})
	if r, err := s.RuleSet(ctx, "a", 2); err != nil || string(r.SharedData) != "part one" {
		t.Fatalf("a version 2: %+v, %v", r, err)
	}
	refused(rec("a", 3, "unknown"))
	// A part given with no version referring to it is not kept.
	commit(store.PolicyCommit{Parts: []store.RuleSetPart{{Key: "orphan", Data: []byte("x")}}})
	refused(rec("a", 3, "orphan"))
	// b moves to p2; p1 stays while a version of a or b refers to it, and
	// goes with the last one pruned.
	commit(store.PolicyCommit{RuleSets: []store.RuleSetRecord{rec("b", 2, "p2")}, Parts: []store.RuleSetPart{{Key: "p2", Data: []byte("part two")}}})
	for v := uint64(3); v <= 1+store.KeepRuleSetVersions; v++ {
		commit(store.PolicyCommit{RuleSets: []store.RuleSetRecord{rec("a", v, "p2"), rec("b", v, "p2")}})
	}
	if r, err := s.RuleSet(ctx, "a", 2); err != nil || string(r.SharedData) != "part one" {
		t.Fatalf("a version 2, the last referring to p1, kept: %+v, %v", r, err)
	}
	commit(store.PolicyCommit{RuleSets: []store.RuleSetRecord{rec("a", 2+store.KeepRuleSetVersions, "p2")}})
	refused(rec("c", 2, "p1"))
	if r, err := s.RuleSet(ctx, "b", 1+store.KeepRuleSetVersions); err != nil || string(r.SharedData) != "part two" {
		t.Fatalf("b's latest: %+v, %v", r, err)
	}
}

func testNodes(t *testing.T, open Open) {
	s := open(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	n := store.Node{Name: "a", Capabilities: []string{"x", "y"}, AppliedVersion: 7, AppliedHash: "h", LastContact: now, CertExpiry: now, LastError: "e"}
	if err := s.SaveNodes(ctx, []store.Node{n}); err != nil {
		t.Fatal(err)
	}
	n.AppliedVersion = 8
	if err := s.SaveNodes(ctx, []store.Node{n}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Nodes(ctx)
	if err != nil || len(got) != 1 || got[0].AppliedVersion != 8 || !got[0].LastContact.Equal(now) || len(got[0].Capabilities) != 2 {
		t.Errorf("nodes: %+v, %v", got, err)
	}
}

// ConsumeConcurrently makes n concurrent ConsumeJoinToken calls for id at
// now, spread over the handles (store handles on one database, as
// several controller processes have), each with a secret check slow
// enough for the others to overlap it, and returns how many won and how
// many were refused as used; any other error fails the test.
func ConsumeConcurrently(t testing.TB, handles []store.Store, id string, now time.Time, n int) (wins, used int) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range n {
		s := handles[i%len(handles)]
		wg.Go(func() {
			_, err := s.ConsumeJoinToken(context.Background(), id, now, func(store.JoinToken) error {
				time.Sleep(5 * time.Millisecond)
				return nil
			}, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrTokenUsed):
				used++
			default:
				t.Errorf("concurrent use of %s: %v", id, err)
			}
		})
	}
	wg.Wait()
	return wins, used
}
