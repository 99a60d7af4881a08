package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"modernc.org/sqlite" // registers the "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLiteFile is the database's file name under the data directory.
const SQLiteFile = "eastguard.db"

// SQLite is the default Store. It keeps two database files: the control
// plane's state (eastguard.db: CA, tokens, policy, rule sets, nodes),
// written by one connection at a time (SQLite has one writer anyway; one
// connection also keeps every transaction free of SQLITE_BUSY), and the
// event data (flows.db: flows, alerts, the webhook outbox), apart so that
// a flood of flows never queues a policy change behind it and a full
// flow budget never stops the control plane from writing. flows.db has a
// few connections so that queries read while ingestion writes (WAL).
type SQLite struct {
	db    *sql.DB
	path  string
	edb   *sql.DB
	epath string
}

// EventsFile is the event database's file name under the data directory.
const EventsFile = "flows.db"

// Option changes how Open opens the store.
type Option func(*openOptions)

type openOptions struct {
	eventMaxPages int
}

// WithEventMaxPages caps flows.db at n pages (SQLite's max_page_count):
// writes beyond it fail with ErrFull, as on a full disk. Tests use it to
// fill the store without filling a disk.
func WithEventMaxPages(n int) Option { return func(o *openOptions) { o.eventMaxPages = n } }

// Open opens (creating if needed) the databases in dataDir, which it
// creates mode 0700, and brings their schemas up to date. The files are
// mode 0600: one holds the CA key, the other every flow.
func Open(dataDir string, opts ...Option) (*SQLite, error) {
	var o openOptions
	for _, f := range opts {
		f(&o)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &SQLite{path: filepath.Join(dataDir, SQLiteFile), epath: filepath.Join(dataDir, EventsFile)}
	var err error
	if s.db, err = openDB(s.path, 1, nil); err != nil {
		return nil, err
	}
	if err := migrate(context.Background(), s.db, migrations, nil); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store %s: %w", s.path, err)
	}
	var pragmas []string
	if o.eventMaxPages > 0 {
		pragmas = append(pragmas, fmt.Sprintf("max_page_count(%d)", o.eventMaxPages))
	}
	if s.edb, err = openDB(s.epath, 4, pragmas); err != nil {
		s.db.Close()
		return nil, err
	}
	if err := migrate(context.Background(), s.edb, eventMigrations, eventMigrationFills); err != nil {
		s.Close()
		return nil, fmt.Errorf("store %s: %w", s.epath, err)
	}
	return s, nil
}

// openDB opens one database file with conns connections.
func openDB(path string, conns int, pragmas []string) (*sql.DB, error) {
	// Create the file ourselves so that it never exists with a wider mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	f.Close()
	q := url.Values{}
	q.Set("_busy_timeout", "10000")
	q.Set("_journal_mode", "WAL")
	// FULL: a committed policy change, token use or revocation survives a
	// power cut, not only a crash; so does a flow batch once acked.
	q.Set("_synchronous", "FULL")
	q.Set("_foreign_keys", "1")
	q.Set("_txlock", "immediate")
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+uriPath.Replace(path)+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	return db, nil
}

// uriPath escapes what a SQLite URI filename would otherwise read as
// its query ('?'), its fragment ('#') or an escape ('%'): a data
// directory named "ctl#2" must open ctl#2/eastguard.db, not "ctl".
var uriPath = strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23")

// Path is the database file.
func (s *SQLite) Path() string { return s.path }

// EventsPath is the event database file.
func (s *SQLite) EventsPath() string { return s.epath }

// Close closes the databases.
func (s *SQLite) Close() error { return errors.Join(s.db.Close(), s.edb.Close()) }

func migrate(ctx context.Context, db *sql.DB, migrations []string, fills map[int]func(context.Context, *sql.Tx) error) error {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this controller knows (%d): refusing to touch it", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		err := inTx(ctx, db, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return err
			}
			if fill := fills[i+1]; fill != nil {
				if err := fill(ctx, tx); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

func (s *SQLite) tx(ctx context.Context, f func(*sql.Tx) error) error { return inTx(ctx, s.db, f) }

// inTx runs f in a transaction of db. Errors that say the disk is full or
// failing are wrapped in ErrFull or ErrIO.
func inTx(ctx context.Context, db *sql.DB, f func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return classify(err)
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return classify(err)
	}
	return classify(tx.Commit())
}

// classify wraps SQLite's "full" and I/O errors in ErrFull and ErrIO,
// whose messages say what is wrong ("store full: database or disk is
// full"), so that callers can refuse work cleanly and count why.
func classify(err error) error {
	if err == nil || errors.Is(err, store.ErrFull) || errors.Is(err, store.ErrIO) {
		return err
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_FULL:
		return fmt.Errorf("%w: %w (free disk space, lower --flow-max-bytes or --flow-retention)", store.ErrFull, err)
	case sqlite3.SQLITE_IOERR:
		return fmt.Errorf("%w: %w", store.ErrIO, err)
	}
	return err
}

func (s *SQLite) CA(ctx context.Context) ([]byte, []byte, error) {
	var cert, key []byte
	err := s.db.QueryRowContext(ctx, "SELECT cert_pem, key_pem FROM ca WHERE id = 1").Scan(&cert, &key)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, store.ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read CA: %w", err)
	}
	return cert, key, nil
}

func (s *SQLite) InitCA(ctx context.Context, certPEM, keyPEM []byte) error {
	res, err := s.db.ExecContext(ctx, "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING", certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("store CA: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store CA: %w", store.ErrExists)
	}
	return nil
}

func (s *SQLite) AddAdminToken(ctx context.Context, t store.AdminToken, audit ...store.AuditRecord) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO admin_tokens (id, secret_hash, name, created, expires, revoked, created_by)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			t.ID, t.SecretHash, t.Name, rc.Nanos(t.Created), rc.Nanos(t.Expires), rc.Nanos(t.Revoked), t.CreatedBy)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
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

func scanAdminToken(row interface{ Scan(...any) error }) (store.AdminToken, error) {
	var t store.AdminToken
	var created, expires, revoked int64
	err := row.Scan(&t.ID, &t.SecretHash, &t.Name, &created, &expires, &revoked, &t.CreatedBy)
	t.Created, t.Expires, t.Revoked = rc.FromNanos(created), rc.FromNanos(expires), rc.FromNanos(revoked)
	return t, err
}

func (s *SQLite) AdminToken(ctx context.Context, id string) (store.AdminToken, error) {
	t, err := scanAdminToken(s.db.QueryRowContext(ctx, "SELECT "+adminTokenColumns+" FROM admin_tokens WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.AdminToken{}, store.ErrNotFound
	}
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("read admin token: %w", err)
	}
	return t, nil
}

func (s *SQLite) AdminTokens(ctx context.Context) ([]store.AdminToken, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+adminTokenColumns+" FROM admin_tokens ORDER BY created, id")
	if err != nil {
		return nil, fmt.Errorf("read admin tokens: %w", err)
	}
	defer rows.Close()
	var out []store.AdminToken
	for rows.Next() {
		t, err := scanAdminToken(rows)
		if err != nil {
			return nil, fmt.Errorf("read admin tokens: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *SQLite) RevokeAdminToken(ctx context.Context, id string, at time.Time, audit ...store.AuditRecord) (store.AdminToken, error) {
	var t store.AdminToken
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE admin_tokens SET revoked = ? WHERE id = ? AND revoked = 0", rc.Nanos(at), id)
		if err != nil {
			return err
		}
		t, err = scanAdminToken(tx.QueryRowContext(ctx, "SELECT "+adminTokenColumns+" FROM admin_tokens WHERE id = ?", id))
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			_, err = appendAudit(ctx, tx, audit)
		}
		return err
	})
	if err != nil {
		return store.AdminToken{}, fmt.Errorf("revoke admin token %s: %w", id, err)
	}
	return t, nil
}

func (s *SQLite) AddJoinToken(ctx context.Context, t store.JoinToken, audit ...store.AuditRecord) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO join_tokens (id, secret_hash, node, created, expires) VALUES (?, ?, ?, ?, ?)",
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

// scanJoinToken reads one row of joinTokenColumns.
func scanJoinToken(row interface{ Scan(...any) error }) (store.JoinToken, error) {
	var t store.JoinToken
	var created, expires, used int64
	if err := row.Scan(&t.ID, &t.SecretHash, &t.Node, &created, &expires, &used); err != nil {
		return store.JoinToken{}, err
	}
	t.Created, t.Expires, t.Used = rc.FromNanos(created), rc.FromNanos(expires), rc.FromNanos(used)
	return t, nil
}

// joinTokenByID reads one join token, in a transaction or not; ErrNotFound
// if there is none such.
func joinTokenByID(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (store.JoinToken, error) {
	t, err := scanJoinToken(q.QueryRowContext(ctx, "SELECT "+joinTokenColumns+" FROM join_tokens WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.JoinToken{}, store.ErrNotFound
	}
	return t, err
}

func (s *SQLite) JoinToken(ctx context.Context, id string) (store.JoinToken, error) {
	t, err := joinTokenByID(ctx, s.db, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.JoinToken{}, fmt.Errorf("read join token: %w", err)
	}
	return t, err
}

func (s *SQLite) JoinTokens(ctx context.Context) ([]store.JoinToken, error) {
	return queryAll(ctx, s.db, "join tokens", scanJoinToken, "SELECT "+joinTokenColumns+" FROM join_tokens ORDER BY created, id")
}

// queryAll runs a query and scans every row of its answer; errors name
// what was read.
func queryAll[T any](ctx context.Context, db *sql.DB, what string, scan func(interface{ Scan(...any) error }) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
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
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return out, nil
}

func (s *SQLite) DeleteJoinToken(ctx context.Context, id string, audit ...store.AuditRecord) (store.JoinToken, error) {
	var t store.JoinToken
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if t, err = joinTokenByID(ctx, tx, id); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, "DELETE FROM join_tokens WHERE id = ?", id); err != nil {
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

func (s *SQLite) ConsumeJoinToken(ctx context.Context, id string, now time.Time, check func(store.JoinToken) error, cert *store.Cert, audit ...store.AuditRecord) (store.JoinToken, error) {
	var t store.JoinToken
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if t, err = joinTokenByID(ctx, tx, id); err != nil {
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
		res, err := tx.ExecContext(ctx, "UPDATE join_tokens SET used = ? WHERE id = ? AND used = 0", rc.Nanos(now), id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
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

func (s *SQLite) AddCert(ctx context.Context, c store.Cert, audit ...store.AuditRecord) error {
	if err := s.tx(ctx, func(tx *sql.Tx) error { return addCert(ctx, tx, c, audit) }); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	return nil
}

func addCert(ctx context.Context, tx *sql.Tx, c store.Cert, audit []store.AuditRecord) error {
	if _, err := tx.ExecContext(ctx, "INSERT INTO certs (serial, node, not_after, revoked) VALUES (?, ?, ?, ?)",
		c.Serial, c.Node, rc.Nanos(c.NotAfter), rc.Nanos(c.Revoked)); err != nil {
		return err
	}
	_, err := appendAudit(ctx, tx, audit)
	return err
}

func (s *SQLite) RevokeNode(ctx context.Context, node string, at time.Time, audit ...store.AuditRecord) ([]store.Cert, int, error) {
	var out []store.Cert
	var tokens int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE certs SET revoked = ? WHERE node = ? AND revoked = 0", rc.Nanos(at), node); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM join_tokens WHERE node = ? AND used = 0", node)
		if err != nil {
			return err
		}
		if tokens, err = res.RowsAffected(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (name, revoked) VALUES (?, ?)
			ON CONFLICT (name) DO UPDATE SET revoked = excluded.revoked`, node, rc.Nanos(at)); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, "SELECT serial, node, not_after, revoked FROM certs WHERE node = ?", node)
		if err != nil {
			return err
		}
		if out, err = scanCerts(rows); err != nil {
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

func (s *SQLite) RevokedCerts(ctx context.Context, now time.Time) ([]store.Cert, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT serial, node, not_after, revoked FROM certs WHERE revoked <> 0 AND not_after > ?", rc.Nanos(now))
	if err != nil {
		return nil, fmt.Errorf("read revocations: %w", err)
	}
	return scanCerts(rows)
}

func scanCerts(rows *sql.Rows) ([]store.Cert, error) {
	defer rows.Close()
	var out []store.Cert
	for rows.Next() {
		var c store.Cert
		var notAfter, revoked int64
		if err := rows.Scan(&c.Serial, &c.Node, &notAfter, &revoked); err != nil {
			return nil, err
		}
		c.NotAfter, c.Revoked = rc.FromNanos(notAfter), rc.FromNanos(revoked)
		out = append(out, c)
	}
	return out, rows.Err()
}

func (s *SQLite) Resources(ctx context.Context) ([]store.Resource, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT kind, name, document, updated, source FROM resources ORDER BY kind, name")
	if err != nil {
		return nil, fmt.Errorf("read resources: %w", err)
	}
	defer rows.Close()
	var out []store.Resource
	for rows.Next() {
		var r store.Resource
		var updated int64
		if err := rows.Scan(&r.Kind, &r.Name, &r.Document, &updated, &r.Source); err != nil {
			return nil, fmt.Errorf("read resources: %w", err)
		}
		r.Updated = rc.FromNanos(updated)
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *SQLite) CommitPolicy(ctx context.Context, c store.PolicyCommit) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, k := range c.Delete {
			if _, err := tx.ExecContext(ctx, "DELETE FROM resources WHERE kind = ? AND name = ?", k.Kind, k.Name); err != nil {
				return err
			}
		}
		// Statements prepared once per commit: an apply on a large
		// cluster writes thousands of rule sets, and preparing each
		// statement again cost as much as running it.
		putRes, err := tx.PrepareContext(ctx, `INSERT INTO resources (kind, name, document, updated, source) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (kind, name) DO UPDATE SET document = excluded.document, updated = excluded.updated, source = excluded.source`)
		if err != nil {
			return err
		}
		defer putRes.Close()
		for _, r := range c.Put {
			if _, err := putRes.ExecContext(ctx, r.Kind, r.Name, r.Document, rc.Nanos(r.Updated), r.Source); err != nil {
				return err
			}
		}
		for _, p := range c.Parts {
			if _, err := tx.ExecContext(ctx, "INSERT INTO ruleset_parts (key, data) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", p.Key, p.Data); err != nil {
				return fmt.Errorf("rule set part %s: %w", p.Key, err)
			}
		}
		// A version stored whole, or one whose part is stored.
		putRS, err := tx.PrepareContext(ctx, `INSERT INTO rulesets (node, version, hash, data, created, shared) SELECT ?1, ?2, ?3, ?4, ?5, ?6
			WHERE ?6 = '' OR EXISTS (SELECT 1 FROM ruleset_parts WHERE key = ?6)`)
		if err != nil {
			return err
		}
		defer putRS.Close()
		pruneRS, err := tx.PrepareContext(ctx, "DELETE FROM rulesets WHERE node = ? AND version <= ? RETURNING shared")
		if err != nil {
			return err
		}
		defer pruneRS.Close()
		sweep := store.NewPartSweep(c)
		for _, rs := range c.RuleSets {
			res, err := putRS.ExecContext(ctx, rs.Node, int64(rs.Version), rs.Hash, rs.Data, rc.Nanos(rs.Created), rs.Shared)
			if err == nil {
				err = partStored(res, rs)
			}
			if err != nil {
				return fmt.Errorf("rule set of %s version %d: %w", rs.Node, rs.Version, err)
			}
			if err := sweep.Pruned(queryStrings(ctx, pruneRS, rs.Node, int64(rs.Version)-store.KeepRuleSetVersions)); err != nil {
				return err
			}
		}
		for _, k := range sweep.Candidates() {
			if _, err := tx.ExecContext(ctx, "DELETE FROM ruleset_parts WHERE key = ?1 AND NOT EXISTS (SELECT 1 FROM rulesets WHERE shared = ?1)", k); err != nil {
				return fmt.Errorf("rule set part %s: %w", k, err)
			}
		}
		_, err = appendAudit(ctx, tx, c.Audit)
		return err
	})
	if err != nil {
		return fmt.Errorf("commit policy: %w", err)
	}
	return nil
}

// partStored says whether an insert of rs (which inserts nothing when its
// shared part is not stored) inserted it.
func partStored(res sql.Result, rs store.RuleSetRecord) error {
	n, err := res.RowsAffected()
	if err == nil && n == 0 {
		err = fmt.Errorf("shared part %s: %w: neither stored nor given in the commit", rs.Shared, store.ErrNotFound)
	}
	return err
}

// queryStrings runs a statement returning one text column, and returns
// the rows' values.
func queryStrings(ctx context.Context, stmt *sql.Stmt, args ...any) ([]string, error) {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// ruleSetColumns are a rule set's columns with its shared part's data
// (” for none), for scanRuleSet: r is rulesets, p its part.
const ruleSetColumns = "r.node, r.version, r.hash, r.data, r.created, r.shared, COALESCE(p.data, X'')"

func (s *SQLite) LatestRuleSets(ctx context.Context) ([]store.RuleSetRecord, error) {
	return queryAll(ctx, s.db, "rule sets", scanRuleSet, `SELECT `+ruleSetColumns+` FROM rulesets r
		JOIN (SELECT node, MAX(version) AS version FROM rulesets GROUP BY node) m ON r.node = m.node AND r.version = m.version
		LEFT JOIN ruleset_parts p ON p.key = r.shared
		ORDER BY r.node`)
}

func (s *SQLite) RuleSet(ctx context.Context, node string, version uint64) (store.RuleSetRecord, error) {
	r, err := scanRuleSet(s.db.QueryRowContext(ctx, "SELECT "+ruleSetColumns+
		" FROM rulesets r LEFT JOIN ruleset_parts p ON p.key = r.shared WHERE r.node = ? AND r.version = ?", node, int64(version)))
	if errors.Is(err, sql.ErrNoRows) {
		return r, store.ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("read rule set %s version %d: %w", node, version, err)
	}
	return r, nil
}

func scanRuleSet(row interface{ Scan(...any) error }) (store.RuleSetRecord, error) {
	var r store.RuleSetRecord
	var version, created int64
	err := row.Scan(&r.Node, &version, &r.Hash, &r.Data, &created, &r.Shared, &r.SharedData)
	r.Version, r.Created = uint64(version), rc.FromNanos(created)
	return r, err
}

func (s *SQLite) Nodes(ctx context.Context) ([]store.Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, agent_version, kernel, capabilities, default_mode, applied_version, applied_hash,
		applied_at, last_contact, last_error, cert_serial, cert_expiry, joined, revoked FROM nodes ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("read nodes: %w", err)
	}
	defer rows.Close()
	var out []store.Node
	for rows.Next() {
		var n store.Node
		var caps string
		var applied, appliedAt, contact, expiry, joined, revoked int64
		if err := rows.Scan(&n.Name, &n.AgentVersion, &n.Kernel, &caps, &n.DefaultMode, &applied, &n.AppliedHash,
			&appliedAt, &contact, &n.LastError, &n.CertSerial, &expiry, &joined, &revoked); err != nil {
			return nil, fmt.Errorf("read nodes: %w", err)
		}
		if caps != "" {
			n.Capabilities = strings.Split(caps, ",")
		}
		n.AppliedVersion = uint64(applied)
		n.AppliedAt, n.LastContact, n.CertExpiry = rc.FromNanos(appliedAt), rc.FromNanos(contact), rc.FromNanos(expiry)
		n.Joined, n.Revoked = rc.FromNanos(joined), rc.FromNanos(revoked)
		out = append(out, n)
	}
	return out, rows.Err()
}

func (s *SQLite) SaveNodes(ctx context.Context, nodes []store.Node) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO nodes (name, agent_version, kernel, capabilities, default_mode, applied_version,
			applied_hash, applied_at, last_contact, last_error, cert_serial, cert_expiry, joined, revoked)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET agent_version = excluded.agent_version, kernel = excluded.kernel,
				capabilities = excluded.capabilities, default_mode = excluded.default_mode,
				applied_version = excluded.applied_version, applied_hash = excluded.applied_hash,
				applied_at = excluded.applied_at, last_contact = excluded.last_contact, last_error = excluded.last_error,
				cert_serial = excluded.cert_serial, cert_expiry = excluded.cert_expiry, joined = excluded.joined,
				revoked = excluded.revoked`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, n := range nodes {
			if _, err := stmt.ExecContext(ctx, n.Name, n.AgentVersion, n.Kernel, strings.Join(n.Capabilities, ","), n.DefaultMode,
				int64(n.AppliedVersion), n.AppliedHash, rc.Nanos(n.AppliedAt), rc.Nanos(n.LastContact), n.LastError, n.CertSerial,
				rc.Nanos(n.CertExpiry), rc.Nanos(n.Joined), rc.Nanos(n.Revoked)); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save nodes: %w", err)
	}
	return nil
}

var _ store.Store = (*SQLite)(nil)
