// Package leader owns the leadership of controllers sharing one PostgreSQL
// database (high availability): at most one leads, the others stand by.
//
// The leader is the process holding a session-level advisory lock
// (pg_try_advisory_lock) on a dedicated connection of its own, never one
// of the store's pool: the lock lives exactly as long as that session, so
// a leader that dies (kill -9, a lost node) releases it when its
// connection closes and a standby, trying every RetryInterval, takes over.
//
// Invariant: a process acts as leader only while it knows its session is
// alive. The leader pings its session every PingInterval with a
// PingTimeout; the first failure ends its term (Term.Lost), and the
// controller then stops serving as leader (it exits, and its supervisor
// restarts it as a standby). The server drops a silent session only after
// its TCP keepalives fail (set on the session: KeepaliveIdle +
// KeepaliveCount x KeepaliveInterval, 11 s), longer than PingInterval +
// PingTimeout (3 s), so the old leader has stepped down before the lock
// can be granted to another: two leaders never act at once, short of a
// paused process (a leader frozen longer than the keepalive window finds
// its term lost at its next ping, and may have finished at most the
// writes it had started).
//
// The tables controller_leader (who leads, and the term, which grows at
// each change of leader) and controllers (every process, its role and
// advertised addresses) belong to the PostgreSQL store's schema
// (controller/store/postgres, migration 3); this package writes them on
// its session and reads them for egctl status and the standbys' "not
// leader" answers. They describe leadership; only the lock decides it.
//
// It must not import anything under agent/.
package leader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// LockKey is the advisory lock's key: the same in every controller
// process sharing the database ("Eglead").
const LockKey int64 = 0x4567_6c65_6164

// Defaults of Config's durations.
const (
	DefaultRetryInterval = time.Second
	DefaultPingInterval  = time.Second
	DefaultPingTimeout   = 2 * time.Second
	// The session's TCP keepalives (PostgreSQL's tcp_keepalives_*): the
	// server drops a leader it has not heard from after
	// KeepaliveIdle + KeepaliveCount x KeepaliveInterval.
	KeepaliveIdle     = 5 * time.Second
	KeepaliveInterval = 2 * time.Second
	KeepaliveCount    = 3
	// StaleAfter is how long a controller's row may go without a refresh
	// before it is listed as gone.
	StaleAfter = 10 * time.Second
	// forgetAfter is when the leader deletes a gone controller's row.
	forgetAfter = time.Hour
)

// Roles of a controller as listed.
const (
	RoleLeader  = "leader"
	RoleStandby = "standby"
	RoleGone    = "gone"
)

// Config configures an Elector. Zero durations take the defaults.
type Config struct {
	// Conn is the dedicated session's configuration (a copy is made).
	Conn *pgx.ConnConfig
	// Instance names this process uniquely (NewInstance).
	Instance string
	// GRPC and API are the addresses this controller advertises: the
	// agents' gRPC HOST:PORT and the admin API's URL ("" for none).
	GRPC, API string
	Version   string
	// RetryInterval is how often a standby tries the lock; PingInterval
	// how often the leader checks its session, within PingTimeout.
	RetryInterval time.Duration
	PingInterval  time.Duration
	PingTimeout   time.Duration
	Log           *zap.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// OnRole, if set, is told each role this process takes (metrics).
	OnRole func(leading bool)
}

// Info is one controller as the tables describe it.
type Info struct {
	Instance string    `json:"instance"`
	Role     string    `json:"role"`
	GRPC     string    `json:"grpc,omitempty"`
	API      string    `json:"api,omitempty"`
	Version  string    `json:"version,omitempty"`
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"lastSeen"`
	// Term is the leader's term (on the leader's row only).
	Term int64 `json:"term,omitempty"`
}

// Elector campaigns for leadership on its own session.
type Elector struct {
	cfg     Config
	log     *zap.Logger
	started time.Time

	// conn is used by one goroutine at a time: Campaign's, then its
	// Term's watcher.
	conn *pgx.Conn
	// leader is the leader as last read by a standby (nil: unknown).
	leader atomic.Pointer[Info]
}

// NewInstance returns a name for this process: the host name and a
// random suffix (a restarted process is a new instance).
func NewInstance() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "controller"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// New checks the configuration; it does no I/O.
func New(cfg Config) (*Elector, error) {
	if cfg.Conn == nil || cfg.Instance == "" {
		return nil, errors.New("leader: a connection configuration and an instance name are required")
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}
	if cfg.PingInterval+cfg.PingTimeout >= KeepaliveIdle+KeepaliveCount*KeepaliveInterval {
		return nil, fmt.Errorf("leader: ping interval %s + timeout %s must be below the session's keepalive window", cfg.PingInterval, cfg.PingTimeout)
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	conn := cfg.Conn.Copy()
	if conn.RuntimeParams == nil {
		conn.RuntimeParams = map[string]string{}
	}
	conn.RuntimeParams["application_name"] = "eastguard-leader"
	conn.RuntimeParams["tcp_keepalives_idle"] = fmt.Sprint(int(KeepaliveIdle / time.Second))
	conn.RuntimeParams["tcp_keepalives_interval"] = fmt.Sprint(int(KeepaliveInterval / time.Second))
	conn.RuntimeParams["tcp_keepalives_count"] = fmt.Sprint(KeepaliveCount)
	cfg.Conn = conn
	return &Elector{cfg: cfg, log: cfg.Log, started: cfg.Now()}, nil
}

// Instance is this process's name.
func (e *Elector) Instance() string { return e.cfg.Instance }

// Leader is the leader as a standby last read it (ok false: unknown).
func (e *Elector) Leader() (Info, bool) {
	if l := e.leader.Load(); l != nil {
		return *l, true
	}
	return Info{}, false
}

// Campaign returns once this process leads, or with ctx's error. Until
// then it tries the lock every RetryInterval, refreshing its own row as a
// standby and reading the leader's; a lost session is reconnected.
func (e *Elector) Campaign(ctx context.Context) (*Term, error) {
	if e.cfg.OnRole != nil {
		e.cfg.OnRole(false)
	}
	for {
		term, err := e.try(ctx)
		if term != nil {
			return term, nil
		}
		if ctx.Err() != nil {
			e.closeConn()
			return nil, ctx.Err()
		}
		if err != nil {
			e.log.Warn("leader election: the database cannot be reached; retrying", zap.Error(err))
			e.closeConn()
		}
		select {
		case <-ctx.Done():
			e.closeConn()
			return nil, ctx.Err()
		case <-time.After(e.cfg.RetryInterval):
		}
	}
}

// TryLead makes one attempt: it returns a Term when the lock is taken,
// nil and nil when another controller holds it.
func (e *Elector) TryLead(ctx context.Context) (*Term, error) {
	term, err := e.try(ctx)
	if err != nil {
		e.closeConn()
	}
	return term, err
}

// try makes one attempt: it returns a Term when the lock is taken.
func (e *Elector) try(ctx context.Context) (*Term, error) {
	if e.conn == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := pgx.ConnectConfig(cctx, e.cfg.Conn)
		cancel()
		if err != nil {
			return nil, err
		}
		e.conn = conn
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var got bool
	if err := e.conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", LockKey).Scan(&got); err != nil {
		return nil, fmt.Errorf("try the leader lock: %w", err)
	}
	if !got {
		if err := e.upsert(qctx, RoleStandby); err != nil {
			return nil, err
		}
		e.readLeader(qctx)
		return nil, nil
	}
	// The lock is ours: record it. If recording fails, give the lock up
	// with the session (a leader nobody can name is worse than a retry).
	now := e.cfg.Now()
	var termNo int64
	err := e.conn.QueryRow(qctx, `INSERT INTO controller_leader (id, instance, term, since) VALUES (1, $1, 1, $2)
		ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, term = controller_leader.term + 1, since = excluded.since
		RETURNING term`, e.cfg.Instance, now.UnixNano()).Scan(&termNo)
	if err == nil {
		err = e.upsert(qctx, RoleLeader)
	}
	if err != nil {
		return nil, fmt.Errorf("record the leader: %w", err)
	}
	e.leader.Store(nil)
	e.log.Info("leading", zap.String("instance", e.cfg.Instance), zap.Int64("term", termNo))
	if e.cfg.OnRole != nil {
		e.cfg.OnRole(true)
	}
	t := &Term{e: e, number: termNo, since: now, lost: make(chan struct{}), resign: make(chan struct{}), done: make(chan struct{})}
	go t.watch()
	return t, nil
}

// upsert refreshes this process's row.
func (e *Elector) upsert(ctx context.Context, role string) error {
	now := e.cfg.Now().UnixNano()
	_, err := e.conn.Exec(ctx, `INSERT INTO controllers (instance, role, grpc, api, version, started, last_seen)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (instance) DO UPDATE SET role = excluded.role, grpc = excluded.grpc, api = excluded.api,
			version = excluded.version, last_seen = excluded.last_seen`,
		e.cfg.Instance, role, e.cfg.GRPC, e.cfg.API, e.cfg.Version, e.started.UnixNano(), now)
	if err != nil {
		return fmt.Errorf("record this controller: %w", err)
	}
	return nil
}

// readLeader caches the leader's row for the standby's answers; a failed
// read leaves the cache as it was.
func (e *Elector) readLeader(ctx context.Context) {
	list, err := List(ctx, e.conn, e.cfg.Now())
	if err != nil {
		e.log.Debug("leader not read", zap.Error(err))
		return
	}
	for _, c := range list {
		if c.Role == RoleLeader {
			e.leader.Store(&c)
			return
		}
	}
	e.leader.Store(nil)
}

func (e *Elector) closeConn() {
	if e.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = e.conn.Close(ctx)
		cancel()
		e.conn = nil
	}
}

// Term is one leadership of this process.
type Term struct {
	e      *Elector
	number int64
	since  time.Time

	lost    chan struct{} // closed when the term ends, for any reason
	lostErr error         // why (set before lost is closed)
	resign  chan struct{}
	once    sync.Once
	done    chan struct{} // closed when the watcher has returned
}

// Number is the term's number: it grows at each change of leader.
func (t *Term) Number() int64 { return t.number }

// Lost is closed when the term ends: the session failed a ping, or
// Resign. Stop acting as leader at once.
func (t *Term) Lost() <-chan struct{} { return t.lost }

// Err says why the term ended (nil before, and after Resign).
func (t *Term) Err() error {
	select {
	case <-t.lost:
		return t.lostErr
	default:
		return nil
	}
}

// Resign ends the term: it deletes this process's row, releases the lock
// and closes the session, so a standby takes over at its next try.
func (t *Term) Resign() {
	t.once.Do(func() { close(t.resign) })
	<-t.done
}

// watch pings the session until it fails or the term is resigned.
func (t *Term) watch() {
	e := t.e
	defer close(t.done)
	tick := time.NewTicker(e.cfg.PingInterval)
	defer tick.Stop()
	var refreshed time.Time
	for {
		select {
		case <-t.resign:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = e.conn.Exec(ctx, "DELETE FROM controllers WHERE instance = $1", e.cfg.Instance)
			_, _ = e.conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", LockKey)
			cancel()
			e.closeConn()
			close(t.lost)
			e.log.Info("leadership resigned", zap.Int64("term", t.number))
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.PingTimeout)
		err := e.conn.Ping(ctx)
		if err == nil && e.cfg.Now().Sub(refreshed) >= StaleAfter/3 {
			// The row's refresh doubles as a check that the session can
			// still write; old rows of gone controllers are forgotten.
			if err = e.upsert(ctx, RoleLeader); err == nil {
				refreshed = e.cfg.Now()
				_, _ = e.conn.Exec(ctx, "DELETE FROM controllers WHERE last_seen < $1", e.cfg.Now().Add(-forgetAfter).UnixNano())
			}
		}
		cancel()
		if err != nil {
			t.lostErr = fmt.Errorf("leadership lost: the leader's database session failed: %w", err)
			e.closeConn()
			close(t.lost)
			e.log.Error("leadership lost: stepping down", zap.Int64("term", t.number), zap.Error(err))
			if e.cfg.OnRole != nil {
				e.cfg.OnRole(false)
			}
			return
		}
	}
}

// Querier runs a query: a pgx connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// List returns every controller the tables know, the leader first, then
// by instance; a controller not seen for StaleAfter is RoleGone.
func List(ctx context.Context, q Querier, now time.Time) ([]Info, error) {
	rows, err := q.Query(ctx, `SELECT c.instance, c.role, c.grpc, c.api, c.version, c.started, c.last_seen,
			COALESCE(l.term, 0), l.instance IS NOT NULL
		FROM controllers c LEFT JOIN controller_leader l ON l.instance = c.instance
		ORDER BY l.instance IS NULL, c.instance`)
	if err != nil {
		return nil, fmt.Errorf("list controllers: %w", err)
	}
	defer rows.Close()
	var out []Info
	for rows.Next() {
		var c Info
		var started, seen int64
		var isLeader bool
		if err := rows.Scan(&c.Instance, &c.Role, &c.GRPC, &c.API, &c.Version, &started, &seen, &c.Term, &isLeader); err != nil {
			return nil, fmt.Errorf("list controllers: %w", err)
		}
		c.Started, c.LastSeen = time.Unix(0, started), time.Unix(0, seen)
		switch {
		case now.Sub(c.LastSeen) > StaleAfter, !isLeader && c.Role == RoleLeader:
			// A leader that lost the lock exits: a row still saying
			// leader that the leader's row does not name is a dead one.
			c.Role = RoleGone
		case isLeader:
			c.Role = RoleLeader
		default:
			c.Role = RoleStandby
		}
		if !isLeader {
			c.Term = 0
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list controllers: %w", err)
	}
	return out, nil
}
