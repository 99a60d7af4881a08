package integration_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/store/postgres"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/controller/store/storetest"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// benchFlows is a FlowSource that sends prepared batches as fast as the
// controller acks them, with up to window batches in flight (as an agent
// with a backlog in its spool does).
type benchFlows struct {
	batches chan *pb.FlowBatch
	window  chan struct{}
	mu      sync.Mutex
	acked   int
	failed  []string
	done    chan struct{}
	want    int
}

func (f *benchFlows) Next(ctx context.Context) (*pb.FlowBatch, error) {
	select {
	case f.window <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case b := <-f.batches:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *benchFlows) Ack(a *pb.FlowAck) {
	<-f.window
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.GetError() != "" {
		f.failed = append(f.failed, a.GetError())
	}
	f.acked++
	if f.acked == f.want {
		close(f.done)
	}
}

func (f *benchFlows) Reset() {}

// BenchmarkFlowIngest: flow records per second from one agent's stream
// into SQLite (validation, naming, group-committed inserts with their
// indexes, the alert engine on every record; one record in 50 raises or
// counts on an alert), over loopback mutual TLS. Reported: records/s.
func BenchmarkFlowIngest(b *testing.B) {
	for _, size := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			flowIngest(b, size, 1, flowBase, time.Second, ingestHooks{}, func(c *controller.Config) { c.AgentFlowRate = -1 })
		})
	}
}

// BenchmarkPostgresFlowIngest is BenchmarkFlowIngest with the controller
// on PostgreSQL (a throw-away cluster on this machine, pgtest), batches
// of 1,000 from one agent's stream (agents=1) or two agents' (agents=2:
// the controller's two writers each store one node's batches, as with a
// fleet), b.N batches with times from now on, a millisecond apart (as
// an agent's records arrive: none late for the service map's rollup,
// whose late-record path records from hours ago took, as this
// benchmark's did before): sustained, with the flows table growing to
// millions of rows, as
//
//	go test -run '^$' -bench BenchmarkPostgresFlowIngest -benchtime 2000x -timeout 30m ./test/integration/
//
// (2,000,000 flows). The rollup of every record and the flow indexes'
// summaries (storetest.Housekeep) are done before the clock stops.
// Reported: records/s, and the PostgreSQL server's and the test
// process's (agent and controller) CPU per record while the clock runs.
func BenchmarkPostgresFlowIngest(b *testing.B) {
	for _, agents := range []int{1, 2} {
		b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) { postgresFlowIngest(b, agents) })
	}
}

func postgresFlowIngest(b *testing.B, agents int) {
	pc, err := postgres.ParseDSN(pgtest.DSN(b), "")
	if err != nil {
		b.Fatal(err)
	}
	key := make([]byte, postgres.KeySize)
	rand.Read(key)
	pg, err := postgres.Open(context.Background(), postgres.Config{Pool: pc, CAKeyKey: key})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pg.Close() })
	var srv0, self0, srv, self time.Duration
	base := time.Now()
	n := flowIngest(b, 1000, agents, base, time.Millisecond, ingestHooks{
		started: func() { srv0, self0 = pgtest.ServerCPU(b), processCPU() },
		finish: func() {
			storetest.Housekeep(b, pg, base.Add(time.Duration(b.N)*time.Millisecond+time.Second))
			srv, self = pgtest.ServerCPU(b)-srv0, processCPU()-self0
		},
	}, func(c *controller.Config) {
		c.AgentFlowRate = -1
		c.Store = pg
	})
	// Every record stored, once (a record dropped as not local to its
	// agent's node would pass for a fast one).
	if _, flows, err := pg.EventStoreSize(context.Background()); err != nil || flows != int64(n) {
		b.Fatalf("%d flows stored (%v), want %d", flows, err, n)
	}
	b.ReportMetric(float64(srv.Microseconds())/float64(n), "server-µs/record")
	b.ReportMetric(float64(self.Microseconds())/float64(n), "go-µs/record")
}

// ingestHooks are flowIngest's: started runs as the clock starts (the
// batches made, the agent connected), finish after the last ack, before
// the clock stops. Either may be nil.
type ingestHooks struct {
	started, finish func()
}

// processCPU is the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// flowIngest sends b.N batches of size records, timed from base step
// apart, through the streams of agents agents (1 or 2: node-a's, and
// node-b's, each every other batch; twoNodes' records have an end on
// both nodes), reports records/s and returns the number of records.
func flowIngest(b *testing.B, size, agents int, base time.Time, step time.Duration, hooks ingestHooks, opts ...harnessOpt) int {
	h := newHarness(b, opts...)
	h.Apply(twoNodes, sshAlert)
	// Batches are made before the clock starts: the agent's
	// encoding is not the controller's cost.
	batches := make([]*pb.FlowBatch, b.N)
	for i := range batches {
		batch := &pb.FlowBatch{Seq: uint64(i/agents + 1), SpoolId: 1}
		at := base.Add(time.Duration(i) * step)
		for j := range size {
			r := sshAttempt(uint32(1024+j%60000), at)
			if i%agents == 1 {
				// node-b's records are its client's, sent.
				r.Direction = uint32(ruleset.Egress)
			}
			if j%50 != 0 {
				r.DstPort, r.Verdict = 8080, 1
			}
			batch.Records = append(batch.Records, r)
		}
		batches[i] = batch
	}
	srcs := make([]*benchFlows, agents)
	for i, node := range []string{"node-a", "node-b"}[:agents] {
		want := (b.N - i + agents - 1) / agents
		srcs[i] = &benchFlows{batches: make(chan *pb.FlowBatch, want), window: make(chan struct{}, 8), done: make(chan struct{}), want: want}
		if want == 0 {
			close(srcs[i].done)
		}
		a := h.startAgent(node, h.Token(node, time.Hour), nil, nil, withFlows(srcs[i]))
		h.waitApplied(a)
	}
	b.ResetTimer()
	if hooks.started != nil {
		hooks.started()
	}
	start := time.Now()
	for i, batch := range batches {
		srcs[i%agents].batches <- batch
	}
	timeout := time.After(10 * time.Minute)
	for _, src := range srcs {
		select {
		case <-src.done:
		case <-timeout:
			b.Fatalf("%d of %d batches acked after 10 minutes", src.acked, src.want)
		}
	}
	if hooks.finish != nil {
		hooks.finish()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	for _, src := range srcs {
		if len(src.failed) > 0 {
			b.Fatalf("%d batches refused, first: %s", len(src.failed), src.failed[0])
		}
	}
	b.ReportMetric(float64(b.N*size)/elapsed.Seconds(), "records/s")
	return b.N * size
}
