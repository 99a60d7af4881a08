package datapath

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// The benchmarks run the programs with BPF_PROG_TEST_RUN and report the
// time the kernel measured for the program alone (ns/op), not the syscall.
//
// Two methods, reported side by side:
//
//   - BenchmarkVerdict repeats one packet 1000 times per test run, hot in
//     cache, as the README's verdict figures are measured. A repeated SYN
//     would be established after its first run, so for "new-allowed" the
//     datapath is loaded with synExpiresAtOnce: each repetition finds only
//     an expired conntrack entry and does the whole new-flow work (policy
//     probes, conntrack write, event). "empty" is a program that returns at
//     once; the targets are ns/op over it.
//   - BenchmarkVerdictCold runs one packet per test run (new-allowed with a
//     fresh source port each time: a true conntrack miss and insert). Each
//     run follows a syscall, so caches are cold: an upper bound.
//
// ns/op is the kernel's time per program run: for BenchmarkVerdict the
// median over calls of each call's mean over 1000 runs; for
// BenchmarkVerdictCold (one run per call, coarsely quantized) the mean.
//
// Events are written as in production (deny events not rate-limited here,
// so every denied packet pays for its event); the ring is drained between
// test runs, outside the measured time.
//
// rules=N is the number of policy entries on the endpoint; the ipcache is
// the same in both cases (BenchmarkVerdictIPCache varies it).

// benchEndpoint is the endpoint on the benchmark namespace's loopback:
// BPF_PROG_TEST_RUN without a context runs on loopback (ifindex 1).
func benchRuleSet(rules, prefixes int) *ruleset.RuleSet {
	rs := &ruleset.RuleSet{
		Node:      "bench",
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "lo", Identity: idWeb}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: pfx(web4 + "/32"), Identity: idWeb}, {Prefix: pfx(web6 + "/128"), Identity: idWeb}},
		Rules:     []ruleset.RuleName{{ID: 1, Name: "bench/allow"}},
	}
	// Peer identities 1000.., each a /32 in 10.250.128.0/17 and a /128 in
	// fd0e:210::/112 (bench6Peer), so the ipcache holds `prefixes`
	// entries of each family.
	for i := range prefixes {
		a := [4]byte{10, 250, byte(128 + i/256), byte(i % 256)}
		rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{
			Prefix:   pfx(fmt.Sprintf("%d.%d.%d.%d/32", a[0], a[1], a[2], a[3])),
			Identity: ruleset.Identity(1000 + i),
		}, ruleset.IPCacheEntry{
			Prefix:   pfx(fmt.Sprintf("fd0e:210::%x/128", i)),
			Identity: ruleset.Identity(1000 + i),
		})
	}
	// rules entries: peers x ports, all allows; the benchmark's allowed
	// flow is peer 1000 to port 443.
	for i := range rules {
		rs.Entries = append(rs.Entries, ruleset.Entry{
			Endpoint: 1, Direction: ruleset.Ingress, Peer: ruleset.Identity(1000 + i%max(prefixes, 1)),
			Protocol: ruleset.ProtocolTCP, Port: uint16(443 + i/max(prefixes, 1)), Verdict: ruleset.VerdictAllowed, Rule: 1,
		})
	}
	return rs
}

type benchEnv struct {
	h     *harness
	empty *ebpf.Program
}

func newBenchEnv(b *testing.B, rs *ruleset.RuleSet, synExpiresAtOnce bool) *benchEnv {
	h := newHarness(b, Config{Logger: zap.NewNop(), DenyEventsPerSecond: 1 << 30, DenyEventsBurst: 1 << 30, synExpiresAtOnce: synExpiresAtOnce})
	h.ifindex["lo"] = 1
	h.apply(rs)
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "eg_bench_empty", Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { empty.Close() })
	return &benchEnv{h: h, empty: empty}
}

// measure runs prog on packet(i), repeat times per test run, on a thread
// inside the benchmark namespace, and reports the kernel's mean time per
// program run as ns/op.
func (e *benchEnv) measure(b *testing.B, prog *ebpf.Program, repeat int, packet func(i int) []byte) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(e.h.d.ns); err != nil {
		b.Fatal(err)
	}
	defer netns.Set(orig)

	var per []time.Duration
	for i := 0; b.Loop(); i++ {
		_, d, err := prog.Benchmark(packet(i), repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		per = append(per, d)
		// The agent's reader keeps up with the ring: drain it after
		// every call (1000 events at most), outside the measured time.
		b.StopTimer()
		e.h.drain()
		b.StartTimer()
	}
	if repeat == 1 {
		// One run per call: the kernel's figure per call is coarsely
		// quantized, so only the mean of many is meaningful.
		var total time.Duration
		for _, d := range per {
			total += d
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(len(per)), "ns/op")
		return
	}
	// The median of the per-call means: robust against the bursts of steal
	// time a shared VM has, which would otherwise dominate the mean.
	slices.Sort(per)
	b.ReportMetric(float64(per[len(per)/2].Nanoseconds()), "ns/op")
}

// verdictCases runs the four cases of BenchmarkVerdict and
// BenchmarkVerdictCold, IPv4 (as rules=N) and IPv6 (as ipv6/rules=N).
func verdictCases(b *testing.B, repeat int) {
	for _, v6 := range []bool{false, true} {
		for _, rules := range []int{10, 50000} {
			benchVerdictCase(b, repeat, rules, v6)
		}
	}
}

func benchVerdictCase(b *testing.B, repeat, rules int, v6 bool) {
	peer, web, mk, name, sportOff := "10.250.128.0", web4, tcp4, fmt.Sprintf("rules=%d", rules), 34 // identity 1000, allowed to 443
	if v6 {
		peer, web, mk, name, sportOff = "fd0e:210::", web6, tcp6, fmt.Sprintf("ipv6/rules=%d", rules), 54
	}
	established := mk(peer, web, 1, 443, tcpACK)
	denied := mk(peer, web, 2, 80, tcpSYN)
	newFlow := mk(peer, web, 1024, 443, tcpSYN)
	newPort := func(i int) []byte {
		if repeat == 1 { // a fresh source port: a real conntrack miss
			binary.BigEndian.PutUint16(newFlow[sportOff:], uint16(1024+i%64000))
		}
		return newFlow
	}
	{
		b.Run(name, func(b *testing.B) {
			env := newBenchEnv(b, benchRuleSet(rules, 256), false)
			// The endpoint is in container mode: tc egress delivers to it,
			// tc ingress carries its replies.
			in, out := env.h.d.objs.EgTcEgress, env.h.d.objs.EgTcIngress
			if ret := env.h.run(in, "lo", mk(peer, web, 1, 443, tcpSYN)); ret != retPass {
				b.Fatalf("allowed SYN dropped: %d", ret)
			}
			if ret := env.h.run(out, "lo", mk(web, peer, 443, 1, tcpSYN|tcpACK)); ret != retPass {
				b.Fatalf("SYN-ACK dropped: %d", ret)
			}
			if ret := env.h.run(in, "lo", denied); ret != retDrop {
				b.Fatalf("denied SYN passed: %d", ret)
			}
			env.h.drain()
			if rules == 10 && !v6 {
				b.Run("empty", func(b *testing.B) {
					env.measure(b, env.empty, repeat, func(int) []byte { return established })
				})
			}
			b.Run("established", func(b *testing.B) {
				env.measure(b, in, repeat, func(int) []byte { return established })
			})
			b.Run("new-allowed", func(b *testing.B) {
				envNew := env
				if repeat > 1 {
					// Repeated SYNs must stay new flows (see the top).
					envNew = newBenchEnv(b, benchRuleSet(rules, 256), true)
				}
				envNew.measure(b, envNew.h.d.objs.EgTcEgress, repeat, newPort)
			})
			b.Run("new-denied", func(b *testing.B) {
				env.measure(b, in, repeat, func(int) []byte { return denied })
			})
		})
	}
}

// BenchmarkVerdict: the cost of a verdict, by path, at 10 and 50,000 rules,
// hot (see the comment at the top).
func BenchmarkVerdict(b *testing.B) { verdictCases(b, 1000) }

// BenchmarkVerdictCold: the same, one packet per test run.
func BenchmarkVerdictCold(b *testing.B) { verdictCases(b, 1) }

// BenchmarkVerdictIPCache: the new-flow cost as the ipcache grows (the LPM
// trie is the expensive part of a new flow; established flows never look
// at it).
func BenchmarkVerdictIPCache(b *testing.B) {
	for _, prefixes := range []int{10, 10000} {
		b.Run(fmt.Sprintf("prefixes=%d/new-denied", prefixes), func(b *testing.B) {
			env := newBenchEnv(b, benchRuleSet(10, prefixes), false)
			denied := tcp4("10.250.128.0", web4, 2, 80, tcpSYN)
			env.measure(b, env.h.d.objs.EgTcEgress, 1000, func(int) []byte { return denied })
		})
	}
}

// BenchmarkApply: the time from Apply to the new rule set being enforced,
// for a change between two 10,000-rule sets. Each change is isolated (the
// background preparation of the next generation finishes before the timer
// restarts), as an operator's change would be.
func BenchmarkApply(b *testing.B) {
	h := newHarness(b, Config{Logger: zap.NewNop()})
	a, c := benchRuleSet(10000, 1000), benchRuleSet(10000, 1000)
	for i := range c.Entries {
		c.Entries[i].Port += 1000
	}
	h.apply(a)
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		rs := a
		if i%2 == 0 {
			rs = c
		}
		res, err := h.d.Apply(rs)
		if err != nil {
			b.Fatal(err)
		}
		total += res.Duration
		b.StopTimer()
		h.d.waitPrepared()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/apply")
}

// waitPrepared blocks until the background preparation of the next
// generation is done, leaving its result for the next Apply.
func (d *Datapath) waitPrepared() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.preparing == nil {
		return
	}
	p := <-d.preparing
	ch := make(chan *prepared, 1)
	ch <- p
	d.preparing = ch
}

// BenchmarkDriftCheck: one drift check (datapath.Check, without repair)
// of a datapath with one interface, at 10 and 50,000 policy entries (and
// 1,000 ipcache prefixes): cheap, as every --datapath-check-interval
// (links, generation word, map-of-maps slots, each inner map's checksum),
// and full, as every --datapath-full-check-interval (every entry compared,
// and the pins).
func BenchmarkDriftCheck(b *testing.B) {
	for _, rules := range []int{10, 50000} {
		h := newHarness(b, Config{Logger: zap.NewNop()})
		h.ifindex["lo"] = 1
		rs := benchRuleSet(rules, 1000)
		for i := range rs.Entries {
			rs.Entries[i].Port = uint16(443 + 2*(i/1000)) // every other port: exact entries, no ranges
		}
		h.apply(rs)
		for _, m := range h.d.Status().Maps {
			b.Logf("%s: %d entries", m.Name, m.Entries)
		}
		for _, full := range []bool{false, true} {
			name := fmt.Sprintf("rules=%d/cheap", rules)
			if full {
				name = fmt.Sprintf("rules=%d/full", rules)
			}
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					ds, err := h.d.Check(CheckOptions{Full: full})
					if err != nil || len(ds) != 0 {
						b.Fatalf("Check: %v, %v", ds, err)
					}
				}
			})
		}
	}
}

// BenchmarkVerdictContended: one established IPv4 flow's two directions at
// once, each on a CPU of its own, as a stream's data and its ACKs run
// (issue 23): what the entry's lines moving between the CPUs cost. Each
// side repeats its packet 1000 times per test run, b.N runs; ns/op is the
// mean of the two sides' medians over their runs (orig-ns/op and
// reply-ns/op each side's). The sides start together and run about as long,
// so they overlap for most of their runs.
func BenchmarkVerdictContended(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs")
	}
	env := newBenchEnv(b, benchRuleSet(10, 256), false)
	peer := "10.250.128.0" // identity 1000, allowed to 443
	in, out := env.h.d.objs.EgTcEgress, env.h.d.objs.EgTcIngress
	if ret := env.h.run(in, "lo", tcp4(peer, web4, 1, 443, tcpSYN)); ret != retPass {
		b.Fatalf("allowed SYN dropped: %d", ret)
	}
	if ret := env.h.run(out, "lo", tcp4(web4, peer, 443, 1, tcpSYN|tcpACK)); ret != retPass {
		b.Fatalf("SYN-ACK dropped: %d", ret)
	}
	env.h.drain()
	sides := []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
	}{
		{"orig", in, tcp4(peer, web4, 1, 443, tcpACK)},
		{"reply", out, tcp4(web4, peer, 443, 1, tcpACK)},
	}
	n := b.N
	medians := make([]time.Duration, len(sides))
	errs := make([]error, len(sides))
	var start, done sync.WaitGroup
	start.Add(1)
	for i, s := range sides {
		done.Add(1)
		go func() {
			defer done.Done()
			// The thread's CPU and namespace are changed and never
			// restored: it stays locked, and ends with the goroutine.
			runtime.LockOSThread()
			var cpus unix.CPUSet
			cpus.Set(i)
			if err := unix.SchedSetaffinity(0, &cpus); err != nil {
				errs[i] = err
				return
			}
			if err := netns.Set(env.h.d.ns); err != nil {
				errs[i] = err
				return
			}
			start.Wait()
			per := make([]time.Duration, 0, n)
			for range n {
				_, d, err := s.prog.Benchmark(s.pkt, 1000, nil)
				if err != nil {
					errs[i] = err
					return
				}
				per = append(per, d)
			}
			slices.Sort(per)
			medians[i] = per[len(per)/2]
		}()
	}
	b.ResetTimer()
	start.Done()
	done.Wait()
	for i, err := range errs {
		if err != nil {
			b.Fatalf("%s side: %v", sides[i].name, err)
		}
	}
	for i, s := range sides {
		b.ReportMetric(float64(medians[i].Nanoseconds()), s.name+"-ns/op")
	}
	b.ReportMetric(float64(medians[0]+medians[1])/2, "ns/op")
}
