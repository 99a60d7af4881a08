//go:build throughput

package throughput

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// realPathRounds is how many interleaved rounds BenchmarkRealPath runs.
const realPathRounds = 6

// progStat is a program's cumulative cost as the kernel counts it with
// bpf_stats on (run_time_ns, run_cnt in bpftool prog show).
type progStat struct {
	runtime time.Duration
	runs    uint64
}

// phaseCost is one program's cost over one measured phase.
type phaseCost struct {
	nsPerRun   float64 // kernel time per run (per packet)
	runsPerSec float64 // packets the program saw per second
	coreShare  float64 // kernel time over wall time: the share of one core
}

// BenchmarkRealPath: what an enforcing node costs real traffic, as the
// kernel counts it (issue 23), beside the hot-cache prog.Run figures of
// BenchmarkVerdict. Topology as BenchmarkThroughput (client -- node --
// server namespaces, the agent binary enforcing a one-rule rule set on the
// server's host-side veth, its flow log written). With bpf_stats enabled
// for the run (BPF_ENABLE_STATS, undone when the benchmark ends), each
// round measures, with no program and with the agent, in rotated order:
// a 4 s iperf3 TCP stream and 2 s of 1-byte request/response on one
// connection (established traffic only). Reported per program and
// phase: ns per run, runs (packets) per second and the share of a core;
// and the medians of each round's stream and request/response ratio over
// that round's run with no program. Run with `sudo make bench-realpath`.
//
// Each round also runs the agent with an empty program (eg_bench_floor,
// one instruction and a return) attached behind ours on every hook ours
// is on: what bpf_stats counts for any program at all on this machine
// (the dispatch and its own two clock reads, a large share of the figure
// in a VM whose clock is kvm-clock). Ours and the floor then run on the
// same packets, and "over the floor" is ours minus it, per round. The
// probe runs right after ours, on lines ours just warmed, so its figure is
// a warm floor and ours over it an upper bound of ours' own work. That run
// is kept out of the ratios (it carries the probe's cost).
func BenchmarkRealPath(b *testing.B) {
	testutil.RequirePrivileged(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("skipped: iperf3 is not installed (apt-get install iperf3)")
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf_stats: %v", err)
	}
	b.Cleanup(func() { stats.Close() })

	node := topo.NewNode(b, "node-t", 1) // the name ruleSet gives its rule set
	client := node.AddWorkload(b, "client", 1)
	server := node.AddWorkload(b, "server", 2)
	server.Listen(b, rrPort)
	iperfServer := topo.Start(b, "iperf3-server", server.NS.Exec(context.Background(), "iperf3", "-s", "-p", fmt.Sprint(iperfPort)))
	bin := topo.BuildBinary(b, "agent/cmd/eastguard-agent", b.TempDir())
	b.Cleanup(func() { datapath.Uninstall(node.BPFFSDir, nil) })

	floorProg := emptyTCXProgram(b)
	type round struct{ stream, rr float64 }
	bare := make([]round, 0, realPathRounds)
	enforced := make([]round, 0, realPathRounds)
	costs := map[string][]phaseCost{}   // "program phase" -> per round, agent runs
	overFloor := map[string][]float64{} // "program phase" -> ns over the floor, per round
	// measure runs a round's two phases; with stats (the programs'
	// counters), it adds each program's cost over a phase to into.
	measure := func(stats func() map[string]progStat, into func(phase string, cost map[string]phaseCost)) round {
		phase := func(name string, run func() float64) float64 {
			var before map[string]progStat
			if stats != nil {
				before = stats()
			}
			start := time.Now()
			v := run()
			wall := time.Since(start)
			if stats != nil {
				cost := map[string]phaseCost{}
				for prog, a := range stats() {
					d := progStat{a.runtime - before[prog].runtime, a.runs - before[prog].runs}
					if d.runs == 0 {
						continue
					}
					cost[prog] = phaseCost{
						nsPerRun:   float64(d.runtime.Nanoseconds()) / float64(d.runs),
						runsPerSec: float64(d.runs) / wall.Seconds(),
						coreShare:  d.runtime.Seconds() / wall.Seconds(),
					}
				}
				into(name, cost)
			}
			return v
		}
		return round{
			stream: phase("stream", func() float64 { return iperf(b, client, server, iperfServer) }),
			rr:     phase("rr", func() float64 { return requestResponse(b, client, server.Addr4, rrPort, false) }),
		}
	}
	keep := func(phase string, cost map[string]phaseCost) {
		for prog, c := range cost {
			costs[prog+" "+phase] = append(costs[prog+" "+phase], c)
		}
	}
	keepOverFloor := func(phase string, cost map[string]phaseCost) {
		floor, ok := cost[floorProg.name]
		if !ok {
			b.Fatalf("bpf_stats counted no run of %s in the %s phase", floorProg.name, phase)
		}
		for prog, c := range cost {
			if prog != floorProg.name {
				overFloor[prog+" "+phase] = append(overFloor[prog+" "+phase], c.nsPerRun-floor.nsPerRun)
			}
		}
		overFloor["floor "+phase] = append(overFloor["floor "+phase], floor.nsPerRun)
	}
	for r := range realPathRounds {
		// Alternate which goes first: a drift of the shared machine
		// within a round then favours neither.
		for _, withAgent := range [][]bool{{false, true}, {true, false}}[r%2] {
			if !withAgent {
				res := measure(nil, nil)
				bare = append(bare, res)
				fmt.Fprintf(os.Stdout, "round %d agent=false stream %6.2f Gbit/s  rr %8.0f/s\n", r+1, res.stream/1e9, res.rr)
				continue
			}
			agent := startAgent(b, node, bin, ruleSet(client, server, 3)) // the client allowed on the bench's ports: one rule
			agentStats := func() map[string]progStat { return attachedStats(b, node.BPFFSDir) }
			res := measure(agentStats, keep)
			enforced = append(enforced, res)
			fmt.Fprintf(os.Stdout, "round %d agent=true  stream %6.2f Gbit/s  rr %8.0f/s\n", r+1, res.stream/1e9, res.rr)
			detach := floorProg.attachBehind(b, node)
			measure(func() map[string]progStat {
				st := agentStats()
				st[floorProg.name] = floorProg.stats(b)
				return st
			}, keepOverFloor)
			detach()
			stopAgent(b, node, agent)
		}
	}
	if len(costs) == 0 {
		b.Fatal("bpf_stats counted no run of the attached programs: the measurement did not see them")
	}

	ratio := func(f func(round) float64) float64 {
		v := make([]float64, len(bare))
		for i := range bare {
			v[i] = f(enforced[i]) / f(bare[i])
		}
		return medianOf(v)
	}
	streamRatio := ratio(func(r round) float64 { return r.stream })
	rrRatio := ratio(func(r round) float64 { return r.rr })
	var out strings.Builder
	fmt.Fprintf(&out, "\n%-22s %10s %14s %12s\n", "program phase", "ns/packet", "packets/s", "core share")
	for _, key := range slices.Sorted(maps.Keys(costs)) {
		cs := costs[key]
		ns := medianOf(project(cs, func(c phaseCost) float64 { return c.nsPerRun }))
		pps := medianOf(project(cs, func(c phaseCost) float64 { return c.runsPerSec }))
		share := medianOf(project(cs, func(c phaseCost) float64 { return c.coreShare }))
		fmt.Fprintf(&out, "%-22s %10.0f %14.0f %11.2f%%\n", key, ns, pps, 100*share)
		metric := strings.ReplaceAll(key, " ", "-")
		b.ReportMetric(ns, metric+"-ns/packet")
		b.ReportMetric(pps, metric+"-packets/s")
		b.ReportMetric(100*share, metric+"-core-%")
	}
	fmt.Fprintf(&out, "\n%-22s %10s   (the agent's run with %s behind its programs)\n", "program phase", "ns/packet", floorProg.name)
	for _, key := range slices.Sorted(maps.Keys(overFloor)) {
		ns := medianOf(overFloor[key])
		what := "over the floor"
		if strings.HasPrefix(key, "floor ") {
			what = "the floor itself"
		}
		fmt.Fprintf(&out, "%-22s %10.0f   %s\n", key, ns, what)
		b.ReportMetric(ns, strings.ReplaceAll(key, " ", "-")+"-ns/packet-over-floor")
	}
	fmt.Fprintf(&out, "stream %.2f Gbit/s with no program, ratio %.3f; request/response %.0f/s, ratio %.3f\n",
		medianOf(project(bare, func(r round) float64 { return r.stream }))/1e9, streamRatio,
		medianOf(project(bare, func(r round) float64 { return r.rr })), rrRatio)
	fmt.Fprintf(os.Stdout, "%s(%d interleaved rounds: medians over rounds; ratios are each round's over its run with no program)\n", out.String(), realPathRounds)
	b.ReportMetric(streamRatio, "stream-ratio")
	b.ReportMetric(rrRatio, "rr-ratio")
	for b.Loop() {
		// The rounds above are the benchmark; one iteration is enough.
	}
}

// attachedStats reads the kernel's counters of the programs behind the
// agent's pinned links under dir, by program name (a program attached
// at several links is counted once).
func attachedStats(b *testing.B, dir string) map[string]progStat {
	out := make(map[string]progStat)
	seen := make(map[ebpf.ProgramID]bool)
	for name, info := range agentLinks(b, dir) {
		if seen[info.Program] {
			continue
		}
		seen[info.Program] = true
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			b.Fatalf("program %d of link %s: %v", info.Program, name, err)
		}
		pi, err := prog.Info()
		if err != nil {
			prog.Close()
			b.Fatalf("program %d: %v", info.Program, err)
		}
		st, err := prog.Stats()
		prog.Close()
		if err != nil {
			b.Fatalf("program %s: run statistics: %v", pi.Name, err)
		}
		s := out[pi.Name]
		out[pi.Name] = progStat{s.runtime + st.Runtime, s.runs + st.RunCount}
	}
	return out
}

// agentLinks reads the links the agent pinned under dir, by pin name.
func agentLinks(b *testing.B, dir string) map[string]*link.Info {
	entries, err := os.ReadDir(filepath.Join(dir, "links"))
	if err != nil {
		b.Fatalf("the agent's links: %v", err)
	}
	out := make(map[string]*link.Info, len(entries))
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "links", e.Name()), nil)
		if err != nil {
			b.Fatalf("pinned link %s: %v", e.Name(), err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			b.Fatalf("link %s: %v", e.Name(), err)
		}
		out[e.Name()] = info
	}
	if len(out) == 0 {
		b.Fatalf("no pinned link of the agent's under %s", dir)
	}
	return out
}

// floorProbe is an empty tcx program: what bpf_stats counts for any
// program at all.
type floorProbe struct {
	name string
	prog *ebpf.Program
}

func emptyTCXProgram(b *testing.B) floorProbe {
	const name = "eg_bench_floor"
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT
	})
	if err != nil {
		b.Fatalf("load %s: %v", name, err)
	}
	b.Cleanup(func() { prog.Close() })
	return floorProbe{name, prog}
}

func (f floorProbe) stats(b *testing.B) progStat {
	st, err := f.prog.Stats()
	if err != nil {
		b.Fatalf("%s: run statistics: %v", f.name, err)
	}
	return progStat{st.Runtime, st.RunCount}
}

// attachBehind attaches the probe at the tail of every hook the agent's
// pinned links are on (in the node's namespace, where their ifindexes
// are), behind the agent's programs: ours pass the benchmark's packets,
// so the probe sees each of them, and the agent does not report a
// program ahead of its own. It returns the detach.
func (f floorProbe) attachBehind(b *testing.B, node *topo.Node) (detach func()) {
	infos := agentLinks(b, node.BPFFSDir)
	var links []link.Link
	detach = func() {
		for _, l := range links {
			l.Close()
		}
	}
	err := node.NS.Do(func() error {
		for name, info := range infos {
			tcx := info.TCX()
			if tcx == nil {
				return fmt.Errorf("link %s is not a tcx link", name)
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: int(tcx.Ifindex), Program: f.prog,
				Attach: ebpf.AttachType(tcx.AttachType), Anchor: link.Tail()})
			if err != nil {
				return fmt.Errorf("attach %s behind link %s: %w", f.name, name, err)
			}
			links = append(links, l)
		}
		return nil
	})
	if err != nil {
		detach()
		b.Fatal(err)
	}
	return detach
}

func project[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func medianOf(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
