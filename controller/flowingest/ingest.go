package flowingest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Defaults.
const (
	DefaultFlowRetention  = 7 * 24 * time.Hour
	DefaultFlowMaxBytes   = 4 << 30
	DefaultAlertRetention = 30 * 24 * time.Hour
	// DefaultAgentFlowRate is the records per second one agent may send
	// on average (a burst of ten seconds' worth is allowed); beyond it its
	// batches are answered "retry later" and wait in its spool.
	DefaultAgentFlowRate = 20000
	// queueLen bounds the batches waiting for a store writer; a full
	// queue answers "retry later" rather than holding a stream.
	queueLen = 256
	// maxGroup bounds the batches one store transaction takes: group
	// commit amortises the fsync over many agents' batches.
	maxGroup = 64
	// concurrentWriters is how many writers store flow batches into a
	// store that takes them side by side (store.ConcurrentFlowWriter):
	// two keep both cores of a small controller busy, one formatting and
	// waiting for a COPY while the other's runs on the server.
	concurrentWriters = 2
	// MaxInFlight bounds one agent's batches between arrival and ack, so
	// a session's ack channel of this size never blocks the writer.
	MaxInFlight = 16
	// housekeeping is how often alerts are swept (window expiry,
	// Alertmanager re-posts) and retention applied.
	housekeeping = 2 * time.Second
	// pruneChunk bounds the rows one housekeeping pass deletes, so that
	// retention never stalls ingestion for long.
	pruneChunk = 50000
	// rollupGrace: the service map's rollup (store.FlowEdgeRoller) sums
	// the flows recorded more than this before now, so that the flows
	// of a live stream, stamped seconds ago, are rarely older than where
	// it reached: a flow that is costs its insert an upsert of the
	// rollup's rows. rollupChunk bounds the flows one rollup step sums
	// (one transaction, holding up the ingest), rollupPass the time a
	// housekeeping pass spends in steps: at 100,000 flows/s a pass has
	// 200,000 to sum.
	rollupGrace = time.Minute
	rollupChunk = 50000
	rollupPass  = time.Second
	// maxSpools bounds the spool positions kept per node: an agent has one
	// spool (a new id only when its state directory is lost), so the cap
	// only ever bites an agent that makes up spool ids to grow the store.
	// The least recently used are forgotten (a batch of a forgotten spool
	// sent again would be stored twice).
	maxSpools = 16
)

// Settings are the flow and alert handling an operator chooses (the
// controller's flags). Zero values take the defaults.
type Settings struct {
	// FlowRetention and FlowMaxBytes bound the stored flows by age and
	// size; AlertRetention the resolved alerts and finished deliveries.
	FlowRetention  time.Duration
	FlowMaxBytes   int64
	AlertRetention time.Duration
	// AgentFlowRate is each agent's flow records per second (negative:
	// unlimited).
	AgentFlowRate float64
	// AlertRefresh is how often open alerts are re-posted to
	// Alertmanager webhooks.
	AlertRefresh time.Duration
	// BuiltinAlerts configures the built-in "any denied flow" rule.
	BuiltinAlerts alert.Builtin
	// AlertLimits bound alert storms (live alerts per rule, resolved
	// alerts and finished deliveries kept).
	AlertLimits alert.Limits
}

// Config configures an Ingester. Zero values take the defaults.
type Config struct {
	Store    store.Store
	Log      *zap.Logger
	Now      func() time.Time
	Registry prometheus.Registerer
	// Writers is how many goroutines store flow batches into a
	// store.ConcurrentFlowWriter (0: concurrentWriters); any other store
	// gets one.
	Writers int
	Settings
}

// batch is one validated flow batch on its way to the store.
type batch struct {
	agent   *Agent
	spoolID uint64
	seq     uint64
	lost    uint64
	recs    []flowrecord.Record
	// notLocal counts the records dropped from the batch for having no
	// end on the agent's node; counted once the batch is stored.
	notLocal int
	reply    func(*pb.FlowAck)
}

// Ingester is the writer of the event store: flow batches, the alerts
// they raise, alert sweeps and retention all go through it, and batches
// from many agents share a transaction. With SQLite it is one goroutine
// (Run), so SQLite never sees two writers. With a store that takes
// concurrent flow writers (store.ConcurrentFlowWriter) Run starts more
// writers for flow batches, each with its own queue; a node's batches
// always go to the same one, so its spool positions have one writer.
type Ingester struct {
	cfg    Config
	st     store.Store
	log    *zap.Logger
	now    func() time.Time
	m      *metrics
	engine *alert.Engine
	// owners names flow ends and says which node each managed address is
	// on; replaced whole with each policy.
	owners atomic.Pointer[owners]
	// queues hold the batches for each writer (queues[0]: Run's own).
	queues []chan *batch
	// engineMu gives one transaction at a time the alert engine, from
	// its first Observe, ObserveNode or Sweep to its Commit (or the
	// transaction's failure), so that the engine's memory follows the
	// store's commits. It is taken inside the transaction, after the
	// store's own lock (lock order: the store's events lock, engineMu,
	// FlowTx.Serialize), never around one: see engineTurn.
	engineMu sync.Mutex
	// nodeEvents are node alerts (RaiseNodeAlert) for the writer.
	nodeEvents chan alert.NodeEvent
	// kick tells the webhook deliverer that deliveries were queued; set
	// before Run.
	kick func()
	// stored is given each committed group's new records (live flows);
	// set before Run.
	stored func([]flowrecord.Record)
	// lastSize is when the store's size was last measured.
	lastSize time.Time
	// forgotLog is when a writer last logged, per node, that spool
	// positions were forgotten (a node cycling spool ids would otherwise
	// log at every transaction); under forgotMu.
	forgotMu  sync.Mutex
	forgotLog map[string]time.Time
}

// New returns an ingester; Run serves it.
func New(cfg Config) *Ingester {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FlowRetention <= 0 {
		cfg.FlowRetention = DefaultFlowRetention
	}
	if cfg.FlowMaxBytes <= 0 {
		cfg.FlowMaxBytes = DefaultFlowMaxBytes
	}
	if cfg.AlertRetention <= 0 {
		cfg.AlertRetention = DefaultAlertRetention
	}
	if cfg.AgentFlowRate == 0 {
		cfg.AgentFlowRate = DefaultAgentFlowRate
	}
	if cfg.AlertRefresh <= 0 {
		cfg.AlertRefresh = alert.DefaultRefreshInterval
	}
	if _, ok := cfg.Store.(store.ConcurrentFlowWriter); !ok {
		cfg.Writers = 1
	} else if cfg.Writers <= 0 {
		cfg.Writers = concurrentWriters
	}
	queues := make([]chan *batch, cfg.Writers)
	for i := range queues {
		queues[i] = make(chan *batch, queueLen)
	}
	in := &Ingester{
		cfg:    cfg,
		st:     cfg.Store,
		log:    cfg.Log,
		now:    cfg.Now,
		m:      newMetrics(cfg.Registry),
		engine: alert.NewEngine(nil, cfg.AlertRefresh, cfg.AlertLimits),
		queues: queues,

		nodeEvents: make(chan alert.NodeEvent, queueLen),
		kick:       func() {},
		stored:     func([]flowrecord.Record) {},

		forgotLog: make(map[string]time.Time),
	}
	in.owners.Store(&owners{})
	return in
}

// OnDeliveries sets what is called when alerts queued webhook deliveries.
// Call it before Run.
func (in *Ingester) OnDeliveries(kick func()) { in.kick = kick }

// OnStored sets what is given the records of every stored batch, after
// the commit, on a writer's goroutine (two writers may call it at once:
// it must be safe for concurrent use): it must not block nor keep or
// change the records (the live flows' broker copies what it queues).
// Set before Run.
func (in *Ingester) OnStored(f func([]flowrecord.Record)) { in.stored = f }

// SetPolicy gives the alert engine, and the checks of where flows were
// seen, the policy in force.
func (in *Ingester) SetPolicy(set *policy.Set) {
	o := newOwners(set)
	in.owners.Store(&o)
	in.engine.SetPolicy(alert.NewPolicy(set, in.cfg.BuiltinAlerts))
}

// Policy returns the alert policy in force (alert rules, webhooks, the
// workloads that name flow ends).
func (in *Ingester) Policy() *alert.Policy { return in.engine.Policy() }

// offer queues a batch for its node's writer; false when that writer's
// queue is full.
func (in *Ingester) offer(b *batch) bool {
	select {
	case in.queueOf(b.agent.node) <- b:
		in.setQueueGauge()
		return true
	default:
		return false
	}
}

// queueOf is the queue of a node's writer: always the same, so that one
// writer stores a node's batches, in the order they came.
func (in *Ingester) queueOf(node string) chan *batch {
	if len(in.queues) == 1 {
		return in.queues[0]
	}
	h := fnv.New32a()
	h.Write([]byte(node))
	return in.queues[h.Sum32()%uint32(len(in.queues))]
}

func (in *Ingester) setQueueGauge() {
	n := 0
	for _, q := range in.queues {
		n += len(q)
	}
	in.m.ingestQueue.Set(float64(n))
}

// Run is the writer loop; it returns when ctx is done (and the other
// writers it started have returned). Batches still queued then are not
// acked: their agents send them again to the next controller.
func (in *Ingester) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, q := range in.queues[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.write(ctx, q, nil)
		}()
	}
	tick := time.NewTicker(housekeeping)
	defer tick.Stop()
	in.write(ctx, in.queues[0], tick.C)
}

// write is a writer's loop: it stores the batches of queue, a group per
// transaction, until ctx is done. Run's own also does the housekeeping
// (at each tick) and stores node events.
func (in *Ingester) write(ctx context.Context, queue chan *batch, tick <-chan time.Time) {
	var nodeEvents chan alert.NodeEvent
	if tick != nil {
		nodeEvents = in.nodeEvents
	}
	group := make([]*batch, 0, maxGroup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			in.housekeep(ctx)
		case ev := <-nodeEvents:
			evs := []alert.NodeEvent{ev}
		node:
			for len(evs) < maxGroup {
				select {
				case ev := <-in.nodeEvents:
					evs = append(evs, ev)
				default:
					break node
				}
			}
			in.storeNodeEvents(ctx, evs)
		case b := <-queue:
			group = append(group[:0], b)
		more:
			for len(group) < maxGroup {
				select {
				case b := <-queue:
					group = append(group, b)
				default:
					break more
				}
			}
			in.setQueueGauge()
			in.store(ctx, group)
		}
	}
}

// RaiseNodeAlert queues a node alert (a tampered datapath, a silent
// agent) for the writer; it never blocks. False when the queue is full:
// the event is dropped and logged, and the next report of the same kind
// raises the alert.
func (in *Ingester) RaiseNodeAlert(ev alert.NodeEvent) bool {
	select {
	case in.nodeEvents <- ev:
		return true
	default:
		in.log.Error("node alert dropped: the alert queue is full", zap.String("node", ev.Node),
			zap.String("rule", ev.Rule), zap.String("kind", ev.Kind))
		return false
	}
}

// engineTurn is one transaction's hold of Ingester.engineMu: take it
// inside the transaction, after the store's lock and before the engine
// first sees the transaction (a writer holding the store's lock may be
// waiting for engineMu: taking engineMu first, then waiting for the
// store's lock, could deadlock); done releases it, after the engine's
// Commit or the transaction's failure. take may be called again (a
// transaction run again by the store).
type engineTurn struct {
	mu   *sync.Mutex
	held bool
}

func (in *Ingester) engineTurn() *engineTurn { return &engineTurn{mu: &in.engineMu} }

func (t *engineTurn) take() {
	if !t.held {
		t.mu.Lock()
		t.held = true
	}
}

func (t *engineTurn) done() {
	if t.held {
		t.held = false
		t.mu.Unlock()
	}
}

// storeNodeEvents records node events in one transaction. On a store
// error they are logged and lost; their agents report again.
func (in *Ingester) storeNodeEvents(ctx context.Context, evs []alert.NodeEvent) {
	now := in.now()
	var pend alert.Pending
	turn := in.engineTurn()
	defer turn.done()
	err := in.st.EventTx(ctx, func(tx store.EventTx) error {
		pend = alert.Pending{}
		turn.take()
		for _, ev := range evs {
			if err := in.engine.ObserveNode(tx, ev, now, &pend); err != nil {
				return fmt.Errorf("alert engine: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		reason := storeErrorReason(err)
		in.m.storeErrors.WithLabelValues(reason).Inc()
		in.log.Error("node alerts not stored", zap.Int("events", len(evs)), zap.String("reason", reason), zap.Error(err))
		return
	}
	in.engine.Commit(&pend)
	for rule, n := range pend.Raised {
		in.m.alertsRaised.WithLabelValues(rule).Add(float64(n))
	}
	if pend.Deliveries > 0 {
		in.kick()
	}
}

// store writes a group of batches in one transaction and acks each. The
// flows go in first, alongside other writers' transactions (a store that
// takes concurrent flow writers); then, in the transaction's serial turn
// (FlowTx.Serialize) and the engine's (engineMu), the alert engine sees
// them.
func (in *Ingester) store(ctx context.Context, group []*batch) {
	now := in.now()
	var pend alert.Pending
	results := make([]string, len(group))
	stored := 0
	var forgot []forgotten
	nodes := make([]string, len(group)) // may repeat: FlowTx takes each once
	for i, b := range group {
		nodes[i] = b.agent.node
	}
	turn := in.engineTurn()
	defer turn.done()
	err := store.RunFlowTx(ctx, in.st, nodes, func(tx store.FlowTx) error {
		pend = alert.Pending{}
		stored = 0
		positions := make(map[[2]any]*store.SpoolPosition)
		// newSpools are the nodes with a spool position created here: they
		// may now be over maxSpools.
		newSpools := make(map[string]bool)
		for i, b := range group {
			k := [2]any{b.agent.node, b.spoolID}
			pos := positions[k]
			if pos == nil {
				p, err := tx.SpoolPosition(b.agent.node, b.spoolID)
				if err != nil {
					return err
				}
				if p.Updated.IsZero() {
					newSpools[b.agent.node] = true
				}
				pos = &p
				positions[k] = pos
			}
			if pos.Stored(b.seq) {
				// Sent again after a lost ack: stored already, ack it.
				results[i] = "duplicate"
				continue
			}
			if err := tx.InsertFlows(b.recs); err != nil {
				return err
			}
			if n := pos.Add(b.seq); n > 0 {
				in.log.Warn("agent spool has many gaps; the oldest are forgotten", zap.String("node", b.agent.node), zap.Int("forgotten", n))
			}
			pos.Updated = now
			results[i] = "stored"
			stored += len(b.recs)
		}
		for _, pos := range positions {
			if err := tx.SaveSpoolPosition(*pos); err != nil {
				return err
			}
		}
		forgot = forgot[:0]
		for node := range newSpools {
			ids, err := tx.ForgetSpools(node, maxSpools)
			if err != nil {
				return err
			}
			if len(ids) > 0 {
				forgot = append(forgot, forgotten{node, ids})
			}
		}
		turn.take()
		if err := tx.Serialize(); err != nil {
			return err
		}
		for i, b := range group {
			if results[i] != "stored" {
				continue
			}
			if err := in.engine.Observe(tx, b.recs, now, &pend); err != nil {
				return fmt.Errorf("alert engine: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		reason := storeErrorReason(err)
		in.m.storeErrors.WithLabelValues(reason).Inc()
		in.log.Error("flow batches not stored; agents keep them and retry", zap.Int("batches", len(group)), zap.String("reason", reason), zap.Error(err))
		for _, b := range group {
			in.m.flowBatches.WithLabelValues("store_" + reason).Inc()
			b.reply(&pb.FlowAck{Seq: b.seq, Error: "controller could not store the batch: " + err.Error(), Retry: true})
		}
		return
	}
	in.engine.Commit(&pend)
	turn.done()
	in.logForgotten(forgot, now)
	in.m.flowsIngested.Add(float64(stored))
	for rule, n := range pend.Raised {
		in.m.alertsRaised.WithLabelValues(rule).Add(float64(n))
	}
	if pend.Deliveries > 0 {
		in.kick()
	}
	for i, b := range group {
		in.m.flowBatches.WithLabelValues(results[i]).Inc()
		if results[i] == "stored" {
			in.stored(b.recs)
		}
		if results[i] == "stored" && b.notLocal > 0 {
			in.m.recordsRefused.WithLabelValues("not_local").Add(float64(b.notLocal))
		}
		if results[i] == "stored" && b.lost > 0 {
			in.m.flowsLost.Add(float64(b.lost))
			in.log.Warn("agent reports flow records it had to drop", zap.String("node", b.agent.node), zap.Uint64("lost", b.lost))
		}
		b.reply(&pb.FlowAck{Seq: b.seq})
	}
}

// forgotten are the spool ids of a node whose positions were forgotten.
type forgotten struct {
	node string
	ids  []uint64
}

// logForgotten says which spool positions were forgotten, at most once a
// minute per node.
func (in *Ingester) logForgotten(forgot []forgotten, now time.Time) {
	if len(forgot) == 0 {
		return
	}
	in.forgotMu.Lock()
	defer in.forgotMu.Unlock()
	for _, f := range forgot {
		if now.Sub(in.forgotLog[f.node]) < time.Minute {
			continue
		}
		in.forgotLog[f.node] = now
		in.log.Warn("agent uses more flow spools than the controller keeps positions for; the least recently used are forgotten",
			zap.String("node", f.node), zap.Int("spools-kept", maxSpools), zap.Uint64s("forgotten-spool-ids", f.ids))
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
func (in *Ingester) housekeep(ctx context.Context) {
	now := in.now()
	var pend alert.Pending
	turn := in.engineTurn()
	err := in.st.EventTx(ctx, func(tx store.EventTx) error {
		pend = alert.Pending{}
		turn.take()
		return in.engine.Sweep(tx, now, &pend)
	})
	if err != nil {
		in.m.storeErrors.WithLabelValues(storeErrorReason(err)).Inc()
		in.log.Error("alert sweep failed", zap.Error(err))
	} else {
		in.engine.Commit(&pend)
		if pend.Deliveries > 0 {
			in.kick()
		}
	}
	turn.done()
	in.retain(ctx, now)
	in.rollup(ctx, now)
	in.summarize(ctx)
}

// summarize brings the store's flow indexes up to date, if it keeps them
// apart from the inserts (store.FlowIndexer). A failure leaves them for
// the next pass: queries stay right meanwhile, only slower.
func (in *Ingester) summarize(ctx context.Context) {
	ix, ok := in.st.(store.FlowIndexer)
	if !ok {
		return
	}
	if _, err := ix.SummarizeFlowIndexes(ctx); err != nil {
		in.m.storeErrors.WithLabelValues(storeErrorReason(err)).Inc()
		in.log.Error("flow index summary failed", zap.Error(err))
	}
}

// rollup runs the store's rollup steps, if it has them, until it has
// caught up or rollupPass (or a hundred steps) is spent.
func (in *Ingester) rollup(ctx context.Context, now time.Time) {
	r, ok := in.st.(store.FlowEdgeRoller)
	if !ok {
		return
	}
	start := time.Now()
	for i, more := 0, true; more && i < 100 && time.Since(start) < rollupPass; i++ {
		var err error
		if more, err = r.RollupFlowEdges(ctx, now.Add(-rollupGrace), rollupChunk); err != nil {
			in.m.storeErrors.WithLabelValues(storeErrorReason(err)).Inc()
			in.log.Error("service map rollup failed", zap.Error(err))
			return
		}
	}
}

// retain deletes flows older than the retention, then the oldest flows
// while the store is over its size budget, a chunk per pass.
func (in *Ingester) retain(ctx context.Context, now time.Time) {
	cfg := &in.cfg
	if n, err := in.st.PruneFlows(ctx, now.Add(-cfg.FlowRetention), pruneChunk); err != nil {
		in.log.Error("flow retention failed", zap.Error(err))
	} else if n > 0 {
		in.m.flowsPruned.WithLabelValues("age").Add(float64(n))
	}
	if now.Sub(in.lastSize) >= 10*housekeeping {
		in.lastSize = now
		if _, err := in.st.PruneAlerts(ctx, now.Add(-cfg.AlertRetention)); err != nil {
			in.log.Error("alert retention failed", zap.Error(err))
		}
		// The position of a spool silent for longer than the flow
		// retention protects nothing: a batch of it sent again that late
		// holds flows that retention deletes anyway.
		if _, err := in.st.PruneSpoolPositions(ctx, now.Add(-cfg.FlowRetention)); err != nil {
			in.log.Error("spool position retention failed", zap.Error(err))
		}
	}
	size, flows, err := in.st.EventStoreSize(ctx)
	if err != nil {
		in.log.Error("flow store size unknown", zap.Error(err))
		return
	}
	in.m.storeBytes.Set(float64(size))
	in.m.storeFlows.Set(float64(flows))
	if size <= cfg.FlowMaxBytes || flows == 0 {
		return
	}
	// Delete the share of flows that is over budget, plus a tenth, so the
	// store does not sit at the limit.
	over := float64(size-cfg.FlowMaxBytes)/float64(size) + 0.1
	n := min(int(over*float64(flows))+1, pruneChunk)
	deleted, err := in.st.PruneOldestFlows(ctx, n)
	if err != nil {
		in.log.Error("flow size retention failed", zap.Error(err))
		return
	}
	in.m.flowsPruned.WithLabelValues("size").Add(float64(deleted))
	in.log.Info("flow store over its size budget: oldest flows deleted",
		zap.Int64("bytes", size), zap.Int64("budget", cfg.FlowMaxBytes), zap.Int64("deleted", deleted))
}
