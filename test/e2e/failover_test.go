package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/harness"
)

// TestMain stops the throw-away PostgreSQL cluster of the Postgres and
// Failover tests, if one was started.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// haController is one controller process of the failover test.
type haController struct {
	name, grpc, http, dataDir string
	proc                      *topo.Process
}

// TestPrivilegedFailover: two controllers on one PostgreSQL database, two
// real agents given both addresses. One leads, the other stands by and
// answers "not leader". After kill -9 of the leader the standby leads
// within 10 s; a connection made during the failover is stored once per
// node that saw it; the open alert is not sent again; a policy applied
// after the failover is enforced on both agents with versions above the
// old ones; the old leader, restarted, stands by; egctl status says who
// leads.
func TestPrivilegedFailover(t *testing.T) {
	testutil.RequirePrivileged(t)
	dsn := pgtest.DSN(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	web.Listen(t, 8080, 22, 9999)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}
	// Each controller listens for agents on an address of its own in
	// the controller namespace (10.250.241.1 and .2), on one port, as
	// two hosts would; the nodes route to them over their link.
	cp.NS.IP(t, "addr", "add", "10.250.241.1/32", "dev", "lo")
	cp.NS.IP(t, "addr", "add", "10.250.241.2/32", "dev", "lo")
	for _, n := range []*topo.Node{nodeA, nodeB} {
		gw, _, _ := strings.Cut(cp.Addr(n), ":")
		n.NS.IP(t, "route", "add", "10.250.241.0/29", "via", gw)
	}
	keyFile := filepath.Join(t.TempDir(), "ca-key.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := harness.NewReceiver([]byte(webhookSecret))
	// hold, once set, keeps the next delivery's answer until released:
	// a delivery in flight when its leader dies.
	var hold atomic.Pointer[chan struct{}]
	held, release := make(chan struct{}), make(chan struct{})
	rc.OnDelivery = func(harness.Received, error) {
		if h := hold.Load(); h != nil && hold.CompareAndSwap(h, nil) {
			close(held)
			<-release
		}
	}
	defer close(release)
	hookURL := cp.ServeWebhook(rc)

	start := func(c *haController) {
		cmd := cp.NS.Nsenter(t.Context(), bin["eastguard-controller"], "--data-dir", c.dataDir, "--store", dsn,
			"--ca-key-encryption-key-file", keyFile, "--grpc-listen", c.grpc, "--http-listen", c.http,
			"--advertise-api", "http://"+c.http, "--webhook-allow-private", "--log-format", "console")
		cmd.Env = append(os.Environ(), "EASTGUARD_WEBHOOK_SECRET="+webhookSecret)
		c.proc = topo.Start(t, c.name, cmd)
	}
	ctlA := &haController{name: "controller-a", grpc: "10.250.241.1:7443", http: "127.0.0.1:8080", dataDir: t.TempDir()}
	ctlB := &haController{name: "controller-b", grpc: "10.250.241.2:7443", http: "127.0.0.1:8081", dataDir: t.TempDir()}

	// A first: it leads, creates the CA and writes its admin.conf.
	start(ctlA)
	var token string
	testutil.Eventually(t, 30*time.Second, "controller-a to lead and write admin.conf", func() error {
		if ctlA.proc.Exited() {
			t.Fatalf("controller-a exited:\n%s", ctlA.proc.Output())
		}
		b, err := os.ReadFile(filepath.Join(ctlA.dataDir, "admin.conf"))
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "token: "); ok {
				token = strings.TrimSpace(v)
			}
		}
		if token == "" {
			return fmt.Errorf("no token in admin.conf yet")
		}
		return nil
	})
	// egctl is given both controllers; the token is valid at either (one
	// store).
	conf := fmt.Sprintf("server: http://%s,http://%s\ntoken: %s\n", ctlA.http, ctlB.http, token)
	if err := os.WriteFile(cp.AdminConf(), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	start(ctlB)
	status := func() map[string]string {
		var rows []struct{ Instance, Role, API string }
		if err := json.Unmarshal([]byte(cp.MustEgctl("status", "-o", "json")), &rows); err != nil {
			t.Fatal(err)
		}
		// A killed process's row stays, gone, beside its restarted
		// successor's on the same address: the livelier role wins.
		rank := map[string]int{"": 0, "gone": 1, "standby": 2, "leader": 3}
		roles := map[string]string{}
		for _, r := range rows {
			if rank[r.Role] > rank[roles[r.API]] {
				roles[r.API] = r.Role
			}
		}
		return roles
	}
	testutil.Eventually(t, 30*time.Second, "egctl status: controller-a leads, controller-b stands by", func() error {
		if ctlB.proc.Exited() {
			t.Fatalf("controller-b exited:\n%s", ctlB.proc.Output())
		}
		if got := status(); got["http://"+ctlA.http] != "leader" || got["http://"+ctlB.http] != "standby" {
			return fmt.Errorf("roles %v", got)
		}
		return nil
	})
	// The standby's API refuses with "not leader", naming the leader.
	_, stderr, err := cp.Egctl("--server", "http://"+ctlB.http, "--token", token, "agents")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr, "standby") ||
		!strings.Contains(stderr, "http://"+ctlA.http) {
		t.Errorf("egctl agents at the standby: %v\n%s", err, stderr)
	}

	both := ctlA.grpc + "," + ctlB.grpc
	for _, n := range []*topo.Node{nodeA, nodeB} {
		topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], "--node", n.Name,
			"--controller", both, "--join-token", cp.Token(n.Name), "--state-dir", t.TempDir(),
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console"))
	}
	cp.Apply(crossNodePolicy(web, client) + "---\n" + testutil.SSHAlertPolicy(hookURL, ""))
	before := cp.WaitSynced(1, "node-a", "node-b")
	topo.MustDrop(t, "before the failover: client -> web:9999", client.Dial(web.Addr4, 9999, 500*time.Millisecond))

	// An alert, delivered once.
	topo.MustDrop(t, "client -> web:22", client.Dial(web.Addr4, 22, 500*time.Millisecond))
	var alertID int64
	testutil.Eventually(t, 15*time.Second, "the alert at the webhook", func() error {
		got, _ := rc.Requests()
		if len(got) != 1 {
			return fmt.Errorf("%d deliveries", len(got))
		}
		alertID = got[0].Payload.Alert.ID
		return nil
	})
	alert := cp.WaitOnlyAlert(harness.AlertRow{ID: alertID, Rule: "unexpected-ssh", State: "open", Count: 1, Source: "client", Destination: "web", Port: 22})

	// kill -9 of the leader, and a connection while nobody leads.
	killed := time.Now()
	ctlA.proc.Kill()
	topo.MustPass(t, "during the failover: client -> web:8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	var led time.Duration
	testutil.Eventually(t, 60*time.Second, "controller-b to lead", func() error {
		_, _, err := cp.Egctl("--server", "http://"+ctlB.http, "--token", token, "agents")
		if err != nil {
			return err
		}
		led = time.Since(killed)
		return nil
	})
	t.Logf("takeover: controller-b answered as the leader %s after kill -9 of controller-a", led)
	if led > 10*time.Second {
		t.Errorf("controller-b led %s after the leader's death, want within 10 s", led)
	}

	// The connection made during the failover: one new record from each
	// node, once.
	testutil.Eventually(t, 30*time.Second, "the failover's flow records, once each", func() error {
		var flows []struct {
			Node  string `json:"node"`
			State string `json:"state"`
		}
		if err := json.Unmarshal([]byte(cp.MustEgctl("flows", "--port", "8080", "-o", "json")), &flows); err != nil {
			return err
		}
		perNode := map[string]int{}
		for _, f := range flows {
			if f.State == "new" {
				perNode[f.Node]++
			}
		}
		if perNode["node-a"] != 1 || perNode["node-b"] != 1 || len(perNode) != 2 {
			return fmt.Errorf("new records per node %v (all: %+v)", perNode, flows)
		}
		return nil
	})

	// A policy applied after the failover is enforced on both agents,
	// with versions above those before it.
	cp.Apply(crossNodePolicy(web, client) + testutil.LabExtraPolicy() + "---\n" + testutil.SSHAlertPolicy(hookURL, ""))
	var after map[string]harness.AgentRow
	testutil.Eventually(t, 30*time.Second, "both agents at a version above the old one", func() error {
		rows, err := cp.Agents()
		if err != nil {
			return err
		}
		for _, n := range []string{"node-a", "node-b"} {
			r := rows[n]
			if !r.Connected || r.LatestVersion <= before[n].LatestVersion || r.AppliedVersion != r.LatestVersion {
				return fmt.Errorf("%s: %+v (before the failover: %+v)", n, r, before[n])
			}
		}
		after = rows
		return nil
	})
	t.Logf("versions: before the failover %d/%d, after %d/%d", before["node-a"].LatestVersion, before["node-b"].LatestVersion,
		after["node-a"].LatestVersion, after["node-b"].LatestVersion)
	topo.MustPass(t, "after the failover's policy: client -> web:9999", client.Dial(web.Addr4, 9999, 2*time.Second))

	// The open alert was not sent again by the new leader.
	cp.WaitOnlyAlert(alert)
	if got, _ := rc.Requests(); len(got) != 1 {
		t.Errorf("the webhook got %d deliveries, want the one before the failover: %+v", len(got), got)
	}

	// The old leader, restarted (as its supervisor would), stands by.
	start(ctlA)
	testutil.Eventually(t, 30*time.Second, "egctl status: controller-b leads, controller-a stands by", func() error {
		if got := status(); got["http://"+ctlB.http] != "leader" || got["http://"+ctlA.http] != "standby" {
			return fmt.Errorf("roles %v", got)
		}
		return nil
	})
	if got, _ := rc.Requests(); len(got) != 1 {
		t.Errorf("the webhook got %d deliveries, want 1: %+v", len(got), got)
	}

	// A delivery in flight when its leader dies: the new leader sends it
	// again with the same delivery id (at-least-once, de-duplicated by
	// the receiver on it), and only once.
	h := make(chan struct{})
	hold.Store(&h)
	topo.MustDrop(t, "web -> client:22", web.Dial(client.Addr4, 22, 500*time.Millisecond))
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the second alert's delivery did not arrive")
	}
	killed = time.Now()
	ctlB.proc.Kill()
	var resent []harness.Received
	testutil.Eventually(t, 60*time.Second, "the delivery in flight sent again by the new leader", func() error {
		got, errs := rc.Requests()
		if len(errs) > 0 {
			t.Fatalf("deliveries refused by the receiver: %v", errs)
		}
		if len(got) < 3 {
			return fmt.Errorf("%d deliveries", len(got))
		}
		resent = got
		return nil
	})
	t.Logf("second failover: the delivery in flight was sent again %s after kill -9 of controller-b", time.Since(killed))
	if a, b := resent[1].Payload, resent[2].Payload; a.DeliveryID != b.DeliveryID || a.Alert.ID != b.Alert.ID || a.Alert.ID == alertID ||
		a.Event != "firing" || b.Event != "firing" {
		t.Errorf("the delivery in flight and its resend: %+v / %+v", a, b)
	}
	testutil.Eventually(t, 30*time.Second, "egctl status: controller-a leads again", func() error {
		if got := status(); got["http://"+ctlA.http] != "leader" {
			return fmt.Errorf("roles %v\n%s", got, cp.MustEgctl("status"))
		}
		return nil
	})
	// Recorded as delivered now: nothing more.
	time.Sleep(2 * time.Second)
	if got, _ := rc.Requests(); len(got) != 3 {
		t.Errorf("the webhook got %d deliveries, want 3: %+v", len(got), got)
	}
}
