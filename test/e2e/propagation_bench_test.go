package e2e

import (
	"context"
	"net"
	"os/exec"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// BenchmarkPropagationRealAgent: time from an apply to the ack of one real
// agent (a separate process in a node namespace) that has applied the new
// version to the kernel. The controller runs in this process; its gRPC
// listener is opened inside the node's namespace on loopback. Each op is
// one policy change; reported: p50-ms and p99-ms over the ops.
func BenchmarkPropagationRealAgent(b *testing.B) {
	testutil.RequirePrivileged(b)
	agentBin := topo.BuildBinary(b, "agent/cmd/eastguard-agent", b.TempDir())
	node := topo.NewNode(b, "node-a", 1)
	web := node.AddWorkload(b, "web", 1)
	client := node.AddWorkload(b, "client", 3)

	st, err := sqlite.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ca, err := controller.LoadCA(context.Background(), st, nil, nil, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	acks := make(chan agentapi.Ack, 16)
	srv, err := controller.New(context.Background(), controller.Config{Store: st, CA: ca, OnAck: func(a agentapi.Ack) { acks <- a }})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	var lis net.Listener
	if err := node.NS.Do(func() error {
		var err error
		lis, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	go srv.ServeGRPC(lis)

	apply := func(port int) uint64 {
		res, err := srv.Policy.Apply(context.Background(), []apiclient.File{{Name: "shop.yaml",
			Content: testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{web.Lab(), client.Lab()}, Port: port})}}, false)
		if err != nil {
			b.Fatal(err)
		}
		return res.Nodes[0].Version
	}
	waitAck := func(v uint64) {
		timeout := time.After(30 * time.Second)
		for {
			select {
			case a := <-acks:
				if a.Version == v {
					if !a.Applied {
						b.Fatalf("version %d not applied: %s", v, a.Error)
					}
					return
				}
			case <-timeout:
				b.Fatalf("no ack of version %d after 30s", v)
			}
		}
	}
	v := apply(8080)
	tok, err := srv.Agents.CreateJoinToken(context.Background(), "node-a", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Runs after the agent is killed (cleanups run last first).
		if out, err := exec.Command(agentBin, "--uninstall", "--bpffs-dir", node.BPFFSDir).CombinedOutput(); err != nil {
			b.Errorf("uninstall: %v\n%s", err, out)
		}
	})
	topo.Start(b, "agent", node.NS.Nsenter(b.Context(), agentBin, "--node", "node-a", "--controller", lis.Addr().String(),
		"--join-token", tok.Token, "--state-dir", b.TempDir(), "--bpffs-dir", node.BPFFSDir, "--log-level", "warn"))
	waitAck(v)

	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		waitAck(apply(8081 + i%2000))
		times = append(times, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(times)
	pct := func(p float64) float64 {
		return float64(times[min(len(times)-1, int(p*float64(len(times))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
