package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/storetest"
)

func openTest(t testing.TB, dir string) *SQLite {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestOpenModesAndMigrations(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s := openTest(t, dir)
	for path, want := range map[string]os.FileMode{dir: 0o700, s.Path(): 0o600} {
		info, err := os.Stat(path)
		if err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, info.Mode().Perm(), err, want)
		}
	}
	ctx := context.Background()
	if err := s.InitCA(ctx, []byte("cert"), []byte("key")); err != nil {
		t.Fatal(err)
	}
	if err := s.InitCA(ctx, []byte("other"), []byte("key")); !errors.Is(err, store.ErrExists) {
		t.Errorf("second CA: %v", err)
	}
	s.Close()
	// Reopening runs no migration twice and keeps the data.
	s = openTest(t, dir)
	if cert, _, err := s.CA(ctx); err != nil || string(cert) != "cert" {
		t.Errorf("CA after reopen: %q, %v", cert, err)
	}
	// A database from a newer controller is left alone.
	if _, err := s.db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir); err == nil {
		t.Error("opened a schema newer than this controller knows")
	}
}

// TestConformance runs the store's conformance suite on SQLite.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t testing.TB) store.Store { return openTest(t, t.TempDir()) })
}

// TestAdminTokens: the token of a store of the first schema is the
// admin.conf token after the migrations.
func TestAdminTokens(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// A store of the first schema holds the token admin.conf carries.
	db, err := openDB(filepath.Join(dir, SQLiteFile), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(ctx, db, migrations[:1], nil); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO admin_tokens (id, secret_hash, created) VALUES ('old', 'h0', 1)"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openTest(t, dir)
	old, err := s.AdminToken(ctx, "old")
	if err != nil || old.Name != "admin.conf" || old.SecretHash != "h0" || !old.Expires.IsZero() || !old.Revoked.IsZero() {
		t.Fatalf("token of the first schema after migration: %+v, %v", old, err)
	}
	// The rest of the admin tokens' behaviour is the conformance suite's
	// (storetest.Run).
	list, err := s.AdminTokens(ctx)
	if err != nil || len(list) != 1 || list[0] != old {
		t.Errorf("list: %+v, %v", list, err)
	}
}

// TestOpenPathWithURICharacters: a data directory whose name holds what
// a SQLite URI reads specially ('#', '?', '%') opens the database inside
// it, and again after a restart.
func TestOpenPathWithURICharacters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl#1?x=%41")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("open %s: %v", dir, err)
		}
		s.Close()
	}
	if _, err := os.Stat(filepath.Join(dir, "eastguard.db")); err != nil {
		t.Errorf("the database is not inside the data directory: %v", err)
	}
}

// BenchmarkInsertFlows: flow ingest into SQLite through the store's
// insert path, batches of 1,000 (BenchmarkPostgresInsertFlows is the
// same on PostgreSQL). Measure with
//
//	go test -run '^$' -bench InsertFlows -benchtime 200x ./controller/store/sqlite/
func BenchmarkInsertFlows(b *testing.B) {
	storetest.BenchmarkInsertFlows(b, func(t testing.TB) store.Store { return openTest(t, t.TempDir()) }, 1000)
}

// BenchmarkInsertFleetFlows: the same with a fleet's flows, nearly each
// an edge of its own in its minute (the rollup's most writes per record):
//
//	go test -run '^$' -bench InsertFleetFlows -benchtime 200x ./controller/store/sqlite/
func BenchmarkInsertFleetFlows(b *testing.B) {
	storetest.BenchmarkInsertFleetFlows(b, func(t testing.TB) store.Store { return openTest(t, t.TempDir()) }, 1000)
}

// TestAuditAppendOnly shows that the database itself refuses to change an
// audit record, whoever asks (a bug, or someone with the file and the
// sqlite3 shell), while retention's DELETE of the oldest stays possible;
// and that an edit made around the trigger breaks the chain.
func TestAuditAppendOnly(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	now := time.Now()
	if _, err := s.AppendAudit(ctx, storetest.AuditRecord("policy.apply", "Policy/a", now), storetest.AuditRecord("policy.apply", "Policy/b", now)); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"UPDATE audit SET actor = 'someone-else' WHERE id = 1", "UPDATE audit SET id = 7 WHERE id = 2"} {
		_, err := s.db.ExecContext(ctx, stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want refused as append-only", stmt, err)
		}
	}
	// Dropping the trigger is possible for whoever has the file: the
	// chain then shows the edit.
	if _, err := s.db.ExecContext(ctx, "DROP TRIGGER audit_append_only; UPDATE audit SET actor = 'someone-else' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	recs, err := s.AuditRecords(ctx, store.AuditQuery{OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	var ce *store.AuditChainError
	if err := store.VerifyAuditChain(nil, recs); !errors.As(err, &ce) || ce.ID != 1 {
		t.Errorf("edited record: %v, want a break at record 1", err)
	}
}
