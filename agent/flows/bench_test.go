package flows

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
)

// syntheticEvents builds n raw ring records as the datapath writes them
// (struct eg_flow_event4, 56 bytes, for IPv4; struct eg_flow_event, 80
// bytes, for IPv6): mostly new flows (distinct source ports), one in eight
// a repeated denied attempt, one in sixteen IPv6.
func syntheticEvents(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		family, verdict, sport, dport := byte(4), byte(1), uint16(1024+i%60000), uint16(443)
		if i%8 == 0 {
			verdict, sport, dport = 2, 40000, 22
		}
		if i%16 == 1 {
			family = 6
		}
		src, dst := []byte{10, 250, byte(i >> 16), byte(i >> 8)}, []byte{10, 250, 1, 2}
		size, addrLen := 56, 4
		if family == 6 {
			size, addrLen = 80, 16
			src = append([]byte{0xfd, 0x0e}, make([]byte, 14)...)
			dst = append([]byte{0xfd, 0x0e}, make([]byte, 14)...)
			src[15], dst[15] = byte(i), 2
		}
		b := make([]byte, size)
		le := binary.LittleEndian
		le.PutUint64(b[0:], uint64(1000+i/100))
		copy(b[8:], src)
		copy(b[8+addrLen:], dst)
		r := b[8+2*addrLen:]        // the fields after the addresses
		le.PutUint32(r[0:], 3)      // ifindex
		le.PutUint32(r[4:], 1)      // endpoint
		le.PutUint32(r[8:], 400)    // src identity
		le.PutUint32(r[12:], 300)   // dst identity
		le.PutUint32(r[16:], 7)     // rule
		le.PutUint32(r[24:], 74)    // length
		le.PutUint16(r[28:], sport) // src port
		le.PutUint16(r[30:], dport) // dst port
		r[32], r[33], r[35] = family, 6, verdict
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
