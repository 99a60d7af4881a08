package audit

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/testutil"
)

func openStore(t *testing.T) *sqlite.SQLite {
	t.Helper()
	s, err := sqlite.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func appendN(t *testing.T, r *Recorder, n int) {
	t.Helper()
	for range n {
		if err := r.Append(context.Background(), storetest.AuditRecord(PolicyApply, "Policy/p", time.Now())); err != nil {
			t.Fatal(err)
		}
	}
}

// logged reads the log file's records; every line must be one.
func logged(t *testing.T, path string) []apiclient.AuditRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []apiclient.AuditRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == "" {
			continue
		}
		var r apiclient.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func ids(recs []apiclient.AuditRecord) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func wantIDs(t *testing.T, recs []apiclient.AuditRecord, n int) {
	t.Helper()
	got := ids(recs)
	if len(got) != n {
		t.Fatalf("logged ids %v, want 1 to %d", got, n)
	}
	for i, id := range got {
		if id != uint64(i+1) {
			t.Fatalf("logged ids %v, want 1 to %d once each", got, n)
		}
	}
}

// TestLogFile: records reach the file after the commit, once each, also
// across restarts and after a line cut short by a crash; the file is
// mode 0600 whatever it was.
func TestLogFile(t *testing.T) {
	st := openStore(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := NewRecorder(ctx, Config{Store: st, LogFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("log file mode: %v, %v", info, err)
	}
	appendN(t, r, 3)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	recs := logged(t, path)
	wantIDs(t, recs, 3)
	stored := storetest.AllAudit(t, st)
	for i := range recs {
		if recs[i].Hash != stored[i].Hash || recs[i].Action != PolicyApply || !recs[i].Time.Equal(stored[i].Time) {
			t.Errorf("line %d: %+v, stored %+v", i+1, recs[i], stored[i])
		}
	}
	// A restart neither repeats nor skips: records made while no
	// recorder ran are written at the next.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AppendAudit(ctx, storetest.AuditRecord(NodeJoin, "node/a", time.Now())); err != nil {
		t.Fatal(err)
	}
	if r, err = NewRecorder(ctx, Config{Store: st, LogFile: path}); err != nil {
		t.Fatal(err)
	}
	appendN(t, r, 1)
	if err := r.Close(); err != nil { // Close flushes
		t.Fatal(err)
	}
	wantIDs(t, logged(t, path), 5)
	// A crash in the middle of a line: the cut line is ended, and the
	// record it held is written again after it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":6,"time":"20`)
	f.Close()
	if _, err := st.AppendAudit(ctx, storetest.AuditRecord(NodeJoin, "node/b", time.Now())); err != nil {
		t.Fatal(err)
	}
	if r, err = NewRecorder(ctx, Config{Store: st, LogFile: path}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 7 || lines[5] != `{"id":6,"time":"20` || !strings.HasPrefix(lines[6], `{"id":6,`) {
		t.Errorf("after a cut line: %q", lines[4:])
	}
}

// TestLogFileRefused: a symbolic link, a FIFO and a missing directory
// are refused at start with an error naming the flag.
func TestLogFileRefused(t *testing.T) {
	st := openStore(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o600)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{link, fifo, filepath.Join(dir, "no", "such")} {
		_, err := NewRecorder(context.Background(), Config{Store: st, LogFile: path})
		if err == nil || !strings.Contains(err.Error(), "--audit-log") {
			t.Errorf("%s: %v, want refused naming --audit-log", path, err)
		}
	}
	if _, err := NewRecorder(context.Background(), Config{Store: st, Retention: -time.Hour}); err == nil {
		t.Error("a negative retention was accepted")
	}
}

// TestLogWriteFailure: a failed write is counted, logged once, never
// stops Append (the store has the record), and the records are written
// at the next flush that can.
func TestLogWriteFailure(t *testing.T) {
	st := openStore(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	reg := prometheus.NewRegistry()
	ctx := context.Background()
	r, err := NewRecorder(ctx, Config{Store: st, LogFile: path, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	good := r.file
	ro, err := os.Open(path) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	r.file = ro
	appendN(t, r, 2)
	if err := r.Flush(ctx); err == nil {
		t.Fatal("a write to a read-only file succeeded")
	}
	if err := r.Flush(ctx); err == nil {
		t.Fatal("a write to a read-only file succeeded")
	}
	if n := promtest.ToFloat64(r.m.logFailures); n != 2 {
		t.Errorf("%v failures counted, want 2", n)
	}
	if got := storetest.AllAudit(t, st); len(got) != 2 {
		t.Errorf("%d records stored, want 2 whatever the file", len(got))
	}
	r.file = good
	ro.Close()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	wantIDs(t, logged(t, path), 2)
	if n := promtest.ToFloat64(r.m.logLastRecord); n != 2 {
		t.Errorf("last logged record %v, want 2", n)
	}
	if n := promtest.ToFloat64(r.m.records.WithLabelValues(PolicyApply)); n != 2 {
		t.Errorf("%v policy.apply records counted, want 2", n)
	}
	testutil.LintMetrics(t, reg, 5)
}

// TestVerifyAndRetention: an edit made in the database around its
// trigger is found by the chain check (and the gauge says so);
// retention deletes what is older than it, oldest first.
func TestVerifyAndRetention(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	r, err := NewRecorder(ctx, Config{Store: st, Now: clock, Retention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i, age := range []time.Duration{72 * time.Hour, 48 * time.Hour, time.Hour, 0} {
		if _, err := st.AppendAudit(ctx, storetest.AuditRecord(PolicyApply, "Policy/p"+string(rune('a'+i)), now.Add(-age))); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Verify(ctx); err != nil || promtest.ToFloat64(r.m.chainBroken) != 0 {
		t.Fatalf("intact chain: %v", err)
	}
	r.prune(ctx)
	if got := storetest.AllAudit(t, st); len(got) != 2 || got[0].ID != 3 {
		t.Fatalf("after retention: %+v", got)
	}
	if err := r.Verify(ctx); err != nil {
		t.Fatalf("chain after retention: %v", err)
	}
	db, err := sql.Open("sqlite", st.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("DROP TRIGGER audit_append_only; UPDATE audit SET actor = 'mallory' WHERE id = 3"); err != nil {
		t.Fatal(err)
	}
	var ce *store.AuditChainError
	if err := r.Verify(ctx); !errors.As(err, &ce) || ce.ID != 3 {
		t.Errorf("edited record: %v, want a break at 3", err)
	}
	if promtest.ToFloat64(r.m.chainBroken) != 1 {
		t.Error("chain-broken gauge not set")
	}
}

// TestRecord: the actor comes from the context (the controller's own
// without one), and what a caller controls is bounded.
func TestRecord(t *testing.T) {
	at := time.Now()
	r := Record(context.Background(), at, AdminTokenCreate, "admin-token/x", "")
	if r.ActorKind != store.ActorController || r.Actor != "controller" || !r.Time.Equal(at) {
		t.Errorf("without an actor: %+v", r)
	}
	ctx := WithActor(context.Background(), Actor{Kind: store.ActorCertificate, ID: strings.Repeat("é", 300), Source: "192.0.2.1:1"})
	r = Record(ctx, at, LoginSuccess, "", strings.Repeat("x", 5000))
	if r.ActorKind != store.ActorCertificate || r.Source != "192.0.2.1:1" || len(r.Actor) > maxField+4 || len(r.Detail) > maxDetail+4 ||
		!strings.HasSuffix(r.Actor, "é…") {
		t.Errorf("clipped record: actor %d bytes %q…, detail %d bytes", len(r.Actor), r.Actor[len(r.Actor)-8:], len(r.Detail))
	}
	if Hash(nil) != "" || len(Hash([]byte{})) != 64 {
		t.Error("Hash of nothing and of an empty document")
	}
}
