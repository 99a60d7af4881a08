package flows

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
)

// syntheticEvents builds n raw ring records (struct eg_flow_event, 80
// bytes) as the datapath writes them: mostly new flows (distinct source
// ports), one in eight a repeated denied attempt, one in sixteen IPv6.
func syntheticEvents(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		b := make([]byte, 80)
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(1000+i/100))
		family, verdict, sport, dport := byte(4), byte(1), uint16(1024+i%60000), uint16(443)
		if i%8 == 0 {
			verdict, sport, dport = 2, 40000, 22
		}
		if i%16 == 1 {
			family = 6
		}
		copy(b[8:], []byte{10, 250, byte(i >> 16), byte(i >> 8)})
		copy(b[24:], []byte{10, 250, 1, 2})
		if family == 6 {
			b[8], b[9], b[24], b[25] = 0xfd, 0x0e, 0xfd, 0x0e
		}
		le.PutUint32(b[40:], 3)     // ifindex
		le.PutUint32(b[44:], 1)     // endpoint
		le.PutUint32(b[48:], 400)   // src identity
		le.PutUint32(b[52:], 300)   // dst identity
		le.PutUint32(b[56:], 7)     // rule
		le.PutUint32(b[64:], 74)    // length
		le.PutUint16(b[68:], sport) // src port
		le.PutUint16(b[70:], dport) // dst port
		b[72], b[73], b[75] = family, 6, verdict
		out[i] = b
	}
	return out
}

// BenchmarkDecodeAggregate: the agent's event path in user space, on one
// core: decode a ring record and fold it into the aggregator. Target >= 1M
// events/s.
func BenchmarkDecodeAggregate(b *testing.B) {
	recs := syntheticEvents(1 << 16)
	clock := datapath.NewStaticClock(250, 1000, time.Now())
	p := NewPipeline(PipelineConfig{MaxFlows: 1 << 20})
	var ev datapath.FlowEvent
	start := time.Now()
	n := 0
	for b.Loop() {
		if err := datapath.DecodeEvent(recs[n%len(recs)], clock, &ev); err != nil {
			b.Fatal(err)
		}
		p.Handle(&ev)
		n++
		if n%(1<<16) == 0 {
			p.agg.Flush() // as the flush interval does
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
}
