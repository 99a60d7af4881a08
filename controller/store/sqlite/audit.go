package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
)

// appendAudit chains and inserts recs in tx, after the newest stored
// record. The control database has one connection and every
// transaction takes the write lock at BEGIN (_txlock=immediate): the
// newest record read here is still the newest at commit, also when
// another process shares the file.
func appendAudit(ctx context.Context, tx *sql.Tx, recs []store.AuditRecord) ([]store.AuditRecord, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	if err := rc.CheckAudit(recs); err != nil {
		return nil, err
	}
	return rc.AppendAudit(
		func() (store.AuditRecord, error) { return rc.ScanAudit(tx.QueryRowContext(ctx, rc.LastAuditSQL)) },
		func(err error) bool { return errors.Is(err, sql.ErrNoRows) },
		func(args []any) error { _, err := tx.ExecContext(ctx, rc.InsertAuditSQL, args...); return err },
		recs)
}

func (s *SQLite) AppendAudit(ctx context.Context, recs ...store.AuditRecord) ([]store.AuditRecord, error) {
	var out []store.AuditRecord
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = appendAudit(ctx, tx, recs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}

func (s *SQLite) AuditRecords(ctx context.Context, q store.AuditQuery) ([]store.AuditRecord, error) {
	query, args := rc.AuditQuery(q)
	return queryAll(ctx, s.db, "audit records", rc.ScanAudit, query, args...)
}

func (s *SQLite) LastAudit(ctx context.Context) (store.AuditRecord, error) {
	r, err := rc.ScanAudit(s.db.QueryRowContext(ctx, rc.LastAuditSQL))
	if errors.Is(err, sql.ErrNoRows) {
		return r, store.ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("read the last audit record: %w", err)
	}
	return r, nil
}

// PruneAudit deletes below the oldest record to keep: the first at or
// after before, or, when every record is older, the newest (kept so that
// the next record's ID and chain follow on).
func (s *SQLite) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM audit WHERE id < COALESCE(
			(SELECT MIN(id) FROM audit WHERE time >= ?), (SELECT MAX(id) FROM audit))`, rc.Nanos(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune audit records: %w", err)
	}
	return n, nil
}
