package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testKey is a sealing key for one test.
func testKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	rand.Read(k)
	return k
}

// openDSN opens the store on dsn with key (and cfg's other fields),
// closed when the test ends.
func openDSN(t testing.TB, dsn string, key []byte, cfg Config) (*Postgres, error) {
	t.Helper()
	pc, err := ParseDSN(dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Pool, cfg.CAKeyKey = pc, key
	s, err := Open(context.Background(), cfg)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// openTest opens a store on a fresh database. Partitions are made for
// any time of the last ten years, so that the suite's fixed dates
// exercise them.
func openTest(t testing.TB) *Postgres {
	t.Helper()
	s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPostgresConformance(t *testing.T) {
	storetest.Run(t, func(t testing.TB) store.Store { return openTest(t) })
}

// TestPostgresConformanceHourly runs the suite with hourly partitions.
func TestPostgresConformanceHourly(t *testing.T) {
	storetest.Run(t, func(t testing.TB) store.Store {
		s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{Partition: PartitionHour, PartitionLookback: 10 * 365 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestPostgresMigrations: reopening migrates nothing twice; a schema
// newer than the binary is refused untouched; a failing migration leaves
// the schema as it was.
func TestPostgresMigrations(t *testing.T) {
	dsn := pgtest.DSN(t)
	key := testKey(t)
	ctx := context.Background()
	s, err := openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.InitCA(ctx, []byte("cert"), []byte("key")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if cert, _, err := s.CA(ctx); err != nil || string(cert) != "cert" {
		t.Errorf("CA after reopen: %q, %v", cert, err)
	}
	// A migration that fails half-way changes nothing.
	bad := append(append([]string(nil), migrations...), "CREATE TABLE half_done (x INTEGER); SELECT 1/0")
	if err := migrate(ctx, s.pool, bad); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("migration %d", len(bad))) {
		t.Errorf("failing migration: %v", err)
	}
	var half bool
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass('half_done') IS NOT NULL").Scan(&half); err != nil || half {
		t.Errorf("table of a failed migration exists: %v, %v", half, err)
	}
	if v, err := schemaVersion(ctx, s.pool); err != nil || v != len(migrations) {
		t.Errorf("version after a failed migration: %d, %v", v, err)
	}
	// A newer schema is refused with a clear error.
	if _, err := s.pool.Exec(ctx, "UPDATE eastguard_schema SET version = 99"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := openDSN(t, dsn, key, Config{}); !errors.Is(err, ErrSchemaNewer) || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("open of a newer schema: %v", err)
	}
}

// TestPostgresCAKeyEncrypted: the CA key is not in the table in clear
// (nor the PEM's base64), the certificate is; a wrong key is refused at
// start with an error that says so and changes nothing; a key file is
// 32 raw bytes or 64 hex digits.
func TestPostgresCAKeyEncrypted(t *testing.T) {
	dsn := pgtest.DSN(t)
	key := testKey(t)
	ctx := context.Background()
	s, err := openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDSECRETSECRETSECRETSECRETSECRET\n-----END EC PRIVATE KEY-----\n")
	cert := []byte("-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n")
	if err := s.InitCA(ctx, cert, secret); err != nil {
		t.Fatal(err)
	}
	var rawCert, sealed []byte
	if err := s.pool.QueryRow(ctx, "SELECT cert_pem, key_sealed FROM ca").Scan(&rawCert, &sealed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rawCert, cert) {
		t.Errorf("certificate not stored in clear: %q", rawCert)
	}
	for _, part := range [][]byte{secret, []byte("SECRETSECRET"), []byte("PRIVATE KEY")} {
		if bytes.Contains(sealed, part) {
			t.Errorf("the stored CA key contains %q", part)
		}
	}
	// Nor anywhere in a dump of the table's text.
	var dump string
	if err := s.pool.QueryRow(ctx, "SELECT ca::text FROM ca").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump, "SECRET") || strings.Contains(dump, "5345435245") { // hex of "SECRE"
		t.Errorf("table text shows the key: %s", dump)
	}
	if _, got, err := s.CA(ctx); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("CA key read back: %q, %v", got, err)
	}
	s.Close()

	if _, err := openDSN(t, dsn, testKey(t), Config{}); !errors.Is(err, ErrCAKeyWrongKey) || !strings.Contains(err.Error(), "--ca-key-encryption-key-file") {
		t.Errorf("open with a wrong key: %v", err)
	}
	s, err = openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatalf("the right key after a wrong one: %v", err)
	}
	var after []byte
	if err := s.pool.QueryRow(ctx, "SELECT key_sealed FROM ca").Scan(&after); err != nil || !bytes.Equal(after, sealed) {
		t.Errorf("the wrong key changed the stored key: %v", err)
	}
	if _, err := openDSN(t, dsn, key[:16], Config{}); err == nil || !strings.Contains(err.Error(), "want 32") {
		t.Errorf("short key: %v", err)
	}

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hexKey := []byte("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
	for name, c := range map[string]struct {
		content []byte
		ok      bool
	}{
		"raw": {key, true}, "hex": {hexKey, true}, "short": {key[:31], false},
		"bad-hex": {bytes.Replace(hexKey, []byte("00"), []byte("zz"), 1), false}, "empty": {nil, false},
	} {
		got, err := LoadKeyFile(write(name, c.content))
		if c.ok != (err == nil) || (err == nil && len(got) != KeySize) {
			t.Errorf("key file %s: %d bytes, %v", name, len(got), err)
		}
	}
}

// TestPostgresJoinTokenRace: two store handles (two controller
// processes) on one database race to consume one join token, many times
// each: exactly one use wins.
func TestPostgresJoinTokenRace(t *testing.T) {
	dsn := pgtest.DSN(t)
	key := testKey(t)
	a, err := openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := openDSN(t, dsn, key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	for round := range 10 {
		id := "race-" + string(rune('a'+round))
		if err := a.AddJoinToken(ctx, store.JoinToken{ID: id, SecretHash: "h", Node: "n", Created: now, Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		wins, used := storetest.ConsumeConcurrently(t, []store.Store{a, b}, id, now, 8)
		if wins != 1 || used != 7 {
			t.Fatalf("round %d: %d wins, %d refused as used", round, wins, used)
		}
	}
}

// TestPostgresRuleSetVersionsNeverBack: a controller process sharing the
// database cannot commit a node's version at or below the stored one.
func TestPostgresRuleSetVersionsNeverBack(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	commit := func(v uint64) error {
		return s.CommitPolicy(ctx, store.PolicyCommit{RuleSets: []store.RuleSetRecord{{Node: "n", Version: v, Hash: "h", Data: []byte("{}")}}})
	}
	for _, v := range []uint64{1, 2, 3, 20} {
		if err := commit(v); err != nil {
			t.Fatal(err)
		}
	}
	// Version 5 was never stored (pruned or skipped), but it is behind 20.
	if err := commit(5); !errors.Is(err, store.ErrExists) {
		t.Errorf("commit of a version behind the newest: %v", err)
	}
	if rs, err := s.LatestRuleSets(ctx); err != nil || len(rs) != 1 || rs[0].Version != 20 {
		t.Errorf("latest: %+v, %v", rs, err)
	}
}

// partitionNames lists the flows table's partitions as PostgreSQL has
// them attached.
func partitionNames(t *testing.T, s *Postgres) []string {
	t.Helper()
	rows, err := s.pool.Query(context.Background(), `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'flows'::regclass ORDER BY c.relname`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func countIn(t *testing.T, s *Postgres, table string) int64 {
	t.Helper()
	var n int64
	if err := s.pool.QueryRow(context.Background(), "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPostgresPartitions: a partition per day is made for the records'
// days in the window; records outside it (a hostile agent's times from
// 2000 to 2200) go to flows_default and make no table; a partition made
// later takes its rows out of flows_default; retention drops whole
// partitions and trims the one the bound falls in; the size counts the
// partitions.
func TestPostgresPartitions(t *testing.T) {
	now := time.Date(2026, 5, 10, 12, 0, 0, 0, time.UTC)
	var clock sync.Mutex
	nowFn := func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{Now: nowFn, PartitionLookback: 5 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	day := 24 * time.Hour
	var recs []flowrecord.Record
	for d := range 4 { // May 7 to 10, 10 flows a day
		for i := range 10 {
			recs = append(recs, storetest.Flow(i, now.Add(-time.Duration(d)*day+time.Duration(i)*time.Minute)))
		}
	}
	// Out of the window: far past, far future, one a day ahead of the
	// window's end (May 13).
	for _, at := range []time.Time{time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2199, 1, 1, 0, 0, 0, 0, time.UTC),
		now.Add(3 * day)} {
		recs = append(recs, storetest.Flow(1, at))
	}
	storetest.InsertFlows(t, s, recs)
	want := []string{"flows_default", "flows_p2026050700", "flows_p2026050800", "flows_p2026050900", "flows_p2026051000"}
	if got := partitionNames(t, s); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("partitions %v, want %v", got, want)
	}
	if n := countIn(t, s, "flows_p2026050800"); n != 10 {
		t.Errorf("May 8's partition holds %d flows, want 10", n)
	}
	if n := countIn(t, s, "flows_default"); n != 3 {
		t.Errorf("default partition holds %d flows, want 3", n)
	}
	// Two days later May 13 is in the window: its partition takes its
	// row from flows_default.
	clock.Lock()
	now = now.Add(2 * day)
	clock.Unlock()
	storetest.InsertFlows(t, s, []flowrecord.Record{storetest.Flow(2, time.Date(2026, 5, 13, 1, 0, 0, 0, time.UTC))})
	if n := countIn(t, s, "flows_p2026051300"); n != 2 {
		t.Errorf("May 13's partition holds %d flows, want 2 (one moved from the default partition)", n)
	}
	if n := countIn(t, s, "flows_default"); n != 2 {
		t.Errorf("default partition holds %d flows, want 2", n)
	}
	size, count, err := s.EventStoreSize(ctx)
	if err != nil || count != 44 || size < 5*8192 {
		t.Errorf("size %d, %d flows, %v", size, count, err)
	}
	// Retention to May 8 12:00: May 7 dropped whole, with the 2001 flow
	// of the default partition; May 8's morning trimmed (limited to 3
	// rows, then the rest).
	n, err := s.PruneFlows(ctx, time.Date(2026, 5, 8, 12, 5, 0, 0, time.UTC), 3)
	if err != nil || n != 10+3 {
		t.Errorf("pruned %d, %v; want 10 (a partition) + 3", n, err)
	}
	if n, err := s.PruneFlows(ctx, time.Date(2026, 5, 8, 12, 5, 0, 0, time.UTC), 100); err != nil || n != 3 {
		t.Errorf("pruned %d, %v; want the last 3 of May 8 before 12:05", n, err)
	}
	names := strings.Join(partitionNames(t, s), " ")
	if strings.Contains(names, "flows_p2026050700") || !strings.Contains(names, "flows_p2026050800") {
		t.Errorf("partitions after retention: %s", names)
	}
	// PruneFlows made today's (May 12) and tomorrow's partitions ahead.
	if !strings.Contains(names, "flows_p2026051200") || !strings.Contains(names, "flows_p2026051300") {
		t.Errorf("partitions ahead not made: %s", names)
	}
	// The oldest 20 flows: May 8's 5 left (12:05 to 12:09) and May 9's 10
	// dropped whole, then May 10's 5 oldest trimmed.
	if n, err := s.PruneOldestFlows(ctx, 20); err != nil || n != 20 {
		t.Errorf("pruned oldest %d, %v", n, err)
	}
	if names := strings.Join(partitionNames(t, s), " "); strings.Contains(names, "flows_p2026050800") || strings.Contains(names, "flows_p2026050900") {
		t.Errorf("partitions after size retention: %s", names)
	}
	left, err := s.Flows(ctx, store.FlowQuery{})
	if err != nil || len(left) != 44-10-6-20 {
		t.Fatalf("%d flows left, %v", len(left), err)
	}
	if oldest := left[len(left)-1].Time; !oldest.Equal(time.Date(2026, 5, 10, 12, 5, 0, 0, time.UTC)) {
		t.Errorf("oldest flow left %v", oldest)
	}
}

// TestPostgresCopyLargeBatch: one InsertFlows of 50,000 records (COPY)
// stores them all, across two days' partitions, in one transaction; a
// failing transaction stores none of them.
func TestPostgresCopyLargeBatch(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	base := time.Now().UTC().Truncate(24 * time.Hour).Add(-time.Hour)
	recs := make([]flowrecord.Record, 50_000)
	for i := range recs {
		recs[i] = storetest.Flow(i, base.Add(time.Duration(i)*100*time.Millisecond))
	}
	storetest.InsertFlowsRolledBack(t, s, recs)
	if _, n, err := s.EventStoreSize(ctx); err != nil || n != 0 {
		t.Fatalf("after a rolled back batch: %d flows, %v", n, err)
	}
	start := time.Now()
	storetest.InsertFlows(t, s, recs)
	t.Logf("50,000 records in one COPY: %s", time.Since(start).Round(time.Millisecond))
	if _, n, err := s.EventStoreSize(ctx); err != nil || n != 50_000 {
		t.Errorf("%d flows stored, %v", n, err)
	}
	before := base.Add(time.Hour) // the day boundary
	day1 := countIn(t, s, partitionName(s.partitionStart(base.UnixNano())))
	day2 := countIn(t, s, partitionName(s.partitionStart(before.UnixNano())))
	if day1 != 36_000 || day2 != 14_000 {
		t.Errorf("partitions hold %d and %d, want 36000 and 14000", day1, day2)
	}
	got, err := s.Flows(ctx, store.FlowQuery{Limit: 1})
	if err != nil || len(got) != 1 || !got[0].Time.Equal(recs[len(recs)-1].Time) || got[0].SrcPort != recs[len(recs)-1].SrcPort {
		t.Errorf("newest: %+v, %v", got, err)
	}
}

// TestPostgresDSN: the password never shows in what is logged; it comes
// from the DSN or the password file, not both.
func TestPostgresDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://eg:s3cret@db.example.com:5432/eastguard?sslmode=verify-full": "postgres://eg:xxxxx@db.example.com:5432/eastguard?sslmode=verify-full",
		"postgresql://eg@db/eastguard?password=s3cret&sslmode=require":           "postgresql://eg@db/eastguard?password=xxxxx&sslmode=require",
		"postgres://eg@db/eastguard":                                             "postgres://eg@db/eastguard",
		"host=db password=s3cret":                                                "(a DSN that is not a postgres:// URL)",
	} {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseDSN("postgres://eg@db/eastguard", pwFile)
	if err != nil || cfg.ConnConfig.Password != "fromfile" || cfg.ConnConfig.User != "eg" {
		t.Errorf("password file: %v", err)
	}
	if _, err := ParseDSN("postgres://eg:s3cret@db/eastguard", pwFile); err == nil {
		t.Error("a password in the DSN and in a file accepted")
	}
	for _, bad := range []string{"host=db password=s3cret", "postgres://eg:s3cret@db/eastguard?sslmode=nonsense", "mysql://x"} {
		_, err := ParseDSN(bad, "")
		if err == nil {
			t.Errorf("ParseDSN(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseDSN(%q) error shows the password: %v", bad, err)
		}
	}
}

// BenchmarkPostgresInsertFlows: flow ingest into PostgreSQL (COPY)
// through the store's insert path, batches of 1,000, beside SQLite's
// BenchmarkInsertFlows (controller/store/sqlite). Measure with
//
//	go test -run '^$' -bench PostgresInsertFlows -benchtime 200x ./controller/store/postgres/
func BenchmarkPostgresInsertFlows(b *testing.B) {
	storetest.BenchmarkInsertFlows(b, openBench, 1000)
}

// openBench opens a store on a new database, with the default
// configuration.
func openBench(t testing.TB) store.Store {
	s, err := openDSN(t, pgtest.DSN(t), testKey(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// BenchmarkPostgresInsertFleetFlows: the same with a fleet's flows, nearly
// each an edge of its own in its minute (the rollup's most writes per
// record), as SQLite's BenchmarkInsertFleetFlows:
//
//	go test -run '^$' -bench PostgresInsertFleetFlows -benchtime 200x ./controller/store/postgres/
func BenchmarkPostgresInsertFleetFlows(b *testing.B) {
	storetest.BenchmarkInsertFleetFlows(b, openBench, 1000)
}

// TestPostgresPartitionSizeChange: after a switch from daily to hourly
// partitions, records of a day that has its daily partition go there
// (no overlapping hourly one is made); the next day gets hourly ones.
func TestPostgresPartitionSizeChange(t *testing.T) {
	dsn := pgtest.DSN(t)
	key := testKey(t)
	now := time.Date(2026, 5, 10, 23, 0, 0, 0, time.UTC)
	at := func() time.Time { return now }
	s, err := openDSN(t, dsn, key, Config{Now: at})
	if err != nil {
		t.Fatal(err)
	}
	storetest.InsertFlows(t, s, []flowrecord.Record{storetest.Flow(0, now)})
	s.Close()
	s, err = openDSN(t, dsn, key, Config{Now: at, Partition: PartitionHour})
	if err != nil {
		t.Fatal(err)
	}
	storetest.InsertFlows(t, s, []flowrecord.Record{storetest.Flow(1, now.Add(30*time.Minute)), storetest.Flow(2, now.Add(90*time.Minute))})
	want := "flows_default flows_p2026051000 flows_p2026051100"
	if got := strings.Join(partitionNames(t, s), " "); got != want {
		t.Errorf("partitions %s, want %s", got, want)
	}
	if n := countIn(t, s, "flows_p2026051000"); n != 2 {
		t.Errorf("the daily partition holds %d flows, want 2", n)
	}
}

// TestPostgresAuditAppendOnly shows that the database refuses to change
// or truncate audit records, whoever asks (a bug, or a role with write
// access to the table but not its ownership), while retention's DELETE
// of the oldest stays possible; and that an edit made around the trigger
// (by the table's owner) breaks the chain.
func TestPostgresAuditAppendOnly(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	now := time.Now()
	if _, err := s.AppendAudit(ctx, storetest.AuditRecord("policy.apply", "Policy/a", now), storetest.AuditRecord("policy.apply", "Policy/b", now)); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{"UPDATE audit SET actor = 'someone-else' WHERE id = 1", "UPDATE audit SET id = 7 WHERE id = 2", "TRUNCATE audit"} {
		_, err := s.Pool().Exec(ctx, stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want refused as append-only", stmt, err)
		}
	}
	if n, err := s.PruneAudit(ctx, now.Add(time.Hour)); err != nil || n != 1 {
		t.Errorf("retention: %d deleted, %v", n, err)
	}
	if _, err := s.Pool().Exec(ctx, "ALTER TABLE audit DISABLE TRIGGER audit_no_update"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, "UPDATE audit SET detail = 'nothing to see' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	recs, err := s.AuditRecords(ctx, store.AuditQuery{OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	var ce *store.AuditChainError
	if err := store.VerifyAuditChain(nil, recs); !errors.As(err, &ce) || ce.ID != 2 {
		t.Errorf("edited record: %v, want a break at record 2", err)
	}
}
