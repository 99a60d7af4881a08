package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
)

// Advisory lock keys (pg_advisory_xact_lock, held to the end of one
// transaction): the same in every controller process sharing the
// database, so that what is one transaction at a time in SQLite (a single
// writer) is one at a time here too.
const (
	// lockMigrate serializes schema migrations of controllers starting
	// together.
	lockMigrate int64 = 0x4567_6d69_6772 // "Egmigr"
	// lockEvents serializes event transactions (EventTx), partition
	// changes and flow retention: the alert engine's read-modify-write of
	// alerts and the outbox must not interleave with another process's.
	//
	// Flow writers (FlowTx) hold it shared, so that their COPYs run side
	// by side: what changes under an insert (partitions, retention, the
	// rollup's upto) takes it exclusively. Their lock order is:
	// lockEvents shared, then lockSpools of their nodes (in key order),
	// then lockFlowSerial; none waits for a lock it takes earlier, so
	// writers cannot deadlock one another.
	lockEvents int64 = 0x4567_6576_6e74 // "Egevnt"
	// lockFlowSerial gives flow writers (FlowTx, after Serialize) their
	// turn at what one transaction at a time must change: alerts, the
	// outbox, flow_count, the rollup's rows of late flows.
	lockFlowSerial int64 = 0x4567_666c_7372 // "Egflsr"
	// lockSpools is the first key of the two-key advisory locks a flow
	// writer takes on the spool positions of its batches' nodes (the
	// second key: nodeLockKey), so that one node's batches are stored by
	// one transaction at a time in every process.
	lockSpools int32 = 0x4567_7370 // "Egsp"
	// lockPolicy serializes policy commits, so that the check that a
	// node's new rule-set version is above every stored one holds until
	// the commit.
	lockPolicy int64 = 0x4567_706f_6c79 // "Egpoly"
	// lockAudit serializes audit appends, so that the newest record a
	// transaction chains on is still the newest at its commit. It is
	// always the last lock a transaction takes (after the change's own),
	// so it adds no lock-order cycle.
	lockAudit int64 = 0x4567_6175_6474 // "Egaudt"
)

// Partition sizes of the flows table.
const (
	PartitionDay  = 24 * time.Hour
	PartitionHour = time.Hour
)

// DefaultPartitionLookback is how far back of now partitions are made
// for late records (an agent's spool sent after an outage); older, and
// more than two partitions ahead, records go to flows_default. The bound
// keeps a hostile agent, whose records may carry any time from 2000 to
// 2200, from making a table per hour of two centuries.
const DefaultPartitionLookback = 31 * 24 * time.Hour

// Config says how to open the store.
type Config struct {
	// Pool is the connection pool's configuration (ParseDSN).
	Pool *pgxpool.Config
	// CAKeyKey seals the CA's private key in the database (AES-256-GCM):
	// 32 bytes (LoadKeyFile). Required.
	CAKeyKey []byte
	// Partition is the flows table's partition size: PartitionDay
	// (default) or PartitionHour.
	Partition time.Duration
	// PartitionLookback: see DefaultPartitionLookback (0: the default).
	PartitionLookback time.Duration
	// Now is the clock that places partitions (default time.Now).
	Now func() time.Time
}

// Postgres is the PostgreSQL Store: control state and event data in one
// database, shared safely by several controller processes (every
// transaction that must not interleave takes a row lock or an advisory
// lock).
type Postgres struct {
	pool  *pgxpool.Pool
	cakey cipherKey
	part  time.Duration
	back  time.Duration
	now   func() time.Time

	// partMu guards parts, the partition starts settled (their partition
	// exists, or one of another size covers the range). It is taken
	// inside event transactions, never around one.
	partMu sync.Mutex
	parts  map[int64]bool
	// unsummarized holds the starts of the partitions flows were stored
	// into since the last SummarizeFlowIndexes (under partMu): they may
	// have page ranges their BRIN index does not summarize yet: at most
	// one entry per partition of the window (inWindow), and outsideWindow.
	unsummarized map[int64]struct{}
}

// ErrSchemaNewer: the database's schema is newer than this controller
// knows; it is left alone.
var ErrSchemaNewer = errors.New("database schema is newer than this controller knows")

// Open connects, checks the CA key can be unsealed with cfg.CAKeyKey and
// brings the schema up to date, in that order: a wrong key or a newer
// schema is refused before anything is written.
func Open(ctx context.Context, cfg Config) (*Postgres, error) {
	if cfg.Pool == nil {
		return nil, errors.New("postgres store: no connection configuration")
	}
	key, err := newCipherKey(cfg.CAKeyKey)
	if err != nil {
		return nil, err
	}
	switch cfg.Partition {
	case 0:
		cfg.Partition = PartitionDay
	case PartitionDay, PartitionHour:
	default:
		return nil, fmt.Errorf("flow partition %s: want 24h (a day) or 1h (an hour)", cfg.Partition)
	}
	if cfg.PartitionLookback <= 0 {
		cfg.PartitionLookback = DefaultPartitionLookback
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg.Pool)
	if err != nil {
		return nil, fmt.Errorf("postgres store: %w", err)
	}
	s := &Postgres{pool: pool, cakey: key, part: cfg.Partition, back: cfg.PartitionLookback, now: cfg.Now, parts: map[int64]bool{}}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres store: connect: %w", err)
	}
	if err := s.checkCAKey(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if err := migrate(ctx, pool, migrations); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres store: %w", err)
	}
	return s, nil
}

// Close closes the pool.
func (s *Postgres) Close() error {
	s.pool.Close()
	return nil
}

// Pool is the connection pool (tests look at the rows themselves).
func (s *Postgres) Pool() *pgxpool.Pool { return s.pool }

// schemaVersion reads the schema's version: 0 when there is none yet.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('eastguard_schema') IS NOT NULL").Scan(&exists); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := q.QueryRow(ctx, "SELECT version FROM eastguard_schema WHERE id = 1").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}

// migrate applies the migrations the database lacks, one transaction
// each, under lockMigrate (controllers starting together migrate once).
//
// The lock is a session lock taken before each migration's transaction
// begins, not a transaction lock taken inside it: a transaction that
// waited for the lock inside itself would read the catalog as of before
// the wait (PostgreSQL's catalog snapshot of the transaction), miss the
// tables another controller has just created, and run the migration
// again (two controllers starting together on an empty database).
func migrate(ctx context.Context, pool *pgxpool.Pool, migrations []string) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockMigrate); err != nil {
		return err
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockMigrate); err != nil {
			conn.Conn().Close(context.Background()) // the session, and its lock, end with the connection
		}
	}()
	for {
		done := false
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			v, err := schemaVersion(ctx, tx)
			if err != nil {
				return err
			}
			if v > len(migrations) {
				return fmt.Errorf("%w: version %d, this controller knows %d: refusing to touch it", ErrSchemaNewer, v, len(migrations))
			}
			if v == len(migrations) {
				done = true
				return nil
			}
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migration %d: %w", v+1, err)
			}
			_, err = tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS eastguard_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
				INSERT INTO eastguard_schema (id, version) VALUES (1, `+strconv.Itoa(v+1)+`)
				ON CONFLICT (id) DO UPDATE SET version = excluded.version`)
			return err
		})
		if err != nil || done {
			return err
		}
	}
}

// q rewrites the ? placeholders of a query (the SQLite store's style, in
// which the shared column lists are written) as PostgreSQL's $1, $2, ...
// No query of this package has a ? of its own.
func q(query string) string {
	if !strings.Contains(query, "?") {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// tx runs f in one transaction; errors are classified.
func (s *Postgres) tx(ctx context.Context, f func(pgx.Tx) error) error {
	return classify(pgx.BeginFunc(ctx, s.pool, f))
}

// classify wraps PostgreSQL's "disk full" and I/O errors in ErrFull and
// ErrIO, as the SQLite store does, so that callers refuse work cleanly
// and count why.
func classify(err error) error {
	if err == nil || errors.Is(err, store.ErrFull) || errors.Is(err, store.ErrIO) {
		return err
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case pe.Code == "53100": // disk_full
		return fmt.Errorf("%w: %w (free disk space on the database server, lower --flow-max-bytes or --flow-retention)", store.ErrFull, err)
	case pe.Code == "58030", pe.Code == "XX001", pe.Code == "XX002": // io_error, data_corrupted, index_corrupted
		return fmt.Errorf("%w: %w", store.ErrIO, err)
	}
	return err
}

// isUniqueViolation says whether err is a duplicate key.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func (s *Postgres) AddAdminToken(ctx context.Context, t store.AdminToken, audit ...store.AuditRecord) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO admin_tokens (id, secret_hash, name, created, expires, revoked, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING`,
			t.ID, t.SecretHash, t.Name, rc.Nanos(t.Created), rc.Nanos(t.Expires), rc.Nanos(t.Revoked), t.CreatedBy)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%s: %w", t.ID, store.ErrExists)
		}
		_, err = appendAudit(ctx, tx, audit)
		return err
	})
	if err != nil {
		return fmt.Errorf("store admin token: %w", err)
	}
	return nil
}

const adminTokenColumns = "id, secret_hash, name, created, expires, revoked, created_by"

func scanAdminToken(row pgx.Row) (store.AdminToken, error) {
	var t store.AdminToken
	var created, expires, revoked int64
	err := row.Scan(&t.ID, &t.SecretHash, &t.Name, &created, &expires, &revoked, &t.CreatedBy)
	t.Created, t.Expires, t.Revoked = rc.FromNanos(created), rc.FromNanos(expires), rc.FromNanos(revoked)
	return t, err
}

func (s *Postgres) AdminToken(ctx context.Context, id string) (store.AdminToken, error) {
	t, err := scanAdminToken(s.pool.QueryRow(ctx, "SELECT "+adminTokenColumns+" FROM admin_tokens WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.AdminToken{}, store.ErrNotFound
	}
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("read admin token: %w", err)
	}
	return t, nil
}

func (s *Postgres) AdminTokens(ctx context.Context) ([]store.AdminToken, error) {
	return queryAll(ctx, s.pool, "admin tokens", scanAdminToken, "SELECT "+adminTokenColumns+" FROM admin_tokens ORDER BY created, id")
}

func (s *Postgres) RevokeAdminToken(ctx context.Context, id string, at time.Time, audit ...store.AuditRecord) (store.AdminToken, error) {
	var t store.AdminToken
	err := s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE admin_tokens SET revoked = $1 WHERE id = $2 AND revoked = 0", rc.Nanos(at), id)
		if err != nil {
			return err
		}
		t, err = scanAdminToken(tx.QueryRow(ctx, "SELECT "+adminTokenColumns+" FROM admin_tokens WHERE id = $1", id))
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			_, err = appendAudit(ctx, tx, audit)
		}
		return err
	})
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("revoke admin token %s: %w", id, err)
	}
	return t, nil
}

func (s *Postgres) AddJoinToken(ctx context.Context, t store.JoinToken, audit ...store.AuditRecord) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO join_tokens (id, secret_hash, node, created, expires) VALUES ($1, $2, $3, $4, $5)",
			t.ID, t.SecretHash, t.Node, rc.Nanos(t.Created), rc.Nanos(t.Expires)); err != nil {
			return err
		}
		_, err := appendAudit(ctx, tx, audit)
		return err
	})
	if err != nil {
		return fmt.Errorf("store join token: %w", err)
	}
	return nil
}

const joinTokenColumns = "id, secret_hash, node, created, expires, used"

func scanJoinToken(row pgx.Row) (store.JoinToken, error) {
	var t store.JoinToken
	var created, expires, used int64
	if err := row.Scan(&t.ID, &t.SecretHash, &t.Node, &created, &expires, &used); err != nil {
		return store.JoinToken{}, err
	}
	t.Created, t.Expires, t.Used = rc.FromNanos(created), rc.FromNanos(expires), rc.FromNanos(used)
	return t, nil
}

// joinTokenByID reads one join token (with suffix, e.g. FOR UPDATE);
// ErrNotFound if there is none such.
func joinTokenByID(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id, suffix string) (store.JoinToken, error) {
	t, err := scanJoinToken(q.QueryRow(ctx, "SELECT "+joinTokenColumns+" FROM join_tokens WHERE id = $1"+suffix, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.JoinToken{}, store.ErrNotFound
	}
	return t, err
}

func (s *Postgres) JoinToken(ctx context.Context, id string) (store.JoinToken, error) {
	t, err := joinTokenByID(ctx, s.pool, id, "")
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.JoinToken{}, fmt.Errorf("read join token: %w", err)
	}
	return t, err
}

func (s *Postgres) JoinTokens(ctx context.Context) ([]store.JoinToken, error) {
	return queryAll(ctx, s.pool, "join tokens", scanJoinToken, "SELECT "+joinTokenColumns+" FROM join_tokens ORDER BY created, id")
}

// queryAll runs a query and scans every row of its answer; errors name
// what was read.
func queryAll[T any](ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, what string, scan func(pgx.Row) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, classify(err))
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, classify(err))
	}
	return out, nil
}

func (s *Postgres) DeleteJoinToken(ctx context.Context, id string, audit ...store.AuditRecord) (store.JoinToken, error) {
	var t store.JoinToken
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if t, err = joinTokenByID(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		if _, err = tx.Exec(ctx, "DELETE FROM join_tokens WHERE id = $1", id); err != nil {
			return err
		}
		_, err = appendAudit(ctx, tx, audit)
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.JoinToken{}, fmt.Errorf("delete join token: %w", err)
	}
	return t, err
}

// ConsumeJoinToken locks the token's row (SELECT ... FOR UPDATE) for the
// transaction: a second controller process consuming the same token
// waits, then reads it used.
func (s *Postgres) ConsumeJoinToken(ctx context.Context, id string, now time.Time, check func(store.JoinToken) error, cert *store.Cert, audit ...store.AuditRecord) (store.JoinToken, error) {
	var t store.JoinToken
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if t, err = joinTokenByID(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		// The secret is checked before anything else is said about the
		// token: without it, nobody learns whether it was used.
		if err := check(t); err != nil {
			return err
		}
		if err := t.Usable(now); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "UPDATE join_tokens SET used = $1 WHERE id = $2 AND used = 0", rc.Nanos(now), id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return store.ErrTokenUsed
		}
		t.Used = now
		if cert == nil {
			return nil
		}
		if err := addCert(ctx, tx, *cert, audit); err != nil {
			return fmt.Errorf("record certificate: %w", err)
		}
		return nil
	})
	return t, err
}

func (s *Postgres) AddCert(ctx context.Context, c store.Cert, audit ...store.AuditRecord) error {
	if err := s.tx(ctx, func(tx pgx.Tx) error { return addCert(ctx, tx, c, audit) }); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	return nil
}

func addCert(ctx context.Context, tx pgx.Tx, c store.Cert, audit []store.AuditRecord) error {
	if _, err := tx.Exec(ctx, "INSERT INTO certs (serial, node, not_after, revoked) VALUES ($1, $2, $3, $4)",
		c.Serial, c.Node, rc.Nanos(c.NotAfter), rc.Nanos(c.Revoked)); err != nil {
		return err
	}
	_, err := appendAudit(ctx, tx, audit)
	return err
}

func scanCert(row pgx.Row) (store.Cert, error) {
	var c store.Cert
	var notAfter, revoked int64
	err := row.Scan(&c.Serial, &c.Node, &notAfter, &revoked)
	c.NotAfter, c.Revoked = rc.FromNanos(notAfter), rc.FromNanos(revoked)
	return c, err
}

func (s *Postgres) RevokeNode(ctx context.Context, node string, at time.Time, audit ...store.AuditRecord) ([]store.Cert, int, error) {
	var out []store.Cert
	var tokens int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE certs SET revoked = $1 WHERE node = $2 AND revoked = 0", rc.Nanos(at), node); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM join_tokens WHERE node = $1 AND used = 0", node)
		if err != nil {
			return err
		}
		tokens = tag.RowsAffected()
		if _, err := tx.Exec(ctx, `INSERT INTO nodes (name, revoked) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET revoked = excluded.revoked`, node, rc.Nanos(at)); err != nil {
			return err
		}
		if out, err = queryAll(ctx, tx, "certificates", scanCert, "SELECT serial, node, not_after, revoked FROM certs WHERE node = $1", node); err != nil {
			return err
		}
		_, err = appendAudit(ctx, tx, audit)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("revoke node %s: %w", node, err)
	}
	return out, int(tokens), nil
}

func (s *Postgres) RevokedCerts(ctx context.Context, now time.Time) ([]store.Cert, error) {
	return queryAll(ctx, s.pool, "revocations", scanCert,
		"SELECT serial, node, not_after, revoked FROM certs WHERE revoked <> 0 AND not_after > $1", rc.Nanos(now))
}

func (s *Postgres) Resources(ctx context.Context) ([]store.Resource, error) {
	return queryAll(ctx, s.pool, "resources", func(row pgx.Row) (store.Resource, error) {
		var r store.Resource
		var updated int64
		err := row.Scan(&r.Kind, &r.Name, &r.Document, &updated, &r.Source)
		r.Updated = rc.FromNanos(updated)
		return r, err
	}, "SELECT kind, name, document, updated, source FROM resources ORDER BY kind, name")
}

// CommitPolicy stores the change under lockPolicy and refuses a rule set
// whose version is not above every stored version of its node: two
// controller processes on one database cannot both commit a version, nor
// one send a node's version backwards.
func (s *Postgres) CommitPolicy(ctx context.Context, c store.PolicyCommit) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockPolicy); err != nil {
			return err
		}
		for _, k := range c.Delete {
			if _, err := tx.Exec(ctx, "DELETE FROM resources WHERE kind = $1 AND name = $2", k.Kind, k.Name); err != nil {
				return err
			}
		}
		for _, r := range c.Put {
			if _, err := tx.Exec(ctx, `INSERT INTO resources (kind, name, document, updated, source) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (kind, name) DO UPDATE SET document = excluded.document, updated = excluded.updated, source = excluded.source`,
				r.Kind, r.Name, r.Document, rc.Nanos(r.Updated), r.Source); err != nil {
				return err
			}
		}
		for _, p := range c.Parts {
			if _, err := tx.Exec(ctx, "INSERT INTO ruleset_parts (key, data) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", p.Key, p.Data); err != nil {
				return fmt.Errorf("rule set part %s: %w", p.Key, err)
			}
		}
		sweep := store.NewPartSweep(c)
		for _, rs := range c.RuleSets {
			var newest *int64
			if err := tx.QueryRow(ctx, "SELECT MAX(version) FROM rulesets WHERE node = $1", rs.Node).Scan(&newest); err != nil {
				return err
			}
			if newest != nil && uint64(*newest) >= rs.Version {
				return fmt.Errorf("rule set of %s version %d: %w (version %d is stored)", rs.Node, rs.Version, store.ErrExists, *newest)
			}
			// A version stored whole, or one whose part is stored.
			tag, err := tx.Exec(ctx, `INSERT INTO rulesets (node, version, hash, data, created, shared) SELECT $1, $2, $3, $4, $5, $6
				WHERE $6 = '' OR EXISTS (SELECT 1 FROM ruleset_parts WHERE key = $6)`,
				rs.Node, int64(rs.Version), rs.Hash, rs.Data, rc.Nanos(rs.Created), rs.Shared)
			if err == nil && tag.RowsAffected() == 0 {
				err = fmt.Errorf("shared part %s: %w: neither stored nor given in the commit", rs.Shared, store.ErrNotFound)
			}
			if err != nil {
				return fmt.Errorf("rule set of %s version %d: %w", rs.Node, rs.Version, err)
			}
			rows, err := tx.Query(ctx, "DELETE FROM rulesets WHERE node = $1 AND version <= $2 RETURNING shared",
				rs.Node, int64(rs.Version)-store.KeepRuleSetVersions)
			if err == nil {
				err = sweep.Pruned(pgx.CollectRows(rows, pgx.RowTo[string]))
			}
			if err != nil {
				return err
			}
		}
		for _, k := range sweep.Candidates() {
			if _, err := tx.Exec(ctx, "DELETE FROM ruleset_parts WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM rulesets WHERE shared = $1)", k); err != nil {
				return fmt.Errorf("rule set part %s: %w", k, err)
			}
		}
		_, err := appendAudit(ctx, tx, c.Audit)
		return err
	})
	if err != nil {
		return fmt.Errorf("commit policy: %w", err)
	}
	return nil
}

func scanRuleSet(row pgx.Row) (store.RuleSetRecord, error) {
	var r store.RuleSetRecord
	var version, created int64
	err := row.Scan(&r.Node, &version, &r.Hash, &r.Data, &created, &r.Shared, &r.SharedData)
	r.Version, r.Created = uint64(version), rc.FromNanos(created)
	return r, err
}

// ruleSetColumns are a rule set's columns with its shared part's data
// (empty for none), for scanRuleSet: r is rulesets, p its part.
const ruleSetColumns = "r.node, r.version, r.hash, r.data, r.created, r.shared, COALESCE(p.data, ''::bytea)"

func (s *Postgres) LatestRuleSets(ctx context.Context) ([]store.RuleSetRecord, error) {
	return queryAll(ctx, s.pool, "rule sets", scanRuleSet, `SELECT DISTINCT ON (r.node) `+ruleSetColumns+`
		FROM rulesets r LEFT JOIN ruleset_parts p ON p.key = r.shared ORDER BY r.node, r.version DESC`)
}

func (s *Postgres) RuleSet(ctx context.Context, node string, version uint64) (store.RuleSetRecord, error) {
	r, err := scanRuleSet(s.pool.QueryRow(ctx, "SELECT "+ruleSetColumns+
		" FROM rulesets r LEFT JOIN ruleset_parts p ON p.key = r.shared WHERE r.node = $1 AND r.version = $2", node, int64(version)))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, store.ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("read rule set %s version %d: %w", node, version, err)
	}
	return r, nil
}

func (s *Postgres) Nodes(ctx context.Context) ([]store.Node, error) {
	return queryAll(ctx, s.pool, "nodes", func(row pgx.Row) (store.Node, error) {
		var n store.Node
		var caps string
		var applied, appliedAt, contact, expiry, joined, revoked int64
		if err := row.Scan(&n.Name, &n.AgentVersion, &n.Kernel, &caps, &n.DefaultMode, &applied, &n.AppliedHash,
			&appliedAt, &contact, &n.LastError, &n.CertSerial, &expiry, &joined, &revoked); err != nil {
			return n, err
		}
		if caps != "" {
			n.Capabilities = strings.Split(caps, ",")
		}
		n.AppliedVersion = uint64(applied)
		n.AppliedAt, n.LastContact, n.CertExpiry = rc.FromNanos(appliedAt), rc.FromNanos(contact), rc.FromNanos(expiry)
		n.Joined, n.Revoked = rc.FromNanos(joined), rc.FromNanos(revoked)
		return n, nil
	}, `SELECT name, agent_version, kernel, capabilities, default_mode, applied_version, applied_hash,
		applied_at, last_contact, last_error, cert_serial, cert_expiry, joined, revoked FROM nodes ORDER BY name`)
}

func (s *Postgres) SaveNodes(ctx context.Context, nodes []store.Node) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, n := range nodes {
			b.Queue(`INSERT INTO nodes (name, agent_version, kernel, capabilities, default_mode, applied_version,
			applied_hash, applied_at, last_contact, last_error, cert_serial, cert_expiry, joined, revoked)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
			ON CONFLICT (name) DO UPDATE SET agent_version = excluded.agent_version, kernel = excluded.kernel,
				capabilities = excluded.capabilities, default_mode = excluded.default_mode,
				applied_version = excluded.applied_version, applied_hash = excluded.applied_hash,
				applied_at = excluded.applied_at, last_contact = excluded.last_contact, last_error = excluded.last_error,
				cert_serial = excluded.cert_serial, cert_expiry = excluded.cert_expiry, joined = excluded.joined,
				revoked = excluded.revoked`, n.Name, n.AgentVersion, n.Kernel, strings.Join(n.Capabilities, ","), n.DefaultMode,
				int64(n.AppliedVersion), n.AppliedHash, rc.Nanos(n.AppliedAt), rc.Nanos(n.LastContact), n.LastError, n.CertSerial,
				rc.Nanos(n.CertExpiry), rc.Nanos(n.Joined), rc.Nanos(n.Revoked))
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("save nodes: %w", err)
	}
	return nil
}

var _ store.Store = (*Postgres)(nil)
