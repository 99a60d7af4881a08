package flowingest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

var testNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func ruleNames(id ruleset.RuleID) string { return (&ruleset.RuleSet{}).RuleName(id) }

// admitted submits b for a and, when it is queued, takes it off the
// queue as the writer would, without storing it; it returns the refusal
// (nil: queued).
func admitted(t *testing.T, in *Ingester, a *Agent, b *pb.FlowBatch) *pb.FlowAck {
	t.Helper()
	ack := a.Submit(b, ruleNames, func(*pb.FlowAck) {})
	if ack == nil {
		<-in.queueOf(a.node)
		a.Done()
	}
	return ack
}

// TestEmptyBatchesCostTokens: a flood of empty batches is rate limited
// like records are; each batch costs the store a transaction share and an
// ack, so none is free.
func TestEmptyBatchesCostTokens(t *testing.T) {
	reg := prometheus.NewRegistry()
	in := New(Config{Now: func() time.Time { return testNow }, Settings: Settings{AgentFlowRate: 100}, Registry: reg}) // a burst of 1,000
	a := in.NewAgent("node-a", zap.NewNop())
	accepted := 0
	for seq := uint64(1); seq <= 10000; seq++ {
		ack := admitted(t, in, a, &pb.FlowBatch{Seq: seq, SpoolId: 1})
		switch {
		case ack == nil:
			accepted++
		case !ack.GetRetry():
			t.Fatalf("empty batch %d refused for good: %+v", seq, ack)
		}
	}
	if accepted > 1000 {
		t.Errorf("%d of 10,000 empty batches accepted with the clock stopped, want at most the burst of 1,000", accepted)
	}
	if got := promtest.ToFloat64(in.m.flowBatches.WithLabelValues("rate_limited")); got < 9000 {
		t.Errorf("rate_limited batches counted %v, want at least 9,000", got)
	}
}

// testPolicy: web on node-a; client and db on node-b; an alert on any SSH
// attempt to a managed workload.
var testPolicy = testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{
	{Name: "web", Node: "node-a", Interface: "eg1-web", Addrs: []string{"10.250.17.2"}},
	{Name: "client", Node: "node-b", Interface: "eg2-client", Addrs: []string{"10.250.33.2"}},
	{Name: "db", Node: "node-b", Interface: "eg2-db", Addrs: []string{"10.250.33.3", "fd0e::33:3"}},
}}) + "\n---\n" + testutil.SSHAlertPolicy("", "")

// testIngester is an ingester with its writers running over a store (by
// default SQLite in a temporary directory), under testPolicy.
type testIngester struct {
	*Ingester
	st  store.Store
	reg *prometheus.Registry
	// stop stops the writer (the test may then call its methods itself).
	stop func()
}

func startIngester(t *testing.T, cfg Config, setup ...func(*Ingester)) *testIngester {
	t.Helper()
	st, err := sqlite.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return startIngesterOn(t, st, cfg, setup...)
}

// startIngesterOn is startIngester on st, which it closes when the test
// ends.
func startIngesterOn(t *testing.T, st store.Store, cfg Config, setup ...func(*Ingester)) *testIngester {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Store, cfg.Registry = st, reg
	in := New(cfg)
	set, diags := policy.ParseAndValidate("test.yaml", []byte(testPolicy))
	if set == nil {
		t.Fatalf("test policy: %v", diags)
	}
	in.SetPolicy(set)
	for _, f := range setup {
		f(in)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(func() {
		stop()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return &testIngester{Ingester: in, st: st, reg: reg, stop: stop}
}

// send submits b for a and returns its ack: the refusal, or the writer's
// answer once the batch is stored.
func (ti *testIngester) send(t *testing.T, a *Agent, b *pb.FlowBatch) *pb.FlowAck {
	t.Helper()
	acks := make(chan *pb.FlowAck, 1)
	if ack := a.Submit(b, ruleNames, func(ack *pb.FlowAck) { acks <- ack }); ack != nil {
		return ack
	}
	select {
	case ack := <-acks:
		a.Done()
		return ack
	case <-time.After(10 * time.Second):
		t.Fatalf("batch %d not acked within 10 s", b.GetSeq())
		return nil
	}
}

func (ti *testIngester) flows(t *testing.T) []string {
	t.Helper()
	recs, err := ti.st.Flows(context.Background(), store.FlowQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.SrcAddr.String()+">"+r.DstAddr.String())
	}
	return out
}

// flow is a denied TCP flow record from src to dst port 22, as seen in
// direction d.
func flow(d ruleset.Direction, src, dst string, reason string) *pb.FlowRecord {
	at := testNow.UnixNano()
	return &pb.FlowRecord{
		TimeUnixNano: at, Direction: uint32(d), Protocol: uint32(ruleset.ProtocolTCP),
		SrcAddr: netip.MustParseAddr(src).AsSlice(), SrcPort: 40000, DstAddr: netip.MustParseAddr(dst).AsSlice(), DstPort: 22,
		Verdict: uint32(ruleset.VerdictDenied), Packets: 1, Bytes: 60, FirstSeenUnixNano: at, LastSeenUnixNano: at, Reason: reason,
	}
}

// TestRecordsMustBeLocal: a node reports only what it saw: the end on its
// side of each record (ingress: destination, egress: source; either for
// no-endpoint) must be one of its workloads' addresses or an address no
// workload owns (its own). A compromised node-a reporting node-b's
// workloads raises no alert; those records are dropped and counted, the
// rest of the batch stored.
func TestRecordsMustBeLocal(t *testing.T) {
	ti := startIngester(t, Config{Now: func() time.Time { return testNow }})
	a := ti.NewAgent("node-a", zap.NewNop())
	const (
		web, client, db, db6 = "10.250.17.2", "10.250.33.2", "10.250.33.3", "fd0e::33:3"
		nodeAddr, outside    = "10.250.99.1", "192.0.2.7"
	)
	// Forged: both ends on node-b, in every form.
	forged := []*pb.FlowRecord{
		flow(ruleset.Ingress, client, db, ""),
		flow(ruleset.Egress, db, client, ""),
		flow(ruleset.Ingress, web, db, ""),                         // the remote end may be node-a's, the local must be
		flow(ruleset.Egress, client, web, ""),                      // likewise
		flow(ruleset.Ingress, client, db, "no-endpoint"),           // either end, but neither is node-a's
		flow(ruleset.Egress, db, outside, "spoofed"),               // a spoof of another node's workload is not told from a forgery
		flow(ruleset.Ingress, "fd0e::99", db6, ""),                 // IPv6
		flow(ruleset.Ingress, "::ffff:"+outside, "::ffff:"+db, ""), // IPv4-mapped
	}
	ack := ti.send(t, a, &pb.FlowBatch{Seq: 1, SpoolId: 1, Records: forged})
	if ack.GetError() != "" {
		t.Fatalf("batch refused whole: %+v", ack)
	}
	if got := ti.flows(t); len(got) != 0 {
		t.Errorf("forged records stored: %v", got)
	}
	alerts, err := ti.st.Alerts(context.Background(), store.AlertQuery{})
	if err != nil || len(alerts) != 0 {
		t.Errorf("alerts about another node's workloads: %+v (%v)", alerts, err)
	}
	if got := promtest.ToFloat64(ti.m.recordsRefused.WithLabelValues("not_local")); got != float64(len(forged)) {
		t.Errorf("records refused as not local counted %v, want %d", got, len(forged))
	}

	// Genuine: one end node-a's, by direction; mixed with a forged one,
	// which alone is dropped.
	genuine := []*pb.FlowRecord{
		flow(ruleset.Ingress, client, web, ""),            // client -> web:22, alerts
		flow(ruleset.Egress, web, db, ""),                 // web -> db
		flow(ruleset.Ingress, outside, nodeAddr, ""),      // the node's own address, unknown to the controller
		flow(ruleset.Egress, outside, db, "spoofed"),      // a workload of node-a sent as an outside address
		flow(ruleset.Ingress, web, client, "no-endpoint"), // direction says nothing here; web is node-a's
	}
	ack = ti.send(t, a, &pb.FlowBatch{Seq: 2, SpoolId: 1, Records: append(genuine, flow(ruleset.Ingress, client, db, ""))})
	if ack.GetError() != "" {
		t.Fatalf("batch refused whole: %+v", ack)
	}
	if got := ti.flows(t); len(got) != len(genuine) {
		t.Errorf("stored %v, want the %d genuine records", got, len(genuine))
	}
	// Every genuine SSH attempt to a managed workload alerts; the forged
	// client -> db does not.
	alerts, err = ti.st.Alerts(context.Background(), store.AlertQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, al := range alerts {
		got = append(got, al.Source+">"+al.Destination)
	}
	slices.Sort(got)
	if want := []string{"192.0.2.7>db", "client>web", "web>client", "web>db"}; !slices.Equal(got, want) {
		t.Errorf("alerts %v, want %v", got, want)
	}
	if got := promtest.ToFloat64(ti.m.recordsRefused.WithLabelValues("not_local")); got != float64(len(forged)+1) {
		t.Errorf("records refused as not local counted %v, want %d", got, len(forged)+1)
	}
}

// TestStoredFlowsPublished: the records of a stored batch are handed on
// (to the dashboard's live flows) once committed, so they can be read
// back by then; records dropped as not local and a batch sent again are
// not handed on.
func TestStoredFlowsPublished(t *testing.T) {
	var published [][]string
	var ti *testIngester
	ti = startIngester(t, Config{Now: func() time.Time { return testNow }}, func(in *Ingester) {
		in.OnStored(func(recs []flowrecord.Record) {
			var got []string
			for _, r := range recs {
				got = append(got, r.SrcAddr.String()+">"+r.DstAddr.String())
			}
			if stored := ti.flows(t); len(stored) < len(got) {
				t.Errorf("records %v handed on before they were committed (stored: %v)", got, stored)
			}
			published = append(published, got)
		})
	})
	a := ti.NewAgent("node-a", zap.NewNop())
	const web, client, db = "10.250.17.2", "10.250.33.2", "10.250.33.3"
	b := &pb.FlowBatch{Seq: 1, SpoolId: 1, Records: []*pb.FlowRecord{flow(ruleset.Ingress, client, web, ""), flow(ruleset.Ingress, client, db, "")}}
	if ack := ti.send(t, a, b); ack.GetError() != "" {
		t.Fatalf("batch refused: %+v", ack)
	}
	if ack := ti.send(t, a, b); ack.GetError() != "" {
		t.Fatalf("batch sent again refused: %+v", ack)
	}
	ti.stop()
	if want := [][]string{{client + ">" + web}}; !slices.EqualFunc(published, want, slices.Equal) {
		t.Errorf("handed on %v, want %v", published, want)
	}
}

// TestSpoolIDsCapped: an agent making up a new spool id for every batch
// leaves at most maxSpools positions (the newest) in the store, and
// positions older than the flow retention are pruned.
func TestSpoolIDsCapped(t *testing.T) {
	var clock atomic.Int64
	clock.Store(testNow.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	ti := startIngester(t, Config{Now: now})
	a := ti.NewAgent("node-a", zap.NewNop())
	b := ti.NewAgent("node-b", zap.NewNop())
	if ack := ti.send(t, b, &pb.FlowBatch{Seq: 1, SpoolId: 5}); ack.GetError() != "" {
		t.Fatalf("node-b's batch refused: %+v", ack)
	}
	const spools = 1000
	acks := make(chan *pb.FlowAck, MaxInFlight)
	for id := uint64(1); id <= spools; id += MaxInFlight {
		// A window of batches in flight, so that they share transactions
		// as an agent's do.
		n := 0
		for ; n < MaxInFlight && id+uint64(n) <= spools; n++ {
			if ack := a.Submit(&pb.FlowBatch{Seq: 1, SpoolId: id + uint64(n)}, ruleNames, func(ack *pb.FlowAck) { acks <- ack }); ack != nil {
				t.Fatalf("spool %d refused: %+v", id+uint64(n), ack)
			}
		}
		for range n {
			select {
			case ack := <-acks:
				a.Done()
				if ack.GetError() != "" {
					t.Fatalf("batch not stored: %+v", ack)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("batch not acked within 10 s")
			}
		}
		clock.Add(int64(time.Millisecond))
	}
	kept := func(node string, ids ...uint64) []uint64 {
		t.Helper()
		var out []uint64
		err := ti.st.EventTx(context.Background(), func(tx store.EventTx) error {
			for _, id := range ids {
				p, err := tx.SpoolPosition(node, id)
				if err != nil {
					return err
				}
				if p.High != 0 {
					out = append(out, id)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	all := make([]uint64, spools)
	for i := range all {
		all[i] = uint64(i + 1)
	}
	got := kept("node-a", all...)
	if len(got) > maxSpools {
		t.Errorf("%d spool positions of node-a stored after %d spool ids, want at most %d", len(got), spools, maxSpools)
	}
	if !slices.Contains(got, spools) {
		t.Errorf("the newest spool's position was forgotten: kept %v", got)
	}
	if len(kept("node-b", 5)) != 1 {
		t.Error("node-b's spool forgotten because of node-a's")
	}

	// Retention: positions not updated for longer than the flow
	// retention are pruned.
	ti.stop()
	clock.Add(int64(DefaultFlowRetention + time.Minute))
	ti.retain(context.Background(), now())
	if got := append(kept("node-a", all...), kept("node-b", 5)...); len(got) != 0 {
		t.Errorf("spool positions older than the flow retention kept: %v", got)
	}
}

// rollerStore is a store with a rollup apart from its inserts
// (store.FlowEdgeRoller) that says it has more left for its first steps.
type rollerStore struct {
	store.Store
	left   int
	untils []time.Time
}

func (r *rollerStore) RollupFlowEdges(_ context.Context, until time.Time, limit int) (bool, error) {
	r.untils = append(r.untils, until)
	if limit <= 0 {
		return false, errors.New("no limit")
	}
	r.left--
	return r.left > 0, nil
}

// stoppedIngesterWith starts an ingester at testNow on the store wrap
// makes of its own, and stops its writer, so that a test runs the
// housekeeping passes itself.
func stoppedIngesterWith[S store.Store](t *testing.T, wrap func(store.Store) S) (*testIngester, S) {
	t.Helper()
	var s S
	ti := startIngester(t, Config{Now: func() time.Time { return testNow }}, func(in *Ingester) {
		s = wrap(in.st)
		in.st = s
	})
	ti.stop()
	return ti, s
}

// TestHousekeepingRollsUp: a housekeeping pass runs the store's rollup
// steps until it has caught up, up to rollupGrace before now.
func TestHousekeepingRollsUp(t *testing.T) {
	ti, rs := stoppedIngesterWith(t, func(st store.Store) *rollerStore { return &rollerStore{Store: st} })
	// Whatever the writer's own passes did before it stopped.
	rs.untils, rs.left = nil, 3
	ti.housekeep(context.Background())
	if len(rs.untils) != 3 {
		t.Fatalf("%d rollup steps, want 3 (until the store has caught up)", len(rs.untils))
	}
	for _, u := range rs.untils {
		if !u.Equal(testNow.Add(-rollupGrace)) {
			t.Errorf("rolled up to %s, want %s", u, testNow.Add(-rollupGrace))
		}
	}
}

// indexerStore is a store whose flow indexes are summarized apart from
// its inserts (store.FlowIndexer); its first call fails.
type indexerStore struct {
	store.Store
	calls int
}

func (s *indexerStore) SummarizeFlowIndexes(context.Context) (int64, error) {
	s.calls++
	if s.calls == 1 {
		return 0, errors.New("lock timeout")
	}
	return 1, nil
}

// TestHousekeepingSummarizesIndexes: every housekeeping pass summarizes
// the store's flow indexes; a failure is counted and the next pass runs
// it again.
func TestHousekeepingSummarizesIndexes(t *testing.T) {
	ti, is := stoppedIngesterWith(t, func(st store.Store) *indexerStore { return &indexerStore{Store: st} })
	is.calls = 0
	errs := func() float64 { return promtest.ToFloat64(ti.m.storeErrors.WithLabelValues("other")) }
	before := errs()
	ti.housekeep(context.Background())
	if is.calls != 1 || errs() != before+1 {
		t.Fatalf("first pass: %d calls, %v store errors counted, want 1 and %v", is.calls, errs(), before+1)
	}
	ti.housekeep(context.Background())
	if is.calls != 2 || errs() != before+1 {
		t.Errorf("second pass: %d calls, %v store errors, want 2 and %v", is.calls, errs(), before+1)
	}
}

// TestOneWriterOnSQLite: a store that does not take concurrent flow
// writers (SQLite: one write lock) gets one writer, whatever is asked.
func TestOneWriterOnSQLite(t *testing.T) {
	st, err := sqlite.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, ok := store.Store(st).(store.ConcurrentFlowWriter); ok {
		t.Fatal("SQLite claims to take concurrent flow writers")
	}
	if in := New(Config{Store: st, Writers: 2}); len(in.queues) != 1 {
		t.Errorf("%d writers on SQLite, want 1", len(in.queues))
	}
}
