package store

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Errors of a store that cannot write. Both are retryable for whoever
// holds the data (an agent keeps its flow batches): the error message says
// what the operator must fix.
var (
	// ErrFull: the disk, or the size budget of the database, is full.
	ErrFull = errors.New("store full")
	// ErrIO: the database could not be read or written (disk error).
	ErrIO = errors.New("store I/O error")
)

// EventStore is the part of Store that keeps what the agents report and
// what it leads to: flow records, alerts, webhook deliveries (the outbox),
// and how far each agent's flow spool has been stored. Its volume is
// unlike the rest (a flood of flows must never delay a policy change), so
// an implementation may keep it apart; the SQLite one uses a second
// database file (flows.db).
type EventStore interface {
	// EventTx runs f in one transaction: the flows, alerts, deliveries and
	// spool positions it writes are stored together or not at all. f must
	// not keep tx.
	EventTx(ctx context.Context, f func(tx EventTx) error) error

	// Flows returns flow records matching q, newest first.
	Flows(ctx context.Context, q FlowQuery) ([]flowrecord.Record, error)
	// ScanFlows calls fn with every flow q selects and its id, newest
	// first (time, then id); an error of fn stops the scan and is
	// returned. q.Limit 0 means no limit: callers bound what they read.
	// fn must not keep r.
	ScanFlows(ctx context.Context, q FlowQuery, fn func(id int64, r *flowrecord.Record) error) error
	// FlowEdges aggregates the flows recorded in [since, until) by
	// source and destination (workload, or address for an unmanaged
	// end), protocol, destination port and verdict: the limit groups
	// with the most flows, most first.
	FlowEdges(ctx context.Context, since, until time.Time, limit int) ([]FlowEdge, error)
	// FlowEdgesOf is FlowEdges of the flows from or to one workload
	// only: the limit applies to that workload's groups (egctl recommend
	// --workload).
	FlowEdgesOf(ctx context.Context, since, until time.Time, workload string, limit int) ([]FlowEdge, error)
	// RuleCounts counts the flows recorded in [since, until) by deciding
	// rule and verdict.
	RuleCounts(ctx context.Context, since, until time.Time) ([]RuleCount, error)
	// PruneFlows deletes up to limit flows recorded before before, oldest
	// first, and returns how many it deleted. A store that keeps flows in
	// time partitions also drops, beyond limit, every partition wholly
	// before before (a drop costs the same whatever it holds).
	PruneFlows(ctx context.Context, before time.Time, limit int) (int64, error)
	// PruneOldestFlows deletes the n oldest flows.
	PruneOldestFlows(ctx context.Context, n int) (int64, error)
	// PruneSpoolPositions deletes the spool positions last updated before
	// before, and returns how many it deleted.
	PruneSpoolPositions(ctx context.Context, before time.Time) (int64, error)
	// EventStoreSize returns the bytes the event data occupies (free pages
	// excluded) and the number of flows stored.
	EventStoreSize(ctx context.Context) (bytes int64, flows int64, err error)

	// Alerts returns alerts matching q, most recently seen first.
	Alerts(ctx context.Context, q AlertQuery) ([]Alert, error)
	// PruneAlerts deletes resolved alerts, and finished deliveries, older
	// than before.
	PruneAlerts(ctx context.Context, before time.Time) (int64, error)

	// DueDeliveries returns up to limit pending deliveries due at now,
	// oldest first and at most perWebhook to one webhook (so a backlog to
	// one receiver cannot hide the others' deliveries), leaving out any
	// whose alert has an older pending delivery to the same webhook
	// (deliveries of one alert to one webhook go out in order).
	DueDeliveries(ctx context.Context, now time.Time, perWebhook, limit int) ([]Delivery, error)
	// NextDeliveryAt returns when the next pending delivery is due (zero
	// when none is pending), not counting deliveries that wait behind an
	// older one (as DueDeliveries), and how many are pending in all.
	NextDeliveryAt(ctx context.Context) (time.Time, int, error)
	// WebhookStats returns, for every webhook with a delivery in the
	// outbox, its last delivery, last error and counts, by name.
	WebhookStats(ctx context.Context) ([]WebhookStats, error)
	// UpdateDelivery records an attempt's outcome (state, attempts, next
	// attempt, last error, finished).
	UpdateDelivery(ctx context.Context, d Delivery) error
	// Delivery returns one delivery, or ErrNotFound.
	Delivery(ctx context.Context, id int64) (Delivery, error)
}

// FlowEdgeRoller is an EventStore whose service-map rollup is filled
// apart from the transactions that insert flows (PostgreSQL's: the
// upsert of a batch's rows was most of an insert's cost). Its FlowEdges
// read the flows not yet rolled up from the flows, so the answer is the
// same whenever the rollup runs; the rollup only makes it cheaper. The
// flow ingester calls it at each housekeeping pass.
type FlowEdgeRoller interface {
	// RollupFlowEdges adds to the rollup, in one transaction, the flows
	// recorded before until that are not yet in it, at most about limit
	// of them (the oldest), and says whether some are left.
	RollupFlowEdges(ctx context.Context, until time.Time, limit int) (more bool, err error)
}

// FlowIndexer is an EventStore whose flow indexes are brought up to date
// apart from the inserts (PostgreSQL's BRIN indexes: a row appended to a
// range not yet summarized costs them nothing; the summary is made once
// per range). Queries answer the same whenever it runs; until it does,
// they read the new rows whole. The flow ingester calls it at each
// housekeeping pass.
type FlowIndexer interface {
	// SummarizeFlowIndexes indexes the flows stored since its last
	// call and reports how many units of index (page ranges) it made.
	SummarizeFlowIndexes(ctx context.Context) (int64, error)
}

// ConcurrentFlowWriter is an EventStore that stores flow batches from
// several writers at once (PostgreSQL's: one writer left a core idle,
// the controller's work and the server's taking turns). SQLite has one
// write lock and does not implement it: its ingester keeps one writer.
type ConcurrentFlowWriter interface {
	// FlowTx runs f in one transaction, as EventTx does, but alongside
	// other FlowTx transactions until f calls tx.Serialize. It first
	// takes the spool positions of nodes (a node may be named more than
	// once) for itself: f may read and save
	// the positions of these nodes only, and the same node's batches are
	// never stored by two FlowTx at once (in any process sharing the
	// store), so a batch sent again while its first copy is being stored
	// is seen stored. Before Serialize f may only use the spool positions
	// and InsertFlows; after it, anything (alerts, deliveries), one
	// transaction at a time, as in EventTx, until the commit. An EventTx
	// (retention, rollup, the API's alert changes) runs while no FlowTx
	// does. f may be run again (a store's own retry): it must start from
	// scratch each time.
	FlowTx(ctx context.Context, nodes []string, f func(tx FlowTx) error) error
}

// FlowTx is a transaction of ConcurrentFlowWriter.FlowTx.
type FlowTx interface {
	EventTx
	// Serialize waits until no other FlowTx is past its Serialize, and
	// holds that turn to the end of the transaction. Calling it again
	// does nothing.
	Serialize() error
}

// RunFlowTx runs f in es.FlowTx when es takes concurrent flow writers,
// and in es.EventTx otherwise (one transaction at a time throughout:
// Serialize does nothing).
func RunFlowTx(ctx context.Context, es EventStore, nodes []string, f func(tx FlowTx) error) error {
	if c, ok := es.(ConcurrentFlowWriter); ok {
		return c.FlowTx(ctx, nodes, f)
	}
	return es.EventTx(ctx, func(tx EventTx) error { return f(serialTx{tx}) })
}

// serialTx is an EventTx as a FlowTx: it is alone already.
type serialTx struct{ EventTx }

func (serialTx) Serialize() error { return nil }

// EventTx is what an EventStore transaction may do.
type EventTx interface {
	// SpoolPosition returns how far an agent's spool has been stored (the
	// zero position, with node and spool id set, when never).
	SpoolPosition(node string, spoolID uint64) (SpoolPosition, error)
	SaveSpoolPosition(p SpoolPosition) error
	// ForgetSpools deletes the positions of node's spools but the keep
	// most recently updated (the most recently created first among equal
	// times), and returns the spool ids it forgot.
	ForgetSpools(node string, keep int) ([]uint64, error)
	// InsertFlows stores flow records.
	InsertFlows(recs []flowrecord.Record) error

	// LiveAlert returns the newest alert with the dedup key that is not
	// resolved, or ErrNotFound.
	LiveAlert(key string) (Alert, error)
	// Alert returns an alert by id, or ErrNotFound.
	Alert(id int64) (Alert, error)
	// LiveAlerts returns every alert that is not resolved.
	LiveAlerts() ([]Alert, error)
	// ExpiredAlerts returns up to limit live alerts whose window passed
	// before now (LastSeen + Window < now), soonest expired first.
	ExpiredAlerts(now time.Time, limit int) ([]Alert, error)
	// AlertsToRefresh returns up to limit live alerts whose RefreshedAt
	// is at or before before, least recently refreshed first.
	AlertsToRefresh(before time.Time, limit int) ([]Alert, error)
	// LiveAlertCount returns how many live alerts a rule has, its summary
	// alert (Folded > 0) not counted.
	LiveAlertCount(rule string) (int, error)
	// TrimFinished keeps at most maxResolved resolved alerts and at most
	// maxFinished finished (delivered or given-up) deliveries, deleting
	// the oldest finished first; a resolved alert with a delivery still
	// pending is kept. It returns how many of each it deleted.
	TrimFinished(maxResolved, maxFinished int) (alerts, deliveries int64, err error)
	// InsertAlert stores a new alert and sets its ID.
	InsertAlert(a *Alert) error
	// UpdateAlert stores an alert's state, count, times and last flow.
	UpdateAlert(a *Alert) error

	// AddDeliveries queues deliveries (their IDs are set).
	AddDeliveries(ds []Delivery) error
	// LastDeliveryCreated returns when the newest delivery of an alert to
	// a webhook was queued (zero if never).
	LastDeliveryCreated(alertID int64, webhook string) (time.Time, error)
}

// SpoolPosition says which batches of one agent spool are stored. Batches
// are numbered within a spool; High is the highest stored, Holes the seq
// ranges below High not stored (a batch refused for a while, or dropped
// by the agent): a batch is new when its seq is above High or in a hole.
type SpoolPosition struct {
	Node    string
	SpoolID uint64
	High    uint64
	Holes   []SeqRange
	Updated time.Time
}

// SeqRange is an inclusive range of batch seqs.
type SeqRange struct{ First, Last uint64 }

// maxHoles bounds SpoolPosition.Holes; the oldest are forgotten first
// (a batch that comes back after that many newer gaps is taken for a
// duplicate).
const maxHoles = 256

// Stored reports whether the batch seq was stored already.
func (p *SpoolPosition) Stored(seq uint64) bool {
	if seq > p.High {
		return false
	}
	for _, h := range p.Holes {
		if seq >= h.First && seq <= h.Last {
			return false
		}
	}
	return true
}

// Add records batch seq as stored (seq must not be Stored). It returns
// the number of hole ranges forgotten to stay within the bound.
func (p *SpoolPosition) Add(seq uint64) (forgotten int) {
	if seq > p.High {
		if seq > p.High+1 {
			p.Holes = append(p.Holes, SeqRange{p.High + 1, seq - 1})
		}
		p.High = seq
	} else {
		for i, h := range p.Holes {
			if seq < h.First || seq > h.Last {
				continue
			}
			var repl []SeqRange
			if seq > h.First {
				repl = append(repl, SeqRange{h.First, seq - 1})
			}
			if seq < h.Last {
				repl = append(repl, SeqRange{seq + 1, h.Last})
			}
			p.Holes = append(p.Holes[:i], append(repl, p.Holes[i+1:]...)...)
			break
		}
	}
	if n := len(p.Holes) - maxHoles; n > 0 {
		p.Holes = append([]SeqRange(nil), p.Holes[n:]...)
		return n
	}
	return 0
}

// FlowQuery selects flows. Zero fields select everything.
type FlowQuery struct {
	Since, Until time.Time
	Verdict      ruleset.Verdict
	// Port is the destination port; HasPort says it is set (0 is a port).
	Port     uint16
	HasPort  bool
	Protocol string
	// Workload matches either end's workload; Addr either end's address.
	Workload string
	Addr     netip.Addr
	Rule     string
	Node     string
	// ByWorkloads selects flows with either end's workload in Workloads
	// (none when Workloads is empty): a label filter, resolved by the
	// caller.
	ByWorkloads bool
	Workloads   []string
	// Before, when not 0, selects the flows after the flow with this id
	// in the newest-first order (a page's last id): none if that flow is
	// no longer stored.
	Before int64
	// Limit bounds the answer (callers cap it).
	Limit int
}

// FlowEdge is one group of FlowEdges: flows of one source, destination,
// protocol, destination port and verdict.
type FlowEdge struct {
	// SrcWorkload and DstWorkload are the ends' workloads; SrcAddr and
	// DstAddr are set only for an end no workload owns.
	SrcWorkload, DstWorkload string
	SrcAddr, DstAddr         netip.Addr
	Protocol                 string
	Port                     uint16
	Verdict                  ruleset.Verdict
	// Flows counts the new flows (first records); Packets and Bytes sum
	// the final volume of closed connections and the packets of flows
	// that were not allowed (connections still open count only once
	// closed).
	Flows, Packets, Bytes uint64
	// FirstSeen and LastSeen are the times of the group's first and last
	// records in the range.
	FirstSeen, LastSeen time.Time
}

// RuleCount is how many flows one rule decided with one verdict.
type RuleCount struct {
	Rule    string
	Verdict ruleset.Verdict
	Flows   uint64
}

// Alert states.
const (
	AlertOpen         = "open"
	AlertAcknowledged = "acknowledged"
	AlertResolved     = "resolved"
)

// Alert is a run of flows matching one AlertRule between one source and
// one destination over one protocol (any port), with no gap longer than
// the rule's window; or, for a rule that has its cap of live alerts, the
// rule's summary alert, which stands for the pairs beyond the cap.
type Alert struct {
	ID       int64
	Rule     string
	Severity string
	// Key is the dedup key: rule, source, destination, protocol; a
	// summary alert's is the rule's name and "|*".
	Key   string
	State string
	// Count is the number of connection attempts (distinct 5-tuples)
	// the alert covers.
	Count uint64
	// Source and Destination are workload names, or addresses for
	// unmanaged ends.
	Source, Destination      string
	SrcWorkload, DstWorkload string
	SrcAddr, DstAddr         netip.Addr
	SrcLabels, DstLabels     map[string]string
	// Port is the first destination port seen; Ports the first distinct
	// ports seen, in order (at most a sample's worth); PortCount how
	// many distinct ports there were; PortSet their bitmap (bit p of
	// byte p/8), nil while Ports holds them all.
	Port      uint16
	Ports     []uint16
	PortCount int
	PortSet   []byte
	Protocol  string
	// Folded is, on a summary alert, how many (source, destination,
	// protocol) runs it stands for: each would have been an alert of its
	// own had the rule not had its cap of live alerts. 0 on the others;
	// a summary alert's Source and Destination are "*".
	Folded uint64
	// Verdict, DecidingRule and Node are the last matching flow's.
	Verdict      string
	DecidingRule string
	Node         string
	FirstSeen    time.Time
	LastSeen     time.Time
	Window       time.Duration
	// Notify names the webhooks told about it.
	Notify  []string
	Created time.Time
	// RefreshedAt is when the alert was last re-posted to Alertmanager
	// webhooks, or considered for it (its creation at first).
	RefreshedAt    time.Time
	AcknowledgedAt time.Time
	// AcknowledgedBy names who acknowledged it (the admin token's name).
	AcknowledgedBy string
	ResolvedAt     time.Time
	// ResolvedBy says why it was resolved: "window" (no repeat for a
	// whole window) or "api".
	ResolvedBy string
}

// WebhookStats is what the outbox says of one webhook.
type WebhookStats struct {
	Webhook string
	// LastDelivered is when a delivery to it last succeeded (zero if
	// none is in the outbox).
	LastDelivered time.Time
	// LastError is the error of the newest delivery whose last attempt
	// failed, pending or given up ("" when none did).
	LastError string
	// Pending deliveries wait to be sent; GaveUp were given up (both as
	// far as the outbox keeps them: see TrimFinished).
	Pending int
	GaveUp  int
}

// AlertQuery selects alerts.
type AlertQuery struct {
	// ID selects one alert (0: any).
	ID int64
	// States selects by state; empty means every state.
	States []string
	Rule   string
	Since  time.Time // last seen at or after
	Limit  int
}

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryGaveUp    = "gave-up"
)

// Delivery events: what a delivery tells the webhook.
const (
	EventFiring   = "firing"
	EventResolved = "resolved"
	// EventRefresh re-posts an open alert to Alertmanager, which forgets
	// alerts that are not re-posted.
	EventRefresh = "refresh"
)

// Delivery is one message to one webhook about one alert, in the outbox
// until delivered or given up.
type Delivery struct {
	ID          int64
	AlertID     int64
	Webhook     string
	Event       string
	State       string
	Attempts    int
	NextAttempt time.Time
	Created     time.Time
	LastError   string
	Finished    time.Time
}
