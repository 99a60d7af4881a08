package leader

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store/postgres"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// database makes a fresh database with the store's schema (the tables
// are the store's migration 3) and returns its connection configuration.
func database(t *testing.T) *pgx.ConnConfig {
	t.Helper()
	dsn := pgtest.DSN(t)
	pool, err := postgres.ParseDSN(dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	st, err := postgres.Open(t.Context(), postgres.Config{Pool: pool, CAKeyKey: key})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	return pool.ConnConfig
}

func newElector(t *testing.T, conn *pgx.ConnConfig, instance string) *Elector {
	t.Helper()
	e, err := New(Config{Conn: conn, Instance: instance, GRPC: instance + ":7443", API: "https://" + instance + ":8080",
		RetryInterval: 100 * time.Millisecond, PingInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// campaignFor campaigns for at most d: a Term, or nil when it did not
// lead in that time.
func campaignFor(t *testing.T, e *Elector, d time.Duration) *Term {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	term, err := e.Campaign(ctx)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("campaign of %s: %v", e.Instance(), err)
	}
	return term
}

// TestPostgresLeaderOneAtATime: of two electors on one database one
// leads; the other stays a standby that names it; the leader's resignation
// hands over, with a higher term; the listing says who leads.
func TestPostgresLeaderOneAtATime(t *testing.T) {
	conn := database(t)
	a, b := newElector(t, conn, "ctl-a"), newElector(t, conn, "ctl-b")
	ta := campaignFor(t, a, 30*time.Second)
	if ta == nil {
		t.Fatal("the first elector did not lead")
	}
	defer ta.Resign()
	if tb := campaignFor(t, b, time.Second); tb != nil {
		tb.Resign()
		t.Fatal("a second elector leads while the first holds the lock")
	}
	if l, ok := b.Leader(); !ok || l.Instance != "ctl-a" || l.GRPC != "ctl-a:7443" || l.API != "https://ctl-a:8080" {
		t.Errorf("the standby's view of the leader: %+v, %v", l, ok)
	}
	pool, err := pgx.ConnectConfig(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close(context.Background())
	list, err := List(t.Context(), pool, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Instance != "ctl-a" || list[0].Role != RoleLeader || list[0].Term != ta.Number() ||
		list[1].Instance != "ctl-b" || list[1].Role != RoleStandby {
		t.Errorf("list: %+v", list)
	}

	ta.Resign()
	select {
	case <-ta.Lost():
	default:
		t.Error("a resigned term is not lost")
	}
	if ta.Err() != nil {
		t.Errorf("a resigned term's error: %v", ta.Err())
	}
	tb := campaignFor(t, b, 30*time.Second)
	if tb == nil {
		t.Fatal("the standby did not take over after the resignation")
	}
	defer tb.Resign()
	if tb.Number() <= ta.Number() {
		t.Errorf("term went from %d to %d: want it to grow", ta.Number(), tb.Number())
	}
	list, err = List(t.Context(), pool, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Instance != "ctl-b" || list[0].Role != RoleLeader {
		t.Errorf("list after the hand-over (the resigned controller's row deleted): %+v", list)
	}
	// A gone controller is listed as gone.
	if list, err = List(t.Context(), pool, time.Now().Add(StaleAfter+time.Second)); err != nil || list[0].Role != RoleGone {
		t.Errorf("list later: %+v, %v", list, err)
	}
}

// TestPostgresLeaderSessionLost: the server ends the leader's session (as
// when the leader's host dies): the leader's term is lost with an error,
// and the standby takes over.
func TestPostgresLeaderSessionLost(t *testing.T) {
	conn := database(t)
	a, b := newElector(t, conn, "ctl-a"), newElector(t, conn, "ctl-b")
	ta := campaignFor(t, a, 30*time.Second)
	if ta == nil {
		t.Fatal("the first elector did not lead")
	}
	defer ta.Resign()
	admin, err := pgx.ConnectConfig(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var n int
	if err := admin.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'eastguard-leader' AND datname = current_database()`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the leader's session: %d sessions, %v", n, err)
	}
	select {
	case <-ta.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the leader did not notice its session was gone")
	}
	if ta.Err() == nil {
		t.Error("a term lost with its session has no error")
	}
	start := time.Now()
	tb := campaignFor(t, b, 30*time.Second)
	if tb == nil {
		t.Fatal("the standby did not take over")
	}
	defer tb.Resign()
	t.Logf("the standby led %s after the leader's session ended", time.Since(start))
	// The old leader campaigns again (a restarted process would): it
	// stands by, naming the new leader.
	if again := campaignFor(t, a, 500*time.Millisecond); again != nil {
		again.Resign()
		t.Fatal("the old leader leads again while the new one holds the lock")
	}
	if l, ok := a.Leader(); !ok || l.Instance != "ctl-b" {
		t.Errorf("the old leader's view: %+v, %v", l, ok)
	}
}

// TestPostgresLeaderConfig: New refuses what would break the invariant.
func TestPostgresLeaderConfig(t *testing.T) {
	conn, err := pgx.ParseConfig("postgres:///x?host=/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Conn: conn}); err == nil {
		t.Error("no instance: accepted")
	}
	if _, err := New(Config{Conn: conn, Instance: "a", PingInterval: 5 * time.Second, PingTimeout: 6 * time.Second}); err == nil {
		t.Error("a ping slower than the server's keepalive window: accepted")
	}
	e, err := New(Config{Conn: conn, Instance: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.cfg.Conn.RuntimeParams["tcp_keepalives_idle"]; got != "5" {
		t.Errorf("session keepalive idle: %q", got)
	}
	if conn.RuntimeParams["tcp_keepalives_idle"] != "" {
		t.Error("New changed the caller's configuration")
	}
}
