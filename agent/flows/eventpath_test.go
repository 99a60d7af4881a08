package flows

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/test/netns"
)

// countingSink counts the flows the pipeline hands over.
type countingSink struct{ n atomic.Uint64 }

func (c *countingSink) Write(f []Flow) error { c.n.Add(uint64(len(f))); return nil }

// synFrame is an Ethernet+IPv4+TCP SYN from src:sport to 10.250.1.2:443.
func synFrame(src [4]byte, sport uint16) []byte {
	b := make([]byte, 54)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], src[:])
	copy(ip[16:], []byte{10, 250, 1, 2})
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], 443)
	tcp[12], tcp[13] = 5<<4, 0x02
	return b
}

// BenchmarkEventPath: new flows through the real datapath at a paced
// 100,000 per second (crafted SYNs run through the attached program with
// BPF_PROG_TEST_RUN: conntrack inserts and flow events are real), while
// the agent's reader and pipeline consume the ring. Reports the rate
// achieved, events lost in the ring (target 0) and flows out of the
// pipeline.
func BenchmarkEventPath(b *testing.B) {
	testutil.RequirePrivileged(b)
	ns := netns.New(b, "evp")
	var dp *datapath.Datapath
	if err := ns.Do(func() error {
		var err error
		dp, err = datapath.Open(datapath.Config{BPFFSDir: "/sys/fs/bpf/eg-evp-" + netns.Suffix(), Logger: zap.NewNop()})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Uninstall() })
	rs := &ruleset.RuleSet{
		Node:      "n",
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "lo", Identity: 300}},
		IPCache: []ruleset.IPCacheEntry{
			{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300},
			{Prefix: netip.MustParsePrefix("10.250.128.0/17"), Identity: 400},
		},
		Entries: []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Peer: 400, Protocol: ruleset.ProtocolTCP,
			Port: 443, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules: []ruleset.RuleName{{ID: 1, Name: "bench/allow"}},
	}
	if _, err := dp.Apply(rs); err != nil {
		b.Fatal(err)
	}
	const flows, rate = 100000, 100000 // per run, per second
	var next uint64
	for b.Loop() {
		rd, err := dp.NewEventReader()
		if err != nil {
			b.Fatal(err)
		}
		sink := &countingSink{}
		p := NewPipeline(PipelineConfig{Sinks: []Sink{sink}})
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { rd.Run(ctx, p.Handle) })
		wg.Go(func() { p.Run(ctx) })
		before, _ := dp.Counters()

		start := time.Now()
		// Two injectors (the syscall per packet, not the datapath, limits
		// one), each sending batches of 500 paced to half the rate.
		var inj sync.WaitGroup
		for w := range 2 {
			inj.Go(func() {
				for sent := w * 500; sent < flows; sent += 1000 {
					if ahead := time.Until(start.Add(time.Duration(sent) * time.Second / rate)); ahead > 0 {
						time.Sleep(ahead)
					}
					passed, err := dp.RunProgram(true, 1, 500, func(i int) []byte {
						g := next + uint64(sent+i) // unique across runs: no conntrack hits
						return synFrame([4]byte{10, 250, 128 + byte(g>>16)&0x7f, byte(g >> 8)}, uint16(1024+g%256))
					})
					if err != nil || passed != 500 {
						b.Errorf("batch at %d: %d of 500 passed, %v", sent, passed, err)
						return
					}
				}
			})
		}
		inj.Wait()
		next += flows
		elapsed := time.Since(start)
		// Let the reader catch up (bounded), then stop.
		deadline := time.Now().Add(10 * time.Second)
		for p.Stats().Events < flows && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		after, _ := dp.Counters()
		lost := after.Get(datapath.CounterEventsLost) - before.Get(datapath.CounterEventsLost)
		b.ReportMetric(float64(flows)/elapsed.Seconds(), "flows/s")
		b.ReportMetric(float64(lost), "lost")
		b.ReportMetric(float64(p.Stats().Events), "events-read")
		b.ReportMetric(float64(sink.n.Load()), "flows-out")
		if lost > 0 || p.Stats().Events != flows {
			b.Logf("%d of %d events read, %d lost in the ring", p.Stats().Events, flows, lost)
		}
	}
}
