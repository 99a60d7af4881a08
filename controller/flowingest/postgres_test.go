package flowingest

import (
	"context"
	"crypto/rand"
	"os"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestPostgresTwoWriters: on a store that takes concurrent flow writers
// the ingester stores with two writers, node-a's batches by one and
// node-b's by the other. Each batch is sent twice, the second copy while
// the first is queued or being stored: it is stored once. Both nodes
// report the same SSH attempts (client on node-b to web on node-a, each
// seen at its end), stored side by side: they raise one alert.
func TestPostgresTwoWriters(t *testing.T) {
	pc, err := postgres.ParseDSN(pgtest.DSN(t), "")
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, postgres.KeySize)
	rand.Read(key)
	pg, err := postgres.Open(context.Background(), postgres.Config{Pool: pc, CAKeyKey: key, PartitionLookback: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ti := startIngesterOn(t, pg, Config{Now: func() time.Time { return testNow }})
	if len(ti.queues) != 2 {
		t.Fatalf("%d writers on PostgreSQL, want 2", len(ti.queues))
	}
	if ti.queueOf("node-a") == ti.queueOf("node-b") {
		t.Fatal("node-a's and node-b's batches go to the same writer: the test would not run two")
	}
	const batches, size = 20, 50
	var wg sync.WaitGroup
	errs := make(chan string, 4*batches)
	for _, node := range []string{"node-a", "node-b"} {
		a := ti.NewAgent(node, ti.log)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint64(1); seq <= batches; seq++ {
				b := &pb.FlowBatch{Seq: seq, SpoolId: 1}
				for i := range size {
					// node-a sees the attempts arrive at web, node-b
					// leave client.
					r := flow(ruleset.Ingress, "10.250.33.2", "10.250.17.2", "")
					if node == "node-b" {
						r.Direction = uint32(ruleset.Egress)
					}
					r.SrcPort = uint32(1024 + int(seq)*size + i)
					b.Records = append(b.Records, r)
				}
				acks := make(chan *pb.FlowAck, 2)
				for range 2 {
					if ack := a.Submit(b, ruleNames, func(ack *pb.FlowAck) { acks <- ack }); ack != nil {
						errs <- node + ": batch refused: " + ack.GetError()
						return
					}
				}
				for range 2 {
					select {
					case ack := <-acks:
						a.Done()
						if ack.GetError() != "" {
							errs <- node + ": " + ack.GetError()
						}
					case <-time.After(time.Minute):
						errs <- node + ": batch not acked within a minute"
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	recs, err := pg.Flows(context.Background(), store.FlowQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2*batches*size {
		t.Errorf("%d flows stored, want %d (each batch once)", len(recs), 2*batches*size)
	}
	if got := promtest.ToFloat64(ti.m.flowBatches.WithLabelValues("duplicate")); got != 2*batches {
		t.Errorf("%v batches acked as duplicates, want %d", got, 2*batches)
	}
	alerts, err := pg.Alerts(context.Background(), store.AlertQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].Source != "client" || alerts[0].Destination != "web" {
		t.Errorf("alerts %+v, want one, client to web", alerts)
	}
}
