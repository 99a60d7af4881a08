package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// EventTx runs f in one transaction holding lockEvents: event
// transactions of every controller process sharing the database run one
// at a time, as SQLite's single writer does, so the alert engine's
// read-modify-write of alerts and the outbox is never interleaved.
func (s *Postgres) EventTx(ctx context.Context, f func(store.EventTx) error) error {
	var etx *pgEventTx
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockEvents); err != nil {
			return err
		}
		etx = &pgEventTx{ctx: ctx, tx: tx, s: s}
		if err := f(etx); err != nil {
			return err
		}
		return addFlowCount(ctx, tx, etx.inserted)
	})
	if err == nil && etx != nil {
		s.partitionsCommitted(etx.made)
		s.flowsStored(etx.stored)
	}
	return err
}

// FlowTx (store.ConcurrentFlowWriter) runs f holding lockEvents shared
// and the spool locks of nodes: flow writers COPY side by side, while
// partitions, retention and the rollup, which take lockEvents
// exclusively, wait. What must be one transaction at a time (alerts, the
// outbox, flow_count, the rollup's rows of late flows) waits for
// lockFlowSerial (Serialize, taken at the end if f did not). A partition
// the flows need and that does not exist is not made here: CREATE and
// ATTACH would wait for the other writers, which may be waiting for this
// one. The transaction is rolled back, the partitions are made in one of
// their own (makePartitions) and f runs again (at most three times).
func (s *Postgres) FlowTx(ctx context.Context, nodes []string, f func(store.FlowTx) error) error {
	keys := nodeLockKeys(nodes)
	for attempt := 1; ; attempt++ {
		var etx *pgEventTx
		err := s.tx(ctx, func(tx pgx.Tx) error {
			// One round trip: lockEvents first, then the nodes' (unnest
			// yields the keys in order, sorted: every writer takes them
			// in the same order).
			var locks pgx.Batch
			locks.Queue("SELECT pg_advisory_xact_lock_shared($1)", lockEvents)
			locks.Queue("SELECT pg_advisory_xact_lock($1::INTEGER, k) FROM unnest($2::INTEGER[]) k", lockSpools, keys)
			if err := tx.SendBatch(ctx, &locks).Close(); err != nil {
				return fmt.Errorf("lock events and spool positions: %w", err)
			}
			etx = &pgEventTx{ctx: ctx, tx: tx, s: s, shared: true}
			if err := f(etx); err != nil {
				return err
			}
			if err := etx.Serialize(); err != nil {
				return err
			}
			if len(etx.late) > 0 {
				if err := addFlowEdges(ctx, tx, etx.late, etx.rollup.from); err != nil {
					return fmt.Errorf("insert flows: %w", err)
				}
			}
			return addFlowCount(ctx, tx, etx.inserted)
		})
		var missing *missingPartitions
		if errors.As(err, &missing) && attempt < 3 {
			if err := s.makePartitions(ctx, missing.los); err != nil {
				return err
			}
			continue
		}
		if err == nil && etx != nil {
			s.partitionsCommitted(etx.made)
			s.flowsStored(etx.stored)
		}
		return err
	}
}

var _ store.ConcurrentFlowWriter = (*Postgres)(nil)

// nodeLockKeys are the second keys of the nodes' lockSpools locks,
// sorted and distinct (two nodes may share one: they then wait for each
// other, which is only slower).
func nodeLockKeys(nodes []string) []int32 {
	keys := make([]int32, 0, len(nodes))
	for _, n := range nodes {
		h := fnv.New32a()
		h.Write([]byte(n))
		keys = append(keys, int32(h.Sum32()))
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// missingPartitions is FlowTx's InsertFlows' refusal of records whose
// partitions do not exist (starts los).
type missingPartitions struct{ los []int64 }

func (e *missingPartitions) Error() string {
	return fmt.Sprintf("%d flow partitions to make first", len(e.los))
}

// makePartitions makes the partitions starting at los in a transaction
// of their own, holding lockEvents exclusively.
func (s *Postgres) makePartitions(ctx context.Context, los []int64) error {
	var etx *pgEventTx
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockEvents); err != nil {
			return err
		}
		etx = &pgEventTx{ctx: ctx, tx: tx, s: s}
		for _, lo := range los {
			if _, err := etx.ensurePartition(lo); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("insert flows: %w", err)
	}
	s.partitionsCommitted(etx.made)
	return nil
}

// Serialize (store.FlowTx) takes lockFlowSerial, once.
func (t *pgEventTx) Serialize() error {
	if !t.shared || t.serial {
		return nil
	}
	if _, err := t.tx.Exec(t.ctx, "SELECT pg_advisory_xact_lock($1)", lockFlowSerial); err != nil {
		return fmt.Errorf("wait for the event writers' turn: %w", err)
	}
	t.serial = true
	return nil
}

type pgEventTx struct {
	ctx context.Context
	tx  pgx.Tx
	s   *Postgres
	// shared: the transaction holds lockEvents shared (FlowTx), not
	// exclusively; serial: it took lockFlowSerial (Serialize).
	shared, serial bool
	// missing are the partition starts a shared transaction's records
	// need and that do not exist (FlowTx makes them apart).
	missing []int64
	// late are the records a shared transaction stored that the rollup
	// already covers: added to it at the end, after Serialize.
	late []flowrecord.Record
	// made are the partition starts this transaction settled (made, found
	// made, or covered by a partition of another size): nothing to do for
	// them once it commits.
	made []int64
	// inserted counts the flows InsertFlows stored: added to flow_count
	// once, at the end of the transaction.
	inserted int64
	// rollup is the rollup's state, read at the first InsertFlows: it
	// holds while the transaction holds lockEvents.
	rollup *rollupState
	// stored holds the partition starts of the flows InsertFlows stored.
	stored map[int64]struct{}
}

// addFlowCount adds n (negative: deleted flows) to flow_count in tx,
// which holds lockEvents: every insert and delete of flows goes through
// it, so the count stays the table's.
func addFlowCount(ctx context.Context, tx pgx.Tx, n int64) error {
	if n == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, "UPDATE flow_count SET n = n + $1", n); err != nil {
		return fmt.Errorf("count flows: %w", err)
	}
	return nil
}

func (t *pgEventTx) SpoolPosition(node string, spoolID uint64) (store.SpoolPosition, error) {
	p := store.SpoolPosition{Node: node, SpoolID: spoolID}
	var high, updated int64
	var holes string
	err := t.tx.QueryRow(t.ctx, "SELECT high, holes, updated FROM flow_spools WHERE node = $1 AND spool_id = $2",
		node, int64(spoolID)).Scan(&high, &holes, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
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

func (t *pgEventTx) SaveSpoolPosition(p store.SpoolPosition) error {
	_, err := t.tx.Exec(t.ctx, `INSERT INTO flow_spools (node, spool_id, high, holes, updated) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (node, spool_id) DO UPDATE SET high = excluded.high, holes = excluded.holes, updated = excluded.updated`,
		p.Node, int64(p.SpoolID), int64(p.High), rc.FormatHoles(p.Holes), rc.Nanos(p.Updated))
	if err != nil {
		return fmt.Errorf("save spool position of %s: %w", p.Node, err)
	}
	return nil
}

func (t *pgEventTx) ForgetSpools(node string, keep int) ([]uint64, error) {
	ids, err := queryAll(t.ctx, t.tx, "spools of "+node, func(row pgx.Row) (uint64, error) {
		var id int64
		err := row.Scan(&id)
		return uint64(id), err
	}, `DELETE FROM flow_spools WHERE node = $1 AND spool_id IN (
		SELECT spool_id FROM flow_spools WHERE node = $1 ORDER BY updated DESC, seq DESC OFFSET $2)
		RETURNING spool_id`, node, keep)
	if err != nil {
		return nil, fmt.Errorf("forget spools: %w", err)
	}
	return ids, nil
}

// flowCopyColumns are rowcodec.FlowColumns as COPY takes them.
var flowCopyColumns = func() []string {
	var out []string
	for _, c := range strings.Split(rc.FlowColumns, ",") {
		out = append(out, strings.TrimSpace(c))
	}
	return out
}()

// InsertFlows makes the partitions the records need, then COPYs them
// into the flows table, which routes each row to its partition.
func (t *pgEventTx) InsertFlows(recs []flowrecord.Record) error {
	if len(recs) == 0 {
		return nil
	}
	for i := range recs {
		lo, err := t.ensurePartition(recs[i].Time.UnixNano())
		if err != nil {
			return fmt.Errorf("insert flows: %w", err)
		}
		if t.stored == nil {
			t.stored = map[int64]struct{}{}
		}
		t.stored[lo] = struct{}{}
	}
	if len(t.missing) > 0 {
		return &missingPartitions{los: t.missing}
	}
	if err := copyFlows(t.ctx, t.tx, recs); err != nil {
		return fmt.Errorf("insert flows: %w", err)
	}
	// The service map's rollup, in the same transaction, of the records
	// it already covers (sent late); RollupFlowEdges sums the others.
	if t.rollup == nil {
		st, err := readRollupState(t.ctx, t.tx)
		if err != nil {
			return fmt.Errorf("insert flows: %w", err)
		}
		t.rollup = &st
	}
	var late []flowrecord.Record
	for i := range recs {
		if recs[i].Time.UnixNano() < t.rollup.upto {
			late = append(late, recs[i])
		}
	}
	if len(late) > 0 && t.shared {
		t.late = append(t.late, late...)
	} else if len(late) > 0 {
		if err := addFlowEdges(t.ctx, t.tx, late, t.rollup.from); err != nil {
			return fmt.Errorf("insert flows: %w", err)
		}
	}
	t.inserted += int64(len(recs))
	return nil
}

// partitionStart is the lower bound of the partition of a time (UTC
// days or hours).
func (s *Postgres) partitionStart(nanos int64) int64 {
	return time.Unix(0, nanos).UTC().Truncate(s.part).UnixNano()
}

// partitionName names a partition by its start, flows_pYYYYMMDDHH (UTC).
func partitionName(lo int64) string {
	return "flows_p" + time.Unix(0, lo).UTC().Format("2006010215")
}

// inWindow says whether a partition starting at lo may be made: from the
// lookback before now to two partitions ahead.
func (s *Postgres) inWindow(lo int64) bool {
	now := s.now()
	return lo >= now.Add(-s.back).UnixNano() && lo <= now.Add(2*s.part).UnixNano()
}

func (s *Postgres) partitionKnown(lo int64) bool {
	s.partMu.Lock()
	defer s.partMu.Unlock()
	return s.parts[lo]
}

func (s *Postgres) partitionsCommitted(los []int64) {
	s.partMu.Lock()
	defer s.partMu.Unlock()
	for _, lo := range los {
		s.parts[lo] = true
	}
}

func (s *Postgres) partitionsDropped(los []int64) {
	s.partMu.Lock()
	defer s.partMu.Unlock()
	for _, lo := range los {
		delete(s.parts, lo)
	}
}

// ensurePartition makes the partition for a record time if it is in the
// window and does not exist. The transaction holds lockEvents, so no
// other process makes or drops one meanwhile; a shared one (FlowTx) only
// notes the partitions to make (missing). Rows of its range already
// in flows_default (stored while the range was outside the window) move
// into it: the table is made apart, filled, then attached, which
// PostgreSQL allows only once the default partition has no row of the
// range. It returns the start of the record's partition range, or
// outsideWindow when the range is outside the window (flows_default
// holds the record).
func (t *pgEventTx) ensurePartition(nanos int64) (int64, error) {
	s := t.s
	lo := s.partitionStart(nanos)
	if s.partitionKnown(lo) {
		return lo, nil
	}
	if !s.inWindow(lo) {
		return outsideWindow, nil
	}
	if slices.Contains(t.made, lo) || slices.Contains(t.missing, lo) {
		return lo, nil
	}
	hi := time.Unix(0, lo).UTC().Add(s.part).UnixNano()
	name := partitionName(lo)
	var exists bool
	if err := t.tx.QueryRow(t.ctx, "SELECT EXISTS (SELECT 1 FROM flow_partitions WHERE lo = $1)", lo).Scan(&exists); err != nil {
		return 0, fmt.Errorf("partition %s: %w", name, err)
	}
	if !exists {
		// The partition size may have changed since a partition covering
		// part of this range was made: then the rows stay in whichever
		// partition holds them, and this range goes to flows_default.
		var overlap bool
		if err := t.tx.QueryRow(t.ctx, "SELECT EXISTS (SELECT 1 FROM flow_partitions WHERE lo < $2 AND hi > $1)", lo, hi).Scan(&overlap); err != nil {
			return 0, fmt.Errorf("partition %s: %w", name, err)
		}
		if overlap {
			// Nothing to make for this range: remembered like a made
			// one, so that its records cost no more queries.
			t.made = append(t.made, lo)
			return lo, nil
		}
		if t.shared {
			// Made apart (FlowTx): the records are not stored here.
			if !slices.Contains(t.missing, lo) {
				t.missing = append(t.missing, lo)
			}
			return lo, nil
		}
		id := pgx.Identifier{name}.Sanitize()
		for _, stmt := range []string{
			"CREATE TABLE " + id + " (LIKE flows INCLUDING DEFAULTS)",
			"WITH moved AS (DELETE FROM flows_default WHERE time >= " + strconv.FormatInt(lo, 10) + " AND time < " + strconv.FormatInt(hi, 10) +
				" RETURNING *) INSERT INTO " + id + " SELECT * FROM moved",
			"ALTER TABLE flows ATTACH PARTITION " + id + " FOR VALUES FROM (" + strconv.FormatInt(lo, 10) + ") TO (" + strconv.FormatInt(hi, 10) + ")",
		} {
			if _, err := t.tx.Exec(t.ctx, stmt); err != nil {
				return 0, fmt.Errorf("make partition %s: %w", name, err)
			}
		}
		if _, err := t.tx.Exec(t.ctx, "INSERT INTO flow_partitions (name, lo, hi) VALUES ($1, $2, $3)", name, lo, hi); err != nil {
			return 0, fmt.Errorf("make partition %s: %w", name, err)
		}
	}
	t.made = append(t.made, lo)
	return lo, nil
}

func (t *pgEventTx) LiveAlert(key string) (store.Alert, error) {
	a, err := rc.ScanAlert(t.tx.QueryRow(t.ctx, "SELECT "+rc.AlertColumns+" FROM alerts WHERE dedup_key = $1 AND state <> $2 ORDER BY id DESC LIMIT 1",
		key, store.AlertResolved))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, store.ErrNotFound
	}
	return a, err
}

func (t *pgEventTx) Alert(id int64) (store.Alert, error) {
	a, err := rc.ScanAlert(t.tx.QueryRow(t.ctx, "SELECT "+rc.AlertColumns+" FROM alerts WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("alert %d: %w", id, store.ErrNotFound)
	}
	return a, err
}

func scanAlertRow(row pgx.Row) (store.Alert, error) { return rc.ScanAlert(row) }

func (t *pgEventTx) LiveAlerts() ([]store.Alert, error) {
	return queryAll(t.ctx, t.tx, "alerts", scanAlertRow, "SELECT "+rc.AlertColumns+" FROM alerts WHERE state <> $1 ORDER BY id", store.AlertResolved)
}

func (t *pgEventTx) ExpiredAlerts(now time.Time, limit int) ([]store.Alert, error) {
	return queryAll(t.ctx, t.tx, "alerts", scanAlertRow, "SELECT "+rc.AlertColumns+` FROM alerts
		WHERE state IN ($1, $2) AND expires < $3 ORDER BY expires, id LIMIT $4`,
		store.AlertOpen, store.AlertAcknowledged, rc.Nanos(now), limit)
}

func (t *pgEventTx) AlertsToRefresh(before time.Time, limit int) ([]store.Alert, error) {
	return queryAll(t.ctx, t.tx, "alerts", scanAlertRow, "SELECT "+rc.AlertColumns+` FROM alerts
		WHERE state IN ($1, $2) AND refreshed <= $3 ORDER BY refreshed, id LIMIT $4`,
		store.AlertOpen, store.AlertAcknowledged, rc.Nanos(before), limit)
}

func (t *pgEventTx) LiveAlertCount(rule string) (int, error) {
	var n int
	err := t.tx.QueryRow(t.ctx, "SELECT COUNT(*) FROM alerts WHERE rule = $1 AND state IN ($2, $3) AND folded = 0",
		rule, store.AlertOpen, store.AlertAcknowledged).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("live alerts of %s: %w", rule, err)
	}
	return n, nil
}

func (t *pgEventTx) TrimFinished(maxResolved, maxFinished int) (int64, int64, error) {
	// Deliveries first: a resolved alert with a finished delivery goes
	// anyway (ON DELETE CASCADE), one with a pending delivery stays.
	tag, err := t.tx.Exec(t.ctx, `DELETE FROM deliveries WHERE id IN (
		SELECT id FROM deliveries WHERE state IN ($1, $2)
		ORDER BY finished DESC, id DESC OFFSET $3)`,
		store.DeliveryDelivered, store.DeliveryGaveUp, maxFinished)
	if err != nil {
		return 0, 0, fmt.Errorf("trim finished deliveries: %w", err)
	}
	d := tag.RowsAffected()
	tag, err = t.tx.Exec(t.ctx, `DELETE FROM alerts WHERE id IN (
		SELECT id FROM alerts WHERE state = $1
		ORDER BY resolved_at DESC, id DESC OFFSET $2)
		AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.id AND d.state = $3)`,
		store.AlertResolved, maxResolved, store.DeliveryPending)
	if err != nil {
		return 0, 0, fmt.Errorf("trim resolved alerts: %w", err)
	}
	return tag.RowsAffected(), d, nil
}

func (t *pgEventTx) InsertAlert(a *store.Alert) error {
	args := rc.InsertAlertArgs(a)
	err := t.tx.QueryRow(t.ctx, q("INSERT INTO alerts ("+rc.InsertAlertColumns+") VALUES ("+
		strings.TrimSuffix(strings.Repeat("?, ", len(args)), ", ")+") RETURNING id"), args...).Scan(&a.ID)
	if err != nil {
		return fmt.Errorf("insert alert: %w", err)
	}
	return nil
}

func (t *pgEventTx) UpdateAlert(a *store.Alert) error {
	if _, err := t.tx.Exec(t.ctx, q("UPDATE alerts SET "+rc.UpdateAlertSet+" WHERE id = ?"), rc.UpdateAlertArgs(a)...); err != nil {
		return fmt.Errorf("update alert %d: %w", a.ID, err)
	}
	return nil
}

func (t *pgEventTx) AddDeliveries(ds []store.Delivery) error {
	for i := range ds {
		d := &ds[i]
		if d.State == "" {
			d.State = store.DeliveryPending
		}
		err := t.tx.QueryRow(t.ctx, `INSERT INTO deliveries (alert_id, webhook, event, state, attempts, next_attempt,
			created, last_error, finished) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
			d.AlertID, d.Webhook, d.Event, d.State, d.Attempts, rc.Nanos(d.NextAttempt), rc.Nanos(d.Created), d.LastError,
			rc.Nanos(d.Finished)).Scan(&d.ID)
		if err != nil {
			return fmt.Errorf("queue delivery of alert %d to %s: %w", d.AlertID, d.Webhook, err)
		}
	}
	return nil
}

func (t *pgEventTx) LastDeliveryCreated(alertID int64, webhook string) (time.Time, error) {
	var created *int64
	err := t.tx.QueryRow(t.ctx, "SELECT MAX(created) FROM deliveries WHERE alert_id = $1 AND webhook = $2",
		alertID, webhook).Scan(&created)
	if err != nil || created == nil {
		return time.Time{}, err
	}
	return rc.FromNanos(*created), nil
}

// Flows answers a flow query from an index: the filters that have one
// lead, time orders.
func (s *Postgres) Flows(ctx context.Context, fq store.FlowQuery) ([]flowrecord.Record, error) {
	var out []flowrecord.Record
	err := s.ScanFlows(ctx, fq, func(_ int64, r *flowrecord.Record) error {
		out = append(out, *r)
		return nil
	})
	return out, err
}

// ScanFlows is Flows one record at a time, with the records' ids.
func (s *Postgres) ScanFlows(ctx context.Context, fq store.FlowQuery, fn func(id int64, r *flowrecord.Record) error) error {
	f := rc.NewFlowFilter(fq, "%s = ANY(?)", fq.Workloads)
	if f.None {
		return nil
	}
	if fq.Before != 0 {
		var t int64
		err := s.pool.QueryRow(ctx, "SELECT time FROM flows WHERE id = $1", fq.Before).Scan(&t)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read flows: %w", classify(err))
		}
		f.Page(t, fq.Before)
	}
	// Planned with the values (an unnamed statement, QueryExecModeExec),
	// never a generic plan: the partial index on verdict (migration 4)
	// serves only a plan that knows the verdict asked for.
	query, args := f.Query(fq), f.Args
	rows, err := s.pool.Query(ctx, q(query), append([]any{pgx.QueryExecModeExec}, args...)...)
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

// partition is one row of flow_partitions.
type partition struct {
	name   string
	lo, hi int64
}

// partitions lists the flows table's partitions, oldest first.
func partitions(ctx context.Context, tx pgx.Tx) ([]partition, error) {
	return queryAll(ctx, tx, "flow partitions", func(row pgx.Row) (partition, error) {
		var p partition
		err := row.Scan(&p.name, &p.lo, &p.hi)
		return p, err
	}, "SELECT name, lo, hi FROM flow_partitions ORDER BY lo")
}

// dropPartition drops a partition and returns how many flows it held.
func dropPartition(ctx context.Context, tx pgx.Tx, p partition) (int64, error) {
	id := pgx.Identifier{p.name}.Sanitize()
	var n int64
	if err := tx.QueryRow(ctx, "SELECT COUNT(*) FROM "+id).Scan(&n); err != nil {
		return 0, fmt.Errorf("count %s: %w", p.name, err)
	}
	if _, err := tx.Exec(ctx, "DROP TABLE "+id); err != nil {
		return 0, fmt.Errorf("drop %s: %w", p.name, err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM flow_partitions WHERE name = $1", p.name); err != nil {
		return 0, err
	}
	return n, nil
}

// retentionTx runs f under lockEvents (partitions are made and dropped
// one process at a time) and forgets the dropped partitions it reports.
func (s *Postgres) retentionTx(ctx context.Context, f func(tx pgx.Tx) (dropped []int64, err error)) error {
	var dropped []int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockEvents); err != nil {
			return err
		}
		var err error
		dropped, err = f(tx)
		return err
	})
	if err == nil {
		s.partitionsDropped(dropped)
	}
	return err
}

// PruneFlows drops the partitions wholly before before (their flows
// count in the answer, beyond limit: a drop is one cheap statement
// whatever it holds), then deletes up to limit flows before before from
// the partition the bound falls in and from flows_default, oldest first.
// It also makes the partitions of now and the next one ahead, so that
// ingestion rarely pays for one.
func (s *Postgres) PruneFlows(ctx context.Context, before time.Time, limit int) (int64, error) {
	var n int64
	err := s.retentionTx(ctx, func(tx pgx.Tx) ([]int64, error) {
		ps, err := partitions(ctx, tx)
		if err != nil {
			return nil, err
		}
		var dropped []int64
		// last bounds the times of the flows deleted, for the rollup.
		last := int64(math.MinInt64)
		for _, p := range ps {
			if p.hi > before.UnixNano() {
				break
			}
			c, err := dropPartition(ctx, tx, p)
			if err != nil {
				return nil, err
			}
			n += c
			dropped = append(dropped, p.lo)
			last = max(last, p.hi-1)
		}
		var deleted int64
		var latest *int64
		if err := tx.QueryRow(ctx, `WITH d AS (DELETE FROM flows WHERE time < $1 AND id IN (
			SELECT id FROM flows WHERE time < $1 ORDER BY time LIMIT $2) RETURNING time)
			SELECT COUNT(*), MAX(time) FROM d`, before.UnixNano(), limit).Scan(&deleted, &latest); err != nil {
			return nil, err
		}
		n += deleted
		if latest != nil {
			last = max(last, *latest)
		}
		if n > 0 {
			if err := dropFlowEdges(ctx, tx, last); err != nil {
				return nil, err
			}
		}
		return dropped, addFlowCount(ctx, tx, -n)
	})
	if err != nil {
		return 0, fmt.Errorf("prune flows: %w", err)
	}
	if err := s.makeAhead(ctx); err != nil {
		return n, fmt.Errorf("prune flows: %w", err)
	}
	return n, nil
}

// makeAhead makes the partitions of now and of the next period.
func (s *Postgres) makeAhead(ctx context.Context) error {
	now := s.now()
	return s.EventTx(ctx, func(etx store.EventTx) error {
		t := etx.(*pgEventTx)
		for _, at := range []time.Time{now, now.Add(s.part)} {
			if _, err := t.ensurePartition(at.UnixNano()); err != nil {
				return err
			}
		}
		return nil
	})
}

// PruneOldestFlows deletes the n oldest flows: first those of
// flows_default older than every partition, then whole partitions, oldest
// first, while they hold no more than are left to delete, then the
// oldest rows of the next one.
func (s *Postgres) PruneOldestFlows(ctx context.Context, n int) (int64, error) {
	left := int64(n)
	err := s.retentionTx(ctx, func(tx pgx.Tx) ([]int64, error) {
		ps, err := partitions(ctx, tx)
		if err != nil {
			return nil, err
		}
		// last bounds the times of the flows deleted, for the rollup.
		last := int64(math.MinInt64)
		deleteOldest := func(table string, bound int64) error {
			var deleted int64
			var latest *int64
			err := tx.QueryRow(ctx, "WITH d AS (DELETE FROM "+table+" WHERE time < $1 AND id IN (SELECT id FROM "+table+
				" WHERE time < $1 ORDER BY time LIMIT $2) RETURNING time) SELECT COUNT(*), MAX(time) FROM d", bound, left).Scan(&deleted, &latest)
			left -= deleted
			if latest != nil {
				last = max(last, *latest)
			}
			return err
		}
		bound := int64(1<<63 - 1)
		if len(ps) > 0 {
			bound = ps[0].lo
		}
		if err := deleteOldest("flows_default", bound); err != nil {
			return nil, err
		}
		var dropped []int64
		for _, p := range ps {
			if left <= 0 {
				break
			}
			id := pgx.Identifier{p.name}.Sanitize()
			var c int64
			if err := tx.QueryRow(ctx, "SELECT COUNT(*) FROM "+id).Scan(&c); err != nil {
				return nil, err
			}
			switch {
			case c == 0:
				// An empty partition (one made ahead) stays.
			case c <= left:
				if _, err := dropPartition(ctx, tx, p); err != nil {
					return nil, err
				}
				left -= c
				dropped = append(dropped, p.lo)
				last = max(last, p.hi-1)
			default:
				if err := deleteOldest(id, p.hi); err != nil {
					return nil, err
				}
			}
		}
		if left > 0 {
			// Whatever is left of flows_default (rows newer than the
			// oldest partition, stored outside the window).
			if err := deleteOldest("flows_default", int64(1<<63-1)); err != nil {
				return nil, err
			}
		}
		if int64(n) > left {
			if err := dropFlowEdges(ctx, tx, last); err != nil {
				return nil, err
			}
		}
		return dropped, addFlowCount(ctx, tx, -(int64(n) - left))
	})
	if err != nil {
		return 0, fmt.Errorf("prune flows: %w", err)
	}
	return int64(n) - left, nil
}

func (s *Postgres) PruneSpoolPositions(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM flow_spools WHERE updated < $1", before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune spool positions: %w", classify(err))
	}
	return tag.RowsAffected(), nil
}

// EventStoreSize is the on-disk size (pg_total_relation_size: table,
// indexes, TOAST) of the flows' partitions, their rollup and the other
// event tables,
// and the number of flows (flow_count: migration 4).
func (s *Postgres) EventStoreSize(ctx context.Context) (int64, int64, error) {
	var size, flows int64
	err := s.pool.QueryRow(ctx, `SELECT
		COALESCE((SELECT SUM(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'flows'::regclass), 0)
		+ pg_total_relation_size('flow_edges') + pg_total_relation_size('alerts') + pg_total_relation_size('deliveries')
		+ pg_total_relation_size('flow_spools'),
		(SELECT n FROM flow_count)`).Scan(&size, &flows)
	if err != nil {
		return 0, 0, fmt.Errorf("event store size: %w", classify(err))
	}
	if flows <= 0 {
		// No flows, or a count gone wrong (flows deleted by hand): count
		// them, cheap when there are none. Size retention stops at a
		// count of 0, so a wrong 0 must not stand.
		if err := s.pool.QueryRow(ctx, "SELECT COUNT(*) FROM flows").Scan(&flows); err != nil {
			return 0, 0, fmt.Errorf("event store size: %w", classify(err))
		}
	}
	return size, flows, nil
}

func (s *Postgres) Alerts(ctx context.Context, aq store.AlertQuery) ([]store.Alert, error) {
	var where []string
	var args []any
	if aq.ID != 0 {
		where = append(where, "id = ?")
		args = append(args, aq.ID)
	}
	if len(aq.States) > 0 {
		where = append(where, "state = ANY(?)")
		args = append(args, aq.States)
	}
	if aq.Rule != "" {
		where = append(where, "rule = ?")
		args = append(args, aq.Rule)
	}
	if !aq.Since.IsZero() {
		where = append(where, "last_seen >= ?")
		args = append(args, aq.Since.UnixNano())
	}
	query := "SELECT " + rc.AlertColumns + " FROM alerts"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY last_seen DESC, id DESC"
	if aq.Limit > 0 {
		query += " LIMIT " + strconv.Itoa(aq.Limit)
	}
	return queryAll(ctx, s.pool, "alerts", scanAlertRow, q(query), args...)
}

func (s *Postgres) PruneAlerts(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockEvents); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM deliveries WHERE state <> $1 AND finished < $2", store.DeliveryPending, before.UnixNano())
		if err != nil {
			return err
		}
		d := tag.RowsAffected()
		// Deliveries of a deleted alert go with it (ON DELETE CASCADE):
		// only alerts with nothing pending are old enough to go.
		tag, err = tx.Exec(ctx, `DELETE FROM alerts WHERE state = $1 AND resolved_at < $2
			AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.id AND d.state = $3)`,
			store.AlertResolved, before.UnixNano(), store.DeliveryPending)
		if err != nil {
			return err
		}
		n = tag.RowsAffected() + d
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune alerts: %w", err)
	}
	return n, nil
}

const deliveryColumns = "id, alert_id, webhook, event, state, attempts, next_attempt, created, last_error, finished"

func scanDelivery(row pgx.Row) (store.Delivery, error) {
	var d store.Delivery
	var next, created, finished int64
	err := row.Scan(&d.ID, &d.AlertID, &d.Webhook, &d.Event, &d.State, &d.Attempts, &next, &created, &d.LastError, &finished)
	d.NextAttempt, d.Created, d.Finished = rc.FromNanos(next), rc.FromNanos(created), rc.FromNanos(finished)
	return d, err
}

// notBehindOlder keeps, of pending deliveries d, those with no older
// pending delivery of their alert to their webhook ($1 is
// DeliveryPending): deliveries of one alert to one webhook go in order.
const notBehindOlder = `NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.alert_id = d.alert_id AND o.webhook = d.webhook AND o.state = $1 AND o.id < d.id)`

func (s *Postgres) DueDeliveries(ctx context.Context, now time.Time, perWebhook, limit int) ([]store.Delivery, error) {
	return queryAll(ctx, s.pool, "outbox", scanDelivery, `SELECT `+deliveryColumns+` FROM (
		SELECT d.*, ROW_NUMBER() OVER (PARTITION BY d.webhook ORDER BY d.next_attempt, d.id) AS nth FROM deliveries d
		WHERE d.state = $1 AND d.next_attempt <= $2
		AND `+notBehindOlder+`) due
		WHERE nth <= $3 ORDER BY next_attempt, id LIMIT $4`, store.DeliveryPending, now.UnixNano(), perWebhook, limit)
}

func (s *Postgres) NextDeliveryAt(ctx context.Context) (time.Time, int, error) {
	var next *int64
	var n int
	// The minimum is over the deliveries DueDeliveries could return (see
	// the SQLite store).
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT MIN(d.next_attempt) FROM deliveries d WHERE d.state = $1 AND `+notBehindOlder+`),
		(SELECT COUNT(*) FROM deliveries WHERE state = $1)`, store.DeliveryPending).Scan(&next, &n)
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("read outbox: %w", classify(err))
	}
	if next == nil {
		return time.Time{}, n, nil
	}
	return rc.FromNanos(*next), n, nil
}

func (s *Postgres) WebhookStats(ctx context.Context) ([]store.WebhookStats, error) {
	return queryAll(ctx, s.pool, "outbox", func(row pgx.Row) (store.WebhookStats, error) {
		var w store.WebhookStats
		var last *int64
		err := row.Scan(&w.Webhook, &last, &w.LastError, &w.Pending, &w.GaveUp)
		if last != nil {
			w.LastDelivered = rc.FromNanos(*last)
		}
		return w, err
	}, `SELECT w.webhook,
		(SELECT MAX(finished) FROM deliveries WHERE webhook = w.webhook AND state = $1),
		COALESCE((SELECT last_error FROM deliveries WHERE webhook = w.webhook AND last_error <> '' AND state <> $1
			ORDER BY id DESC LIMIT 1), ''),
		(SELECT COUNT(*) FROM deliveries WHERE webhook = w.webhook AND state = $2),
		(SELECT COUNT(*) FROM deliveries WHERE webhook = w.webhook AND state = $3)
		FROM (SELECT DISTINCT webhook FROM deliveries) w ORDER BY w.webhook`,
		store.DeliveryDelivered, store.DeliveryPending, store.DeliveryGaveUp)
}

func (s *Postgres) UpdateDelivery(ctx context.Context, d store.Delivery) error {
	_, err := s.pool.Exec(ctx, "UPDATE deliveries SET state = $1, attempts = $2, next_attempt = $3, last_error = $4, finished = $5 WHERE id = $6",
		d.State, d.Attempts, rc.Nanos(d.NextAttempt), d.LastError, rc.Nanos(d.Finished), d.ID)
	if err != nil {
		return fmt.Errorf("update delivery %d: %w", d.ID, classify(err))
	}
	return nil
}

func (s *Postgres) Delivery(ctx context.Context, id int64) (store.Delivery, error) {
	d, err := scanDelivery(s.pool.QueryRow(ctx, "SELECT "+deliveryColumns+" FROM deliveries WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("delivery %d: %w", id, store.ErrNotFound)
	}
	return d, err
}

// rangeArgs are the bounds of a time range as SQL arguments; a zero
// until is no bound.
func rangeArgs(since, until time.Time) (int64, int64) {
	u := int64(1<<63 - 1)
	if !until.IsZero() {
		u = until.UnixNano()
	}
	return since.UnixNano(), u
}

// FlowEdges groups the range's flows by the ends, protocol, port and
// verdict: whole buckets from the rollup flow_edges (migration 5), the
// rest from the flows (edges.go).
func (s *Postgres) FlowEdges(ctx context.Context, since, until time.Time, limit int) ([]store.FlowEdge, error) {
	return s.flowEdges(ctx, since, until, "", limit)
}

// FlowEdgesOf is FlowEdges of one workload's flows.
func (s *Postgres) FlowEdgesOf(ctx context.Context, since, until time.Time, workload string, limit int) ([]store.FlowEdge, error) {
	return s.flowEdges(ctx, since, until, workload, limit)
}

// RuleCounts counts new flows (first records: one per connection
// attempt) by rule and verdict.
func (s *Postgres) RuleCounts(ctx context.Context, since, until time.Time) ([]store.RuleCount, error) {
	lo, hi := rangeArgs(since, until)
	return queryAll(ctx, s.pool, "flows by rule", func(row pgx.Row) (store.RuleCount, error) {
		var c store.RuleCount
		var verdict, n int64
		err := row.Scan(&c.Rule, &verdict, &n)
		c.Verdict, c.Flows = ruleset.Verdict(verdict), uint64(n)
		return c, err
	}, `SELECT rule, verdict::BIGINT, COUNT(*) FROM flows
WHERE time >= $1 AND time < $2 AND state = 'new' GROUP BY rule, verdict ORDER BY rule, verdict`, lo, hi)
}

var _ store.EventStore = (*Postgres)(nil)
