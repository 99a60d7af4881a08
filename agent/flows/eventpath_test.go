package flows

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/netns"
)

// countingSink counts the flows the pipeline hands over.
type countingSink struct{ n atomic.Uint64 }

func (c *countingSink) Write(f []Flow) error { c.n.Add(uint64(len(f))); return nil }

// synFrame writes into b (54 bytes) an Ethernet+IPv4+TCP SYN from
// 10.250.1.2:sport to dst:443.
func synFrame(b []byte, dstMAC, srcMAC net.HardwareAddr, dst [4]byte, sport uint16) {
	clear(b)
	copy(b[0:], dstMAC)
	copy(b[6:], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], []byte{10, 250, 1, 2})
	copy(ip[16:], dst[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	tcp := b[34:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], 443)
	tcp[12], tcp[13] = 5<<4, 0x02
}

// BenchmarkEventPath: new flows end to end through the datapath, paced
// at 100,000 per second: real frames (TCP SYNs, each a new 5-tuple) are
// sent with AF_PACKET into a veth whose peer is a workload interface the
// datapath enforces, so every one crosses the attached tcx program
// (policy, conntrack insert, flow event) while the agent's reader and
// pipeline consume the ring. Reports the rate sent, events lost in the
// ring (target 0), events read and flows out of the pipeline.
func BenchmarkEventPath(b *testing.B) {
	testutil.RequirePrivileged(b)
	ns := netns.New(b, "evp")
	netns.Veth(b, ns, "inj", ns, "wl")
	var dp *datapath.Datapath
	var socks [2]int // one per injector
	var injMAC, wlMAC net.HardwareAddr
	var injIndex int
	err := ns.Do(func() error {
		inj, err := net.InterfaceByName("inj")
		if err != nil {
			return err
		}
		wl, err := net.InterfaceByName("wl")
		if err != nil {
			return err
		}
		injMAC, wlMAC, injIndex = inj.HardwareAddr, wl.HardwareAddr, inj.Index
		// Raw packet sockets: frames go out of inj as written, past the
		// qdisc, and arrive at wl's tc ingress.
		for i := range socks {
			if socks[i], err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0); err != nil {
				return err
			}
			if err := unix.SetsockoptInt(socks[i], unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
				return err
			}
		}
		// Every frame is a flow of its own, of one endpoint, and none
		// expires within a run of b.N: the conntrack holds them all
		// (5 runs of 100,000), and the endpoint may take all of it.
		dp, err = datapath.Open(datapath.Config{BPFFSDir: "/sys/fs/bpf/eg-evp-" + netns.Suffix(), Logger: zap.NewNop(),
			CTEntries: 1 << 19, CTEndpointPercent: 100})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		for _, s := range socks {
			unix.Close(s)
		}
		dp.Uninstall()
	})
	// wl is the workload's host-side interface: what arrives on its tc
	// ingress is the workload's egress, to peers in 10.250.128.0/17 on 443.
	rs := &ruleset.RuleSet{
		Node:      "n",
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "wl", Identity: 300}},
		IPCache: []ruleset.IPCacheEntry{
			{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300},
			{Prefix: netip.MustParsePrefix("10.250.128.0/17"), Identity: 400},
		},
		Entries: []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Egress, Peer: 400, Protocol: ruleset.ProtocolTCP,
			Port: 443, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules: []ruleset.RuleName{{ID: 1, Name: "bench/allow"}},
	}
	if res, err := dp.Apply(rs); err != nil || len(res.Pending) > 0 {
		b.Fatalf("apply: %+v, %v", res, err)
	}
	to := &unix.SockaddrLinklayer{Ifindex: injIndex, Protocol: 0x0008 /* htons(ETH_P_IP) */, Halen: 6}
	copy(to.Addr[:], wlMAC)

	const flows, rate, batch = 100000, 100000, 100 // per run, per second, frames per pacing step
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

		// Two injectors take turns batch by batch: a frame's send also
		// runs its receive processing (the program included) on the
		// sender's CPU, which one sender cannot do 100,000 times a
		// second on these machines.
		start := time.Now()
		var inj sync.WaitGroup
		for w, sock := range socks {
			inj.Go(func() {
				frame := make([]byte, 54)
				for sent := w * batch; sent < flows; sent += len(socks) * batch {
					if ahead := time.Until(start.Add(time.Duration(sent) * time.Second / rate)); ahead > 0 {
						time.Sleep(ahead)
					}
					for i := range batch {
						g := next + uint64(sent+i) // unique across runs: no conntrack hits
						synFrame(frame, wlMAC, injMAC, [4]byte{10, 250, 128 + byte(g>>16)&0x7f, byte(g >> 8)}, uint16(1024+g%256))
						if err := unix.Sendto(sock, frame, 0, to); err != nil {
							b.Errorf("send frame %d: %v", sent+i, err)
							return
						}
					}
				}
			})
		}
		inj.Wait()
		elapsed := time.Since(start)
		next += flows
		// Let the reader catch up (bounded), then stop.
		deadline := time.Now().Add(10 * time.Second)
		for p.Stats().Events < flows && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		after, _ := dp.Counters()
		lost := after.Get(datapath.CounterEventsLost) - before.Get(datapath.CounterEventsLost)
		egressAllowed := datapath.VerdictCounter(ruleset.VerdictAllowed, ruleset.Egress)
		allowed := after.Get(egressAllowed) - before.Get(egressAllowed)
		b.ReportMetric(float64(flows)/elapsed.Seconds(), "flows/s")
		b.ReportMetric(float64(lost), "lost")
		b.ReportMetric(float64(p.Stats().Events), "events-read")
		b.ReportMetric(float64(sink.n.Load()), "flows-out")
		if allowed != flows {
			b.Fatalf("%d of %d frames admitted as new flows by the datapath", allowed, flows)
		}
		if lost > 0 || p.Stats().Events != flows {
			b.Logf("%d of %d events read, %d lost in the ring", p.Stats().Events, flows, lost)
		}
	}
}
