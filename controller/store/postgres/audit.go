package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
)

// appendAudit chains and inserts recs in tx, after the newest stored
// record, under lockAudit: controller processes sharing the database
// append one at a time, so IDs have no gaps and each record chains on
// the one committed before it.
func appendAudit(ctx context.Context, tx pgx.Tx, recs []store.AuditRecord) ([]store.AuditRecord, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	if err := rc.CheckAudit(recs); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockAudit); err != nil {
		return nil, err
	}
	return rc.AppendAudit(
		func() (store.AuditRecord, error) { return rc.ScanAudit(tx.QueryRow(ctx, rc.LastAuditSQL)) },
		func(err error) bool { return errors.Is(err, pgx.ErrNoRows) },
		func(args []any) error { _, err := tx.Exec(ctx, q(rc.InsertAuditSQL), args...); return err },
		recs)
}

func (s *Postgres) AppendAudit(ctx context.Context, recs ...store.AuditRecord) ([]store.AuditRecord, error) {
	var out []store.AuditRecord
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = appendAudit(ctx, tx, recs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return out, nil
}

func (s *Postgres) AuditRecords(ctx context.Context, aq store.AuditQuery) ([]store.AuditRecord, error) {
	query, args := rc.AuditQuery(aq)
	return queryAll(ctx, s.pool, "audit records", func(row pgx.Row) (store.AuditRecord, error) { return rc.ScanAudit(row) },
		q(query), args...)
}

func (s *Postgres) LastAudit(ctx context.Context) (store.AuditRecord, error) {
	r, err := rc.ScanAudit(s.pool.QueryRow(ctx, rc.LastAuditSQL))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, store.ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("read the last audit record: %w", classify(err))
	}
	return r, nil
}

// PruneAudit deletes below the oldest record to keep, as the SQLite
// store does, under lockAudit (no append interleaves with it).
func (s *Postgres) PruneAudit(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockAudit); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM audit WHERE id < COALESCE(
			(SELECT MIN(id) FROM audit WHERE time >= $1), (SELECT MAX(id) FROM audit))`, rc.Nanos(before))
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune audit records: %w", err)
	}
	return n, nil
}
