package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
)

// Simulated agents for BenchmarkPropagation1000Agents run in a child
// process (this test binary, re-run with the environment below), so that
// the benchmark measures the controller's memory alone.
const (
	envSimTokens = "EG_SIM_AGENT_TOKENS" // file of "node token" lines
	envSimAddr   = "EG_SIM_CONTROLLER"
	// envSimState is the directory the child keeps its agents' state
	// directories in: the benchmark's own temporary directory, removed by
	// the benchmark once the child has exited. (Under the child's own
	// t.TempDir, removing 10,000 of them outlasted the 30 s the child is
	// given to exit, and the killed child left them in /tmp.)
	envSimState = "EG_SIM_STATE_DIR"
	// EG_SIM_CPUPROFILE=FILE: the child's CPU profile, from the first op
	// (the parent signals it with SIGUSR1 once every agent synced) to the
	// end of the benchmark (the controller's is EG_BENCH_CPUPROFILE's).
	envSimCPUProfile = "EG_SIM_CPUPROFILE"
)

// benchPolicy is a benchmark's cluster: workloads(n) the n nodes' Workload
// documents, rules(n, port) the Policy document. A benchmark applies both
// once, then, at each op, the Policy alone with a new port, as an operator
// changing a policy does (egctl apply -f policy.yaml).
type benchPolicy struct {
	workloads func(n int) string
	rules     func(n, port int) string
}

func (p benchPolicy) all(n, port int) string { return p.workloads(n) + p.rules(n, port) }

// clusterPolicy is n nodes with one workload each, all allowed to reach
// each other on port: every node's rule set holds every workload's address
// (n ipcache entries).
var clusterPolicy = benchPolicy{
	workloads: func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: w%04d, labels: {role: app}}\n"+
				"spec: {node: node-%04d, interface: eg-w%04d, addresses: [10.%d.%d.%d]}\n---\n", i, i, i, 100+i/65536, i/256%256, i%256)
		}
		return b.String()
	},
	rules: func(_, port int) string {
		return fmt.Sprintf("apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: mesh}\nspec:\n  rules:\n"+
			"    - name: app-to-app\n      from: [{selector: {role: app}}]\n      to: [{selector: {role: app}}]\n      ports: [{protocol: TCP, port: %d}]\n", port)
	},
}

// BenchmarkPropagation1000Agents: time from an apply (validate, compile
// 1,000 nodes, commit) to the last of 1,000 simulated agents' acks over
// loopback mutual TLS, and the controller's memory per agent stream.
// Reported: ms-to-last-ack (the mean over the ops), max-ms-to-last-ack,
// ms-apply (of that, the apply call itself: parse, validate, compile,
// hash, commit), KB-per-stream (the controller's heap and stacks, after
// GC, over the idle baseline with the same policy loaded, divided by the
// streams) and goroutines-per-stream.
func BenchmarkPropagation1000Agents(b *testing.B) {
	benchPropagation(b, 1000, "node-%04d", clusterPolicy)
}

// appsPolicy is n nodes with one workload each, in apps of 100, app i
// allowed to reach app i+1 (the last the first) on port: each node's rule
// set holds its app's neighbours, about 200 addresses. (clusterPolicy's
// full mesh would put 10,000 addresses in each of 10,000 rule sets.)
var appsPolicy = benchPolicy{
	workloads: func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: w%05d, labels: {app: a%03d}}\n"+
				"spec: {node: node-%05d, interface: eg-w%05d, addresses: [10.%d.%d.%d]}\n---\n", i, i/100, i, i, 100+i/65536, i/256%256, i%256)
		}
		return b.String()
	},
	rules: func(n, port int) string {
		var b strings.Builder
		apps := (n + 99) / 100
		fmt.Fprintf(&b, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: chain}\nspec:\n  rules:\n")
		for a := range apps {
			fmt.Fprintf(&b, "    - name: a%03d-to-a%03d\n      from: [{selector: {app: a%03d}}]\n      to: [{selector: {app: a%03d}}]\n      ports: [{protocol: TCP, port: %d}]\n",
				a, (a+1)%apps, a, (a+1)%apps, port)
		}
		return b.String()
	},
}

// BenchmarkPropagation10000Agents is BenchmarkPropagation1000Agents at
// 10,000 agents with appsPolicy (issue 19: the last ack within 3 s, under
// 50 KB per stream); EG_BENCH_AGENTS=N runs it with N agents.
func BenchmarkPropagation10000Agents(b *testing.B) {
	n := 10000
	if v := os.Getenv("EG_BENCH_AGENTS"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 || n > 100000 {
			b.Fatalf("EG_BENCH_AGENTS=%q: want a number of agents from 1 to 100000", v)
		}
	}
	benchPropagation(b, n, "node-%05d", appsPolicy)
}

// benchPropagation runs agents simulated agents, named by nodeName, in a
// child process against an in-process controller, the policy made by
// policy, its rules with a new port at each op.
func benchPropagation(b *testing.B, agents int, nodeName string, policy benchPolicy) {
	if os.Getenv("EG_BENCH_HEAP") != "" {
		runtime.MemProfileRate = 8192 // finer than the default 512 KB: a stream's allocations are small
	}
	// acks tracks the newest version each node acked, and how many nodes
	// have reached the version waited for.
	var mu sync.Mutex
	acked := make(map[string]uint64, agents)
	var target uint64
	reached := 0
	all := make(chan struct{}, 1)
	h := newHarness(b, func(c *controller.Config) {
		c.Heartbeat = 10 * time.Second
		c.FlushInterval = time.Second
		// Every simulated agent comes from the one loopback address.
		c.AgentLimits = agentapi.Limits{MaxConns: 4 * agents, MaxConnsPerSource: 4 * agents, JoinRate: float64(agents), JoinBurst: agents}
		c.OnAck = func(a agentapi.Ack) {
			if !a.Applied {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if acked[a.Node] < target && a.Version >= target {
				if reached++; reached == agents {
					all <- struct{}{}
				}
			}
			acked[a.Node] = max(acked[a.Node], a.Version)
		}
	})
	// Only warnings are kept in memory (the progress logs count them): the
	// test's log entries, several per stream, are not the controller's
	// memory (a controller writes its logs out).
	h.LogLevel = zap.WarnLevel
	h.Restart()
	h.Apply(policy.all(agents, 8000))
	// waitAll waits until every node has acked at least version v.
	waitAll := func(v uint64, timeout time.Duration) {
		mu.Lock()
		target, reached = v, 0
		for _, got := range acked {
			if got >= v {
				reached++
			}
		}
		select {
		case <-all:
		default:
		}
		done := reached == agents
		mu.Unlock()
		if done {
			return
		}
		select {
		case <-all:
		case <-time.After(timeout):
			mu.Lock()
			defer mu.Unlock()
			b.Fatalf("only %d of %d agents acked version %d after %v; the controller: %s", reached, agents, v, timeout, controllerSummary(h))
		}
	}

	var tokens strings.Builder
	for i := range agents {
		node := fmt.Sprintf(nodeName, i)
		fmt.Fprintf(&tokens, "%s %s\n", node, h.Token(node, time.Hour))
	}
	tmp := b.TempDir() // removed after the child's exit: cleanups run after the deferred wait below
	tokFile := filepath.Join(tmp, "tokens")
	stateDir := filepath.Join(tmp, "agents")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte(tokens.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	base, baseStack := liveBytes()
	baseGoroutines := runtime.NumGoroutine()

	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^TestSimulatedAgents$", "-test.v")
	child.Env = append(os.Environ(), envSimTokens+"="+tokFile, envSimAddr+"="+h.Addr, envSimState+"="+stateDir)
	if os.Getenv("GOGC") == "" {
		// The simulated agents share one heap, with the goroutines of
		// every agent's connection: collected at the default GOGC, a
		// fifth of the child's CPU in an op went to its collector, which
		// real agents (a process each, a small heap) do not pay. Every
		// agent still receives, decodes, checks, applies and acks.
		child.Env = append(child.Env, "GOGC=400")
	}
	stdin, _ := child.StdinPipe()
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the child stops when its standard input closes
		done := make(chan error, 1)
		go func() { done <- child.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			child.Process.Kill()
			<-done
		}
	}()
	go io.Copy(io.Discard, bufio.NewReader(out))

	start := time.Now()
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(15 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-tick.C:
				mu.Lock()
				n := len(acked)
				mu.Unlock()
				b.Logf("%v: %d nodes acked; %s", time.Since(start).Round(time.Second), n, controllerSummary(h))
			}
		}
	}()
	waitAll(1, 5*time.Minute)
	close(stopProgress)
	<-progressDone
	b.Logf("%d agents joined and synced in %v", agents, time.Since(start).Round(time.Millisecond))
	live, stack := liveBytes()
	perStream := float64(live-base) / float64(agents)
	stackPerStream := float64(stack-baseStack) / float64(agents)
	goroutines := float64(runtime.NumGoroutine()-baseGoroutines) / float64(agents)
	// EG_BENCH_HEAP=FILE: the controller's heap profile with every stream
	// up, to see what a stream costs (go tool pprof -sample_index=inuse_space).
	if path := os.Getenv("EG_BENCH_HEAP"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}

	// EG_BENCH_CPUPROFILE=FILE: the controller's CPU profile of the ops
	// alone (-cpuprofile holds the joins too).
	if path := os.Getenv("EG_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	// The CPU time of the controller (this process) and of the simulated
	// agents (the child) during the ops: who had the 2 cores.
	ctlCPU0, simCPU0 := cpuTime(os.Getpid()), cpuTime(child.Process.Pid)
	if os.Getenv(envSimCPUProfile) != "" {
		if err := child.Process.Signal(syscall.SIGUSR1); err != nil {
			b.Fatal(err)
		}
	}
	version := uint64(1)
	var times, applyTimes []time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		res := h.Apply(policy.rules(agents, 8001+i))
		applyTimes = append(applyTimes, time.Since(t0))
		version = res.Nodes[0].Version
		waitAll(version, time.Minute)
		times = append(times, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(os.Getpid())-ctlCPU0).Milliseconds())/float64(b.N), "ctl-cpu-ms/op")
	b.ReportMetric(float64((cpuTime(child.Process.Pid)-simCPU0).Milliseconds())/float64(b.N), "sim-cpu-ms/op")
	var total time.Duration
	for _, d := range times {
		total += d
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(len(times)), "ms-to-last-ack")
	b.ReportMetric(float64(slices.Max(times).Milliseconds()), "max-ms-to-last-ack")
	var applyTotal time.Duration
	for _, d := range applyTimes {
		applyTotal += d
	}
	b.ReportMetric(float64(applyTotal.Milliseconds())/float64(len(applyTimes)), "ms-apply")
	b.ReportMetric(perStream/1024, "KB-per-stream")
	b.ReportMetric(stackPerStream/1024, "stack-KB-per-stream")
	b.ReportMetric(goroutines, "goroutines-per-stream")
}

// cpuTime is the CPU time (user and system) a process has used so far,
// from /proc (0 where there is none).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command (in parentheses, which may hold
	// spaces): utime and stime are the 12th and 13th of them, in clock
	// ticks (100 a second on Linux).
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// controllerSummary is what the controller counted: streams, joins,
// refusals by reason and its warnings and errors by message, to see where
// agents that do not sync are stuck.
func controllerSummary(h *harness) string {
	mfs, err := h.Reg.Gather()
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, mf := range mfs {
		switch mf.GetName() {
		case "eastguard_controller_agents_connected", "eastguard_controller_joins_total", "eastguard_controller_agent_refusals_total",
			"eastguard_controller_rule_set_pushes_total", "eastguard_controller_acks_total":
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetValue())
				}
				parts = append(parts, fmt.Sprintf("%s%v=%g", strings.TrimPrefix(mf.GetName(), "eastguard_controller_"), labels, v))
			}
		}
	}
	msgs := make(map[string]int)
	for _, e := range h.Logs.All() {
		if e.Level >= zap.WarnLevel {
			m := e.Message
			for _, f := range e.Context {
				if f.Key == "error" {
					m += ": " + fmt.Sprint(f.Interface)
				}
			}
			msgs[m]++
		}
	}
	for m, n := range msgs {
		parts = append(parts, fmt.Sprintf("%q x%d", m, n))
	}
	return strings.Join(parts, ", ")
}

// liveBytes is the heap in use and the goroutine stacks, after a GC, and
// of that the stacks.
func liveBytes() (total, stacks uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse, m.StackInuse
}

// TestSimulatedAgents is the child process of BenchmarkPropagation1000Agents
// (it runs only with the benchmark's environment): one control-plane
// client per token, with in-memory enforcers, until standard input closes.
func TestSimulatedAgents(t *testing.T) {
	tokFile, addr, stateDir := os.Getenv(envSimTokens), os.Getenv(envSimAddr), os.Getenv(envSimState)
	if tokFile == "" || addr == "" || stateDir == "" {
		t.Skip("helper process of BenchmarkPropagation1000Agents; runs only when the benchmark starts it")
	}
	data, err := os.ReadFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	if path := os.Getenv(envSimCPUProfile); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ops := make(chan os.Signal, 1)
		signal.Notify(ops, syscall.SIGUSR1)
		defer signal.Stop(ops)
		go func() {
			<-ops
			if err := pprof.StartCPUProfile(f); err != nil {
				t.Error(err)
			}
		}()
		defer pprof.StopCPUProfile()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		node, token, _ := strings.Cut(line, " ")
		dir, err := state.Open(filepath.Join(stateDir, node))
		if err != nil {
			t.Fatal(err)
		}
		c, err := controlplane.New(controlplane.Config{
			Node: node, Controller: addr, JoinToken: token, State: dir, Enforcer: &fakeEnforcer{},
			Heartbeat: 10 * time.Second, MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, Log: zap.NewNop(),
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := c.Run(ctx); err != nil {
				t.Errorf("%s: %v", node, err)
			}
		})
	}
	io.Copy(io.Discard, os.Stdin)
	cancel()
	wg.Wait()
}

// BenchmarkApplyApps: an apply that changes every node's rule set
// (appsPolicy's rules with a new port) at 1,000, 4,000 and 10,000 nodes, no agent
// connected, and the controller's heap with the latest versions held
// (heap-MB). Each node's ipcache holds the addresses its rules name (its
// own, and the 200 of the apps before and after its own), so both grow
// with the nodes, not with nodes x workloads.
func BenchmarkApplyApps(b *testing.B) {
	for _, n := range []int{1000, 4000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h := newHarness(b)
			h.Apply(appsPolicy.all(n, 8000))
			if got := len(h.Srv.Nodes.Latest("node-00001").RuleSet.IPCache); got != 201 {
				b.Fatalf("node-00001's ipcache holds %d addresses, want 201 (its own, and the apps before and after its own)", got)
			}
			heap, _ := liveBytes()
			b.ResetTimer()
			for i := range b.N {
				h.Apply(appsPolicy.rules(n, 8001+i))
			}
			b.StopTimer()
			b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
		})
	}
}
