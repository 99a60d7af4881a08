package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Flow ingestion defaults.
const (
	DefaultFlowRetention  = 7 * 24 * time.Hour
	DefaultFlowMaxBytes   = 4 << 30
	DefaultAlertRetention = 30 * 24 * time.Hour
	// DefaultAgentFlowRate is the records per second one agent may send
	// on average (a burst of ten seconds' worth is allowed); beyond it its
	// batches are answered "retry later" and wait in its spool.
	DefaultAgentFlowRate = 20000
	// ingestQueue bounds the batches waiting for the store writer; a full
	// queue answers "retry later" rather than holding a stream.
	ingestQueue = 256
	// maxGroup bounds the batches one store transaction takes: group
	// commit amortises the fsync over many agents' batches.
	maxGroup = 64
	// maxFlowsInFlight bounds one agent's batches between arrival and
	// ack, so the session's ack channel never blocks the writer.
	maxFlowsInFlight = 16
	// housekeeping is how often alerts are swept (window expiry,
	// Alertmanager re-posts) and retention applied.
	housekeeping = 2 * time.Second
	// pruneChunk bounds the rows one housekeeping pass deletes, so that
	// retention never stalls ingestion for long.
	pruneChunk = 50000
)

// ingestItem is one validated flow batch on its way to the store.
type ingestItem struct {
	node    string
	spoolID uint64
	seq     uint64
	lost    uint64
	recs    []flowrecord.Record
	// reply sends the FlowAck on the agent's stream; it never blocks.
	reply func(*pb.FlowAck)
}

// ingester is the single writer of the event store: flow batches, the
// alerts they raise, alert sweeps and retention all go through its one
// goroutine, so SQLite never sees two writers and batches from many
// agents share a transaction.
type ingester struct {
	s      *Server
	log    *zap.Logger
	engine *alert.Engine
	queue  chan *ingestItem
	// kick tells the webhook deliverer that deliveries were queued.
	kick func()
	// lastSize is when the store's size was last measured.
	lastSize time.Time
}

func newIngester(s *Server) *ingester {
	return &ingester{
		s:      s,
		log:    s.log.Named("flows"),
		engine: alert.NewEngine(nil, s.cfg.AlertRefresh),
		queue:  make(chan *ingestItem, ingestQueue),
		kick:   func() {},
	}
}

// setPolicy gives the alert engine the policy in force.
func (in *ingester) setPolicy(set *policy.Set) {
	in.engine.SetPolicy(alert.NewPolicy(set, in.s.cfg.BuiltinAlerts))
}

// offer queues a batch; false when the queue is full.
func (in *ingester) offer(it *ingestItem) bool {
	select {
	case in.queue <- it:
		in.s.m.ingestQueue.Set(float64(len(in.queue)))
		return true
	default:
		return false
	}
}

// run is the writer loop.
func (in *ingester) run(ctx context.Context) {
	tick := time.NewTicker(housekeeping)
	defer tick.Stop()
	group := make([]*ingestItem, 0, maxGroup)
	for {
		select {
		case <-ctx.Done():
			// Batches still queued are not acked: their agents send them
			// again to the next controller.
			return
		case <-tick.C:
			in.housekeep(ctx)
		case it := <-in.queue:
			group = append(group[:0], it)
		more:
			for len(group) < maxGroup {
				select {
				case it := <-in.queue:
					group = append(group, it)
				default:
					break more
				}
			}
			in.s.m.ingestQueue.Set(float64(len(in.queue)))
			in.store(ctx, group)
		}
	}
}

// store writes a group of batches in one transaction and acks each.
func (in *ingester) store(ctx context.Context, group []*ingestItem) {
	now := in.s.now()
	var pend alert.Pending
	results := make([]string, len(group))
	stored := 0
	err := in.s.store.EventTx(ctx, func(tx store.EventTx) error {
		pend = alert.Pending{}
		stored = 0
		positions := make(map[[2]any]*store.SpoolPosition)
		for i, it := range group {
			k := [2]any{it.node, it.spoolID}
			pos := positions[k]
			if pos == nil {
				p, err := tx.SpoolPosition(it.node, it.spoolID)
				if err != nil {
					return err
				}
				pos = &p
				positions[k] = pos
			}
			if pos.Stored(it.seq) {
				// Sent again after a lost ack: stored already, ack it.
				results[i] = "duplicate"
				continue
			}
			if err := tx.InsertFlows(it.recs); err != nil {
				return err
			}
			if err := in.engine.Observe(tx, it.recs, now, &pend); err != nil {
				return fmt.Errorf("alert engine: %w", err)
			}
			if n := pos.Add(it.seq); n > 0 {
				in.log.Warn("agent spool has many gaps; the oldest are forgotten", zap.String("node", it.node), zap.Int("forgotten", n))
			}
			pos.Updated = now
			results[i] = "stored"
			stored += len(it.recs)
		}
		for _, pos := range positions {
			if err := tx.SaveSpoolPosition(*pos); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		reason := storeErrorReason(err)
		in.s.m.storeErrors.WithLabelValues(reason).Inc()
		in.log.Error("flow batches not stored; agents keep them and retry", zap.Int("batches", len(group)), zap.String("reason", reason), zap.Error(err))
		for _, it := range group {
			in.s.m.flowBatches.WithLabelValues("store_" + reason).Inc()
			it.reply(&pb.FlowAck{Seq: it.seq, Error: "controller could not store the batch: " + err.Error(), Retry: true})
		}
		return
	}
	in.engine.Commit(&pend)
	in.s.m.flowsIngested.Add(float64(stored))
	for rule, n := range pend.Raised {
		in.s.m.alertsRaised.WithLabelValues(rule).Add(float64(n))
	}
	if pend.Deliveries > 0 {
		in.kick()
	}
	for i, it := range group {
		in.s.m.flowBatches.WithLabelValues(results[i]).Inc()
		if results[i] == "stored" && it.lost > 0 {
			in.s.m.flowsLost.Add(float64(it.lost))
			in.log.Warn("agent reports flow records it had to drop", zap.String("node", it.node), zap.Uint64("lost", it.lost))
		}
		it.reply(&pb.FlowAck{Seq: it.seq})
	}
}

func storeErrorReason(err error) string {
	switch {
	case errors.Is(err, store.ErrFull):
		return "full"
	case errors.Is(err, store.ErrIO):
		return "io"
	}
	return "other"
}

// housekeep sweeps alerts and applies retention. Errors are logged and
// counted; the next pass tries again.
func (in *ingester) housekeep(ctx context.Context) {
	now := in.s.now()
	var pend alert.Pending
	err := in.s.store.EventTx(ctx, func(tx store.EventTx) error {
		pend = alert.Pending{}
		return in.engine.Sweep(tx, now, &pend)
	})
	if err != nil {
		in.s.m.storeErrors.WithLabelValues(storeErrorReason(err)).Inc()
		in.log.Error("alert sweep failed", zap.Error(err))
	} else {
		in.engine.Commit(&pend)
		if pend.Deliveries > 0 {
			in.kick()
		}
	}
	in.retain(ctx, now)
}

// retain deletes flows older than the retention, then the oldest flows
// while the store is over its size budget, a chunk per pass.
func (in *ingester) retain(ctx context.Context, now time.Time) {
	cfg := &in.s.cfg
	if n, err := in.s.store.PruneFlows(ctx, now.Add(-cfg.FlowRetention), pruneChunk); err != nil {
		in.log.Error("flow retention failed", zap.Error(err))
	} else if n > 0 {
		in.s.m.flowsPruned.WithLabelValues("age").Add(float64(n))
	}
	if now.Sub(in.lastSize) >= 10*housekeeping {
		in.lastSize = now
		if _, err := in.s.store.PruneAlerts(ctx, now.Add(-cfg.AlertRetention)); err != nil {
			in.log.Error("alert retention failed", zap.Error(err))
		}
	}
	size, flows, err := in.s.store.EventStoreSize(ctx)
	if err != nil {
		in.log.Error("flow store size unknown", zap.Error(err))
		return
	}
	in.s.m.storeBytes.Set(float64(size))
	in.s.m.storeFlows.Set(float64(flows))
	if size <= cfg.FlowMaxBytes || flows == 0 {
		return
	}
	// Delete the share of flows that is over budget, plus a tenth, so the
	// store does not sit at the limit.
	over := float64(size-cfg.FlowMaxBytes)/float64(size) + 0.1
	n := min(int(over*float64(flows))+1, pruneChunk)
	deleted, err := in.s.store.PruneOldestFlows(ctx, n)
	if err != nil {
		in.log.Error("flow size retention failed", zap.Error(err))
		return
	}
	in.s.m.flowsPruned.WithLabelValues("size").Add(float64(deleted))
	in.log.Info("flow store over its size budget: oldest flows deleted",
		zap.Int64("bytes", size), zap.Int64("budget", cfg.FlowMaxBytes), zap.Int64("deleted", deleted))
}

// tokenBucket limits one agent's flow records per second.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func newTokenBucket(rate float64, now time.Time) tokenBucket {
	burst := rate * 10
	return tokenBucket{rate: rate, burst: burst, tokens: burst, last: now}
}

// take spends n tokens if it can. A batch larger than the burst passes
// when the bucket is full, so no batch is refused forever.
func (b *tokenBucket) take(n int, now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if float64(n) > b.tokens && b.tokens < b.burst {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// onFlows validates a flow batch and hands it to the writer. It runs on
// the session's goroutine: everything it refuses is answered at once.
func (ss *session) onFlows(b *pb.FlowBatch) error {
	s := ss.s
	refuse := func(result, msg string, retry bool) error {
		s.m.flowBatches.WithLabelValues(result).Inc()
		return ss.stream.Send(&pb.ControllerMessage{Msg: &pb.ControllerMessage_FlowAck{FlowAck: &pb.FlowAck{
			Seq: b.GetSeq(), Error: msg, Retry: retry,
		}}})
	}
	if ss.flowsInFlight.Load() >= maxFlowsInFlight {
		return refuse("busy", fmt.Sprintf("%d batches of this agent are being stored; send this one later", maxFlowsInFlight), true)
	}
	now := s.now()
	if !ss.flowBucket.take(len(b.GetRecords()), now) {
		if now.Sub(ss.lastRateLog) > time.Minute {
			ss.lastRateLog = now
			ss.log.Warn("agent sends flow records faster than its rate limit; its batches wait in its spool",
				zap.Float64("records-per-second", s.cfg.AgentFlowRate))
		}
		return refuse("rate_limited", fmt.Sprintf("rate limited: this agent may send %.0f flow records/s", s.cfg.AgentFlowRate), true)
	}
	pol := s.events.engine.Policy()
	recs, err := wire.ToRecords(b, ss.node, ss.ruleNamer(), pol.Workload)
	if err != nil {
		// A broken batch is refused whole, never stored in part. It will
		// not get better by retrying: the agent counts it as lost.
		ss.log.Error("malformed flow batch refused", zap.Uint64("seq", b.GetSeq()), zap.Int("records", len(b.GetRecords())), zap.Error(err))
		return refuse("malformed", "malformed flow batch: "+err.Error(), false)
	}
	it := &ingestItem{
		node: ss.node, spoolID: b.GetSpoolId(), seq: b.GetSeq(), lost: b.GetLost(), recs: recs,
		reply: ss.flowAck,
	}
	ss.flowsInFlight.Add(1)
	if !s.events.offer(it) {
		ss.flowsInFlight.Add(-1)
		return refuse("busy", "the controller's flow queue is full; send this batch later", true)
	}
	return nil
}

// flowAck hands an ack to the session goroutine. The channel holds
// maxFlowsInFlight acks, as many as batches can be in flight (a batch
// leaves flight when its ack is taken from the channel), so this never
// blocks; a session that ended drops it (its agent resends the
// batch, which is then recognised as stored).
func (ss *session) flowAck(a *pb.FlowAck) {
	select {
	case ss.flowAcks <- a:
	case <-ss.done:
	default:
		ss.log.Error("flow ack dropped: ack channel full (bug)")
	}
}

// ruleNamer names rule ids from the rule set the agent enforces (the
// flows were decided by it), or the newest one when that is not known.
func (ss *session) ruleNamer() func(ruleset.RuleID) string {
	v := ss.base
	if v == nil {
		v = ss.s.latestOf(ss.node)
	}
	if v == nil {
		return func(id ruleset.RuleID) string {
			if id == ruleset.RuleDefaultDeny {
				return ruleset.DefaultDenyName
			}
			return fmt.Sprintf("rule-%d", id)
		}
	}
	if ss.names == nil || ss.namesOf != v {
		ss.names = make(map[ruleset.RuleID]string, len(v.rs.Rules))
		for _, r := range v.rs.Rules {
			ss.names[r.ID] = r.Name
		}
		ss.namesOf = v
	}
	names, rs := ss.names, v.rs
	return func(id ruleset.RuleID) string {
		if n, ok := names[id]; ok {
			return n
		}
		return rs.RuleName(id)
	}
}
