package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// EventTx runs f in one transaction of flows.db.
func (s *SQLite) EventTx(ctx context.Context, f func(store.EventTx) error) error {
	return inTx(ctx, s.edb, func(tx *sql.Tx) error {
		etx := &sqliteEventTx{ctx: ctx, tx: tx}
		defer etx.close()
		return f(etx)
	})
}

type sqliteEventTx struct {
	ctx        context.Context
	tx         *sql.Tx
	insertFlow *sql.Stmt
}

func (t *sqliteEventTx) close() {
	if t.insertFlow != nil {
		t.insertFlow.Close()
	}
}

func (t *sqliteEventTx) SpoolPosition(node string, spoolID uint64) (store.SpoolPosition, error) {
	p := store.SpoolPosition{Node: node, SpoolID: spoolID}
	var high, updated int64
	var holes string
	err := t.tx.QueryRowContext(t.ctx, "SELECT high, holes, updated FROM flow_spools WHERE node = ? AND spool_id = ?",
		node, int64(spoolID)).Scan(&high, &holes, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("spool position of %s: %w", node, err)
	}
	p.High, p.Updated = uint64(high), rc.FromNanos(updated)
	if p.Holes, err = rc.ParseHoles(holes); err != nil {
		return p, fmt.Errorf("spool position of %s: %w", node, err)
	}
	return p, nil
}

func (t *sqliteEventTx) SaveSpoolPosition(p store.SpoolPosition) error {
	_, err := t.tx.ExecContext(t.ctx, `INSERT INTO flow_spools (node, spool_id, high, holes, updated) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (node, spool_id) DO UPDATE SET high = excluded.high, holes = excluded.holes, updated = excluded.updated`,
		p.Node, int64(p.SpoolID), int64(p.High), rc.FormatHoles(p.Holes), rc.Nanos(p.Updated))
	if err != nil {
		return fmt.Errorf("save spool position of %s: %w", p.Node, err)
	}
	return nil
}

func (t *sqliteEventTx) ForgetSpools(node string, keep int) ([]uint64, error) {
	// A node has few spools (the cap is small), so reading them is cheap;
	// the primary key's node prefix finds them.
	rows, err := t.tx.QueryContext(t.ctx, `SELECT spool_id FROM flow_spools WHERE node = ?
		ORDER BY updated DESC, rowid DESC LIMIT -1 OFFSET ?`, node, keep)
	if err != nil {
		return nil, fmt.Errorf("spools of %s: %w", node, err)
	}
	var ids []uint64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("spools of %s: %w", node, err)
		}
		ids = append(ids, uint64(id))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("spools of %s: %w", node, err)
	}
	for _, id := range ids {
		if _, err := t.tx.ExecContext(t.ctx, "DELETE FROM flow_spools WHERE node = ? AND spool_id = ?", node, int64(id)); err != nil {
			return nil, fmt.Errorf("forget spool of %s: %w", node, err)
		}
	}
	return ids, nil
}

func (t *sqliteEventTx) InsertFlows(recs []flowrecord.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if t.insertFlow == nil {
		var err error
		t.insertFlow, err = t.tx.PrepareContext(t.ctx, "INSERT INTO flows ("+rc.FlowColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
		if err != nil {
			return fmt.Errorf("insert flows: %w", err)
		}
	}
	for i := range recs {
		if _, err := t.insertFlow.ExecContext(t.ctx, rc.FlowArgs(&recs[i])...); err != nil {
			return fmt.Errorf("insert flows: %w", err)
		}
	}
	// The service map's rollup, in the same transaction: one row per
	// bucket and edge of the batch.
	if err := addFlowEdges(t.ctx, t.tx, rc.RollupRecords(recs)); err != nil {
		return fmt.Errorf("insert flows: flow edges: %w", err)
	}
	return nil
}

func (t *sqliteEventTx) LiveAlert(key string) (store.Alert, error) {
	a, err := rc.ScanAlert(t.tx.QueryRowContext(t.ctx, "SELECT "+rc.AlertColumns+" FROM alerts WHERE dedup_key = ? AND state <> ? ORDER BY id DESC LIMIT 1",
		key, store.AlertResolved))
	if errors.Is(err, sql.ErrNoRows) {
		return a, store.ErrNotFound
	}
	return a, err
}

func (t *sqliteEventTx) Alert(id int64) (store.Alert, error) {
	a, err := rc.ScanAlert(t.tx.QueryRowContext(t.ctx, "SELECT "+rc.AlertColumns+" FROM alerts WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("alert %d: %w", id, store.ErrNotFound)
	}
	return a, err
}

func (t *sqliteEventTx) LiveAlerts() ([]store.Alert, error) {
	rows, err := t.tx.QueryContext(t.ctx, "SELECT "+rc.AlertColumns+" FROM alerts WHERE state <> ? ORDER BY id", store.AlertResolved)
	if err != nil {
		return nil, err
	}
	return scanAlerts(rows)
}

func (t *sqliteEventTx) ExpiredAlerts(now time.Time, limit int) ([]store.Alert, error) {
	rows, err := t.tx.QueryContext(t.ctx, "SELECT "+rc.AlertColumns+` FROM alerts INDEXED BY alerts_expires
		WHERE state IN (?, ?) AND expires < ? ORDER BY expires, id LIMIT ?`,
		store.AlertOpen, store.AlertAcknowledged, rc.Nanos(now), limit)
	if err != nil {
		return nil, err
	}
	return scanAlerts(rows)
}

func (t *sqliteEventTx) AlertsToRefresh(before time.Time, limit int) ([]store.Alert, error) {
	rows, err := t.tx.QueryContext(t.ctx, "SELECT "+rc.AlertColumns+` FROM alerts INDEXED BY alerts_refreshed
		WHERE state IN (?, ?) AND refreshed <= ? ORDER BY refreshed, id LIMIT ?`,
		store.AlertOpen, store.AlertAcknowledged, rc.Nanos(before), limit)
	if err != nil {
		return nil, err
	}
	return scanAlerts(rows)
}

func (t *sqliteEventTx) LiveAlertCount(rule string) (int, error) {
	var n int
	err := t.tx.QueryRowContext(t.ctx, "SELECT COUNT(*) FROM alerts WHERE rule = ? AND state IN (?, ?) AND folded = 0",
		rule, store.AlertOpen, store.AlertAcknowledged).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("live alerts of %s: %w", rule, err)
	}
	return n, nil
}

func (t *sqliteEventTx) TrimFinished(maxResolved, maxFinished int) (int64, int64, error) {
	// Deliveries first: a resolved alert with a finished delivery goes
	// anyway (ON DELETE CASCADE), one with a pending delivery stays.
	res, err := t.tx.ExecContext(t.ctx, `DELETE FROM deliveries WHERE id IN (
		SELECT id FROM deliveries INDEXED BY deliveries_finished WHERE state IN (?, ?)
		ORDER BY finished DESC, id DESC LIMIT -1 OFFSET ?)`,
		store.DeliveryDelivered, store.DeliveryGaveUp, maxFinished)
	if err != nil {
		return 0, 0, fmt.Errorf("trim finished deliveries: %w", err)
	}
	d, _ := res.RowsAffected()
	res, err = t.tx.ExecContext(t.ctx, `DELETE FROM alerts WHERE id IN (
		SELECT id FROM alerts INDEXED BY alerts_resolved WHERE state = ?
		ORDER BY resolved_at DESC, id DESC LIMIT -1 OFFSET ?)
		AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.id AND d.state = ?)`,
		store.AlertResolved, maxResolved, store.DeliveryPending)
	if err != nil {
		return 0, 0, fmt.Errorf("trim resolved alerts: %w", err)
	}
	a, _ := res.RowsAffected()
	return a, d, nil
}

func scanAlerts(rows *sql.Rows) ([]store.Alert, error) {
	defer rows.Close()
	var out []store.Alert
	for rows.Next() {
		a, err := rc.ScanAlert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func (t *sqliteEventTx) InsertAlert(a *store.Alert) error {
	args := rc.InsertAlertArgs(a)
	err := t.tx.QueryRowContext(t.ctx, "INSERT INTO alerts ("+rc.InsertAlertColumns+") VALUES ("+
		strings.TrimSuffix(strings.Repeat("?, ", len(args)), ", ")+") RETURNING id", args...).Scan(&a.ID)
	if err != nil {
		return fmt.Errorf("insert alert: %w", err)
	}
	return nil
}

func (t *sqliteEventTx) UpdateAlert(a *store.Alert) error {
	if _, err := t.tx.ExecContext(t.ctx, "UPDATE alerts SET "+rc.UpdateAlertSet+" WHERE id = ?", rc.UpdateAlertArgs(a)...); err != nil {
		return fmt.Errorf("update alert %d: %w", a.ID, err)
	}
	return nil
}

func (t *sqliteEventTx) AddDeliveries(ds []store.Delivery) error {
	for i := range ds {
		d := &ds[i]
		if d.State == "" {
			d.State = store.DeliveryPending
		}
		err := t.tx.QueryRowContext(t.ctx, `INSERT INTO deliveries (alert_id, webhook, event, state, attempts, next_attempt,
			created, last_error, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			d.AlertID, d.Webhook, d.Event, d.State, d.Attempts, rc.Nanos(d.NextAttempt), rc.Nanos(d.Created), d.LastError,
			rc.Nanos(d.Finished)).Scan(&d.ID)
		if err != nil {
			return fmt.Errorf("queue delivery of alert %d to %s: %w", d.AlertID, d.Webhook, err)
		}
	}
	return nil
}

func (t *sqliteEventTx) LastDeliveryCreated(alertID int64, webhook string) (time.Time, error) {
	var created sql.NullInt64
	err := t.tx.QueryRowContext(t.ctx, "SELECT MAX(created) FROM deliveries WHERE alert_id = ? AND webhook = ?",
		alertID, webhook).Scan(&created)
	if err != nil {
		return time.Time{}, err
	}
	return rc.FromNanos(created.Int64), nil
}

// Flows answers a flow query from an index: the filters that have one
// (verdict, port, rule, workload) lead, time orders.
func (s *SQLite) Flows(ctx context.Context, q store.FlowQuery) ([]flowrecord.Record, error) {
	var out []flowrecord.Record
	err := s.ScanFlows(ctx, q, func(_ int64, r *flowrecord.Record) error {
		out = append(out, *r)
		return nil
	})
	return out, err
}

// ScanFlows is Flows one record at a time, with the records' ids.
func (s *SQLite) ScanFlows(ctx context.Context, q store.FlowQuery, fn func(id int64, r *flowrecord.Record) error) error {
	f := rc.NewFlowFilter(q, "%s IN (SELECT value FROM json_each(?))", rc.MarshalString(q.Workloads))
	if f.None {
		return nil
	}
	if q.Before != 0 {
		var t int64
		err := s.edb.QueryRowContext(ctx, "SELECT time FROM flows WHERE id = ?", q.Before).Scan(&t)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read flows: %w", classify(err))
		}
		f.Page(t, q.Before)
	}
	query, args := f.Query(q), f.Args
	rows, err := s.edb.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("read flows: %w", classify(err))
	}
	defer rows.Close()
	for rows.Next() {
		var r flowrecord.Record
		id, err := rc.ScanFlow(rows, &r)
		if err != nil {
			return fmt.Errorf("read flows: %w", err)
		}
		if err := fn(id, &r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read flows: %w", classify(err))
	}
	return nil
}

func (s *SQLite) PruneFlows(ctx context.Context, before time.Time, limit int) (int64, error) {
	return s.pruneFlows(ctx, "time < ?", before.UnixNano(), limit)
}

// pruneFlows deletes the oldest limit flows matching where, a condition
// on the one argument arg ("? = 1" with 1 for every flow), and, in the same transaction, the rollup rows of the buckets
// up to the one holding the latest of them (dropFlowEdges): the flows
// deleted are the oldest, so every bucket after it has lost none.
func (s *SQLite) pruneFlows(ctx context.Context, where string, arg any, limit int) (int64, error) {
	var n int64
	err := inTx(ctx, s.edb, func(tx *sql.Tx) error {
		var last sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT MAX(time) FROM (SELECT time FROM flows WHERE "+where+" ORDER BY time LIMIT ?)",
			arg, limit).Scan(&last); err != nil {
			return err
		}
		if !last.Valid {
			return nil
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM flows WHERE id IN (SELECT id FROM flows WHERE "+where+" ORDER BY time LIMIT ?)", arg, limit)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		return dropFlowEdges(ctx, tx, last.Int64)
	})
	if err != nil {
		return 0, fmt.Errorf("prune flows: %w", err)
	}
	return n, nil
}

func (s *SQLite) PruneSpoolPositions(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.edb.ExecContext(ctx, "DELETE FROM flow_spools WHERE updated < ?", before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune spool positions: %w", classify(err))
	}
	return res.RowsAffected()
}

func (s *SQLite) PruneOldestFlows(ctx context.Context, n int) (int64, error) {
	return s.pruneFlows(ctx, "? = 1", 1, n)
}

func (s *SQLite) EventStoreSize(ctx context.Context) (int64, int64, error) {
	var pages, free, pageSize, flows int64
	err := errors.Join(
		s.edb.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages),
		s.edb.QueryRowContext(ctx, "PRAGMA freelist_count").Scan(&free),
		s.edb.QueryRowContext(ctx, "PRAGMA page_size").Scan(&pageSize),
		// MAX(id) - MIN(id) + 1 would be cheaper but wrong after deletes
		// in the middle; COUNT walks the smallest index.
		s.edb.QueryRowContext(ctx, "SELECT COUNT(*) FROM flows").Scan(&flows),
	)
	if err != nil {
		return 0, 0, fmt.Errorf("event store size: %w", err)
	}
	return (pages - free) * pageSize, flows, nil
}

func (s *SQLite) Alerts(ctx context.Context, q store.AlertQuery) ([]store.Alert, error) {
	var where []string
	var args []any
	if q.ID != 0 {
		where = append(where, "id = ?")
		args = append(args, q.ID)
	}
	if len(q.States) > 0 {
		where = append(where, "state IN ("+strings.TrimSuffix(strings.Repeat("?, ", len(q.States)), ", ")+")")
		for _, st := range q.States {
			args = append(args, st)
		}
	}
	if q.Rule != "" {
		where = append(where, "rule = ?")
		args = append(args, q.Rule)
	}
	if !q.Since.IsZero() {
		where = append(where, "last_seen >= ?")
		args = append(args, q.Since.UnixNano())
	}
	query := "SELECT " + rc.AlertColumns + " FROM alerts"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY last_seen DESC, id DESC"
	if q.Limit > 0 {
		query += " LIMIT " + strconv.Itoa(q.Limit)
	}
	rows, err := s.edb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read alerts: %w", classify(err))
	}
	return scanAlerts(rows)
}

func (s *SQLite) PruneAlerts(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := inTx(ctx, s.edb, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM deliveries WHERE state <> ? AND finished < ?", store.DeliveryPending, before.UnixNano())
		if err != nil {
			return err
		}
		d, _ := res.RowsAffected()
		// Deliveries of a deleted alert go with it (ON DELETE CASCADE):
		// only alerts with nothing pending are old enough to go.
		res, err = tx.ExecContext(ctx, `DELETE FROM alerts WHERE state = ? AND resolved_at < ?
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.id AND d.state = ?)`,
			store.AlertResolved, before.UnixNano(), store.DeliveryPending)
		if err != nil {
			return err
		}
		a, _ := res.RowsAffected()
		n = a + d
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune alerts: %w", err)
	}
	return n, nil
}

const deliveryColumns = "id, alert_id, webhook, event, state, attempts, next_attempt, created, last_error, finished"

func scanDelivery(row interface{ Scan(...any) error }) (store.Delivery, error) {
	var d store.Delivery
	var next, created, finished int64
	err := row.Scan(&d.ID, &d.AlertID, &d.Webhook, &d.Event, &d.State, &d.Attempts, &next, &created, &d.LastError, &finished)
	d.NextAttempt, d.Created, d.Finished = rc.FromNanos(next), rc.FromNanos(created), rc.FromNanos(finished)
	return d, err
}

// notBehindOlder keeps, of pending deliveries d, those with no older
// pending delivery of their alert to their webhook (the one parameter is
// DeliveryPending): deliveries of one alert to one webhook go in order.
const notBehindOlder = `NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.alert_id = d.alert_id AND o.webhook = d.webhook AND o.state = ? AND o.id < d.id)`

func (s *SQLite) DueDeliveries(ctx context.Context, now time.Time, perWebhook, limit int) ([]store.Delivery, error) {
	rows, err := s.edb.QueryContext(ctx, `SELECT `+deliveryColumns+` FROM (
		SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.webhook ORDER BY d.next_attempt, d.id) AS nth FROM deliveries d
		WHERE d.state = ? AND d.next_attempt <= ?
		AND `+notBehindOlder+`)
		WHERE nth <= ? ORDER BY next_attempt, id LIMIT ?`, store.DeliveryPending, now.UnixNano(), store.DeliveryPending, perWebhook, limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Delivery
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *SQLite) NextDeliveryAt(ctx context.Context) (time.Time, int, error) {
	var next sql.NullInt64
	var n int
	// The minimum is over the deliveries DueDeliveries could return: one
	// queued behind an older pending delivery of its alert to its webhook
	// is not due before that one, whatever its own next_attempt says.
	err := s.edb.QueryRowContext(ctx, `SELECT
		(SELECT MIN(d.next_attempt) FROM deliveries d WHERE d.state = ?
			AND `+notBehindOlder+`),
		(SELECT COUNT(*) FROM deliveries WHERE state = ?)`,
		store.DeliveryPending, store.DeliveryPending, store.DeliveryPending).Scan(&next, &n)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("read outbox: %w", classify(err))
	}
	return rc.FromNanos(next.Int64), n, nil
}

func (s *SQLite) WebhookStats(ctx context.Context) ([]store.WebhookStats, error) {
	rows, err := s.edb.QueryContext(ctx, `SELECT w.webhook,
		(SELECT MAX(finished) FROM deliveries WHERE webhook = w.webhook AND state = ?),
		COALESCE((SELECT last_error FROM deliveries WHERE webhook = w.webhook AND last_error <> '' AND state <> ?
			ORDER BY id DESC LIMIT 1), ''),
		(SELECT COUNT(*) FROM deliveries WHERE webhook = w.webhook AND state = ?),
		(SELECT COUNT(*) FROM deliveries WHERE webhook = w.webhook AND state = ?)
		FROM (SELECT DISTINCT webhook FROM deliveries) w ORDER BY w.webhook`,
		store.DeliveryDelivered, store.DeliveryDelivered, store.DeliveryPending, store.DeliveryGaveUp)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", classify(err))
	}
	defer rows.Close()
	var out []store.WebhookStats
	for rows.Next() {
		var w store.WebhookStats
		var last sql.NullInt64
		if err := rows.Scan(&w.Webhook, &last, &w.LastError, &w.Pending, &w.GaveUp); err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		w.LastDelivered = rc.FromNanos(last.Int64)
		out = append(out, w)
	}
	return out, rows.Err()
}

func (s *SQLite) UpdateDelivery(ctx context.Context, d store.Delivery) error {
	_, err := s.edb.ExecContext(ctx, "UPDATE deliveries SET state = ?, attempts = ?, next_attempt = ?, last_error = ?, finished = ? WHERE id = ?",
		d.State, d.Attempts, rc.Nanos(d.NextAttempt), d.LastError, rc.Nanos(d.Finished), d.ID)
	if err != nil {
		return fmt.Errorf("update delivery %d: %w", d.ID, classify(err))
	}
	return nil
}

func (s *SQLite) Delivery(ctx context.Context, id int64) (store.Delivery, error) {
	d, err := scanDelivery(s.edb.QueryRowContext(ctx, "SELECT "+deliveryColumns+" FROM deliveries WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("delivery %d: %w", id, store.ErrNotFound)
	}
	return d, err
}

var _ store.EventStore = (*SQLite)(nil)
