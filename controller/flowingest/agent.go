package flowingest

import (
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Agent is one agent stream's admission to the ingester: its rate limit
// and its batches in flight. Submit is called from the stream's goroutine
// only; Done may be called from any.
type Agent struct {
	in       *Ingester
	node     string
	log      *zap.Logger
	bucket   tokenBucket
	inFlight atomic.Int32
	// lastLog and lastNotLocalLog rate-limit the warnings about this
	// agent's rate and its records refused as not local.
	lastLog         time.Time
	lastNotLocalLog time.Time
}

// NewAgent returns the admission state of a new stream of node; its log
// lines name the node (log need not: a logger made With it for every
// stream cost each of thousands of streams its copy).
func (in *Ingester) NewAgent(node string, log *zap.Logger) *Agent {
	return &Agent{in: in, node: node, log: log, bucket: newTokenBucket(in.cfg.AgentFlowRate, in.now())}
}

// Submit checks b and queues it for the store. It returns the ack to send
// at once when the batch is refused (malformed, rate limited, too many in
// flight, queue full), or nil when queued: reply is then called once,
// from the writer, with the batch's ack, and must not block. rules names
// the rule ids of the rule set the agent enforces.
func (a *Agent) Submit(b *pb.FlowBatch, rules func(ruleset.RuleID) string, reply func(*pb.FlowAck)) *pb.FlowAck {
	in := a.in
	refuse := func(result, msg string, retry bool) *pb.FlowAck {
		in.m.flowBatches.WithLabelValues(result).Inc()
		return &pb.FlowAck{Seq: b.GetSeq(), Error: msg, Retry: retry}
	}
	if a.inFlight.Load() >= MaxInFlight {
		return refuse("busy", fmt.Sprintf("%d batches of this agent are being stored; send this one later", MaxInFlight), true)
	}
	now := in.now()
	// Every batch costs at least one token: an empty one still costs a
	// share of a store transaction and an ack, so a flood of them is
	// limited like a flood of records.
	if !a.bucket.take(max(1, len(b.GetRecords())), now) {
		if now.Sub(a.lastLog) > time.Minute {
			a.lastLog = now
			a.log.Warn("agent sends flow records faster than its rate limit; its batches wait in its spool", zap.String("node", a.node),
				zap.Float64("records-per-second", in.cfg.AgentFlowRate))
		}
		return refuse("rate_limited", fmt.Sprintf("rate limited: this agent may send %.0f flow records/s", in.cfg.AgentFlowRate), true)
	}
	ows := *in.owners.Load()
	recs, err := wire.ToRecords(b, a.node, rules, ows.workload)
	if err != nil {
		// A broken batch is refused whole, never stored in part. It will
		// not get better by retrying: the agent counts it as lost.
		a.log.Error("malformed flow batch refused", zap.String("node", a.node), zap.Uint64("seq", b.GetSeq()), zap.Int("records", len(b.GetRecords())), zap.Error(err))
		return refuse("malformed", "malformed flow batch: "+err.Error(), false)
	}
	// Records with no end on this node are dropped, the rest of the batch
	// stored: a well-formed batch of a workload that just moved to
	// another node (records spooled before the move) must not cost the
	// node's other records, and retrying would not help.
	recs, notLocal, first := ows.keepLocal(a.node, recs)
	if notLocal > 0 && now.Sub(a.lastNotLocalLog) > time.Minute {
		a.lastNotLocalLog = now
		a.log.Warn("flow records refused: no end on the reporting node (another node's workloads); the rest of the batch is stored", zap.String("node", a.node),
			zap.Uint64("seq", b.GetSeq()), zap.Int("refused", notLocal), zap.String("direction", first.Direction.String()),
			zap.Stringer("src-addr", first.SrcAddr), zap.String("src-workload", first.SrcWorkload),
			zap.Stringer("dst-addr", first.DstAddr), zap.String("dst-workload", first.DstWorkload))
	}
	a.inFlight.Add(1)
	if !in.offer(&batch{agent: a, spoolID: b.GetSpoolId(), seq: b.GetSeq(), lost: b.GetLost(), recs: recs, notLocal: notLocal, reply: reply}) {
		a.inFlight.Add(-1)
		return refuse("busy", "the controller's flow queue is full; send this batch later", true)
	}
	return nil
}

// Done says that the ack of one queued batch was taken by the stream: the
// batch has left flight.
func (a *Agent) Done() { a.inFlight.Add(-1) }

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
