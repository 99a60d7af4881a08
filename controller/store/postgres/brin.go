package postgres

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
)

// outsideWindow stands, among the partition starts flowsStored notes,
// for every start outside the window (inWindow), whose records
// flows_default holds: it overlaps no partition.
const outsideWindow = math.MinInt64

// flowsStored notes the partitions (by start, in the current partition
// size) a committed transaction stored flows into.
func (s *Postgres) flowsStored(los map[int64]struct{}) {
	if len(los) == 0 {
		return
	}
	s.partMu.Lock()
	defer s.partMu.Unlock()
	if s.unsummarized == nil {
		s.unsummarized = map[int64]struct{}{}
	}
	for lo := range los {
		s.unsummarized[lo] = struct{}{}
	}
}

// summarizeFlowsSQL summarizes the page ranges not yet summarized of every
// BRIN index of the flows' partitions that overlap one of the ranges
// [lo, lo + $2) of the starts $1 (partitions of another size, made before
// the size was changed, included), and of flows_default (records outside
// every partition). The last range of a table, partly filled, is
// summarized too: its next rows then update its summary as they are
// stored (a few hundred rows, until the range is full).
const summarizeFlowsSQL = `SELECT COALESCE(SUM(brin_summarize_new_values(x.indexrelid)), 0)::BIGINT
FROM pg_inherits h
JOIN pg_class t ON t.oid = h.inhrelid
JOIN pg_index x ON x.indrelid = t.oid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am a ON a.oid = i.relam AND a.amname = 'brin'
LEFT JOIN flow_partitions p ON p.name = t.relname
WHERE h.inhparent = 'flows'::regclass AND (p.name IS NULL OR EXISTS (SELECT 1 FROM unnest($1::BIGINT[]) u(lo) WHERE p.lo < u.lo + $2 AND p.hi > u.lo))`

// SummarizeFlowIndexes (store.FlowIndexer) summarizes the page ranges
// the flows stored since its last call added to the flows' BRIN indexes
// (migration 7), so that filtered queries read only the ranges whose
// summaries may match instead of every new range. It reports how many
// ranges it summarized. On an error, the same flows are summarized at the
// next call. It waits at most lockWait for a lock (autovacuum's vacuum of
// a partition holds the one it needs), and then fails.
func (s *Postgres) SummarizeFlowIndexes(ctx context.Context) (int64, error) {
	s.partMu.Lock()
	touched := s.unsummarized
	s.unsummarized = nil
	s.partMu.Unlock()
	if len(touched) == 0 {
		return 0, nil
	}
	los := make([]int64, 0, len(touched))
	for lo := range touched {
		los = append(los, lo)
	}
	var n int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = "+lockWait); err != nil {
			return err
		}
		return tx.QueryRow(ctx, summarizeFlowsSQL, los, s.part.Nanoseconds()).Scan(&n)
	})
	if err != nil {
		s.flowsStored(touched)
		return 0, fmt.Errorf("summarize flow indexes: %w", err)
	}
	return n, nil
}

// lockWait bounds SummarizeFlowIndexes' wait for a lock (a quoted SQL
// interval).
const lockWait = "'5s'"

var _ store.FlowIndexer = (*Postgres)(nil)
