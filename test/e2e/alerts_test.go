package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/harness"
)

const webhookSecret = "e2e-webhook-secret"

// TestPrivilegedAlertEndToEnd: a forbidden SSH attempt between workloads on two
// nodes reaches the security team's webhook as exactly one signed alert
// within 2 s of the packet, naming both workloads and the deciding rule;
// a repeat within the window counts on the same alert and sends nothing
// new; the flow is queryable with egctl flows.
func TestPrivilegedAlertEndToEnd(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	web.Listen(t, 8080, 22)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	cp.Env = []string{"EASTGUARD_WEBHOOK_SECRET=" + webhookSecret}
	// The receiver is on the controller namespace's loopback.
	cp.Args = append(cp.Args, "--webhook-allow-private")
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}

	// The receiver listens inside the controller's namespace, on its
	// loopback.
	rc := harness.NewReceiver([]byte(webhookSecret))
	hookURL := cp.ServeWebhook(rc)

	cp.Start()
	for _, n := range []*topo.Node{nodeA, nodeB} {
		out := strings.Split(strings.TrimSpace(cp.MustEgctl("token", "create", "--node", n.Name, "--ttl", "10m")), "\n")
		topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], "--node", n.Name,
			"--controller", cp.Addr(n), "--join-token", out[len(out)-1], "--state-dir", t.TempDir(),
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console"))
	}
	cp.Apply(crossNodePolicy(web, client) + "---\n" + testutil.SSHAlertPolicy(hookURL, ""))
	cp.WaitSynced(1, "node-a", "node-b")
	if err := client.Dial(web.Addr4, 8080, 2*time.Second); err != nil {
		t.Fatalf("allowed connection client -> web:8080: %v", err)
	}

	// The forbidden attempt. node-b's egress drops it (client may only
	// reach web on 8080).
	start := time.Now()
	if err := client.Dial(web.Addr4, 22, 500*time.Millisecond); err == nil {
		t.Fatal("client -> web:22 connected; want it dropped")
	}
	var first harness.Received
	testutil.Eventually(t, 15*time.Second, "the alert at the webhook", func() error {
		got, errs := rc.Requests()
		if len(errs) > 0 {
			t.Fatalf("webhook requests that do not verify or parse: %v", errs)
		}
		if len(got) == 0 {
			return fmt.Errorf("nothing received")
		}
		first = got[0]
		return nil
	})
	latency := first.At.Sub(start)
	t.Logf("SSH attempt to webhook delivery: %v", latency)
	if latency > 2*time.Second {
		t.Errorf("alert reached the webhook %v after the packet, want <= 2s", latency)
	}
	a := first.Payload.Alert
	if first.Payload.Event != "firing" || a.Rule != "unexpected-ssh" || a.Severity != "critical" || a.Count != 1 ||
		a.Port != 22 || a.Protocol != "TCP" || a.Verdict != "denied" || a.Decider != "default-deny" || a.Node != "node-b" ||
		a.Source.Workload != "client" || a.Source.Address != client.Addr4.String() || a.Source.Labels["role"] != "client" ||
		a.Destination.Workload != "web" || a.Destination.Address != web.Addr4.String() || a.Destination.Labels["role"] != "web" {
		t.Errorf("webhook payload: %+v", first.Payload)
	}

	// The repeat, within the window: same alert, count 2, no new delivery.
	if err := client.Dial(web.Addr4, 22, 500*time.Millisecond); err == nil {
		t.Fatal("second client -> web:22 connected")
	}
	cp.WaitOnlyAlert(harness.AlertRow{ID: a.ID, Rule: "unexpected-ssh", State: "open", Count: 2, Source: "client", Destination: "web", Port: 22})
	// A new delivery would have been queued with the count and sent at
	// once; give it time to arrive if it (wrongly) exists.
	time.Sleep(time.Second)
	if got, _ := rc.Requests(); len(got) != 1 {
		t.Errorf("webhook got %d requests, want exactly 1: %+v", len(got), got)
	}

	// The denied flows are in the store, named.
	var flows []struct {
		SrcWorkload string `json:"srcWorkload"`
		DstWorkload string `json:"dstWorkload"`
		Verdict     string `json:"verdict"`
		Rule        string `json:"rule"`
	}
	if err := json.Unmarshal([]byte(cp.MustEgctl("flows", "--verdict", "denied", "--port", "22", "-o", "json")), &flows); err != nil {
		t.Fatal(err)
	}
	if len(flows) < 2 || flows[0].SrcWorkload != "client" || flows[0].DstWorkload != "web" || flows[0].Rule != "default-deny" {
		t.Errorf("egctl flows --verdict denied --port 22: %+v", flows)
	}
	// The open alert is listed by --open; acknowledging it keeps it live.
	cp.MustEgctl("alert", "ack", fmt.Sprint(a.ID))
	var open []harness.AlertRow
	if err := json.Unmarshal([]byte(cp.MustEgctl("alerts", "--open", "-o", "json")), &open); err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].State != "acknowledged" {
		t.Errorf("egctl alerts --open after ack: %+v", open)
	}
}
