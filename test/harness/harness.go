// Package harness runs the control plane of the end-to-end tests and of
// the demo: the controller binary in a network namespace of its own,
// linked to simulated nodes (internal/testutil/topo), egctl against it,
// and a webhook receiver that checks each delivery's signature.
//
// Only tests and the demo (test/...) import it. It runs the built
// binaries as processes and imports nothing of agent/... nor
// controller/... but the webhook signature's check
// (controller/alert/webhook/payload), which receivers are documented to
// use.
package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// ControllerHTTP is the controller's --http-listen inside its namespace:
// the admin API and the dashboard.
const ControllerHTTP = "127.0.0.1:8080"

// ControlPlane is a controller in its own namespace, linked to each node
// by a veth pair: node i reaches it at 10.250.240.(4i-3).
type ControlPlane struct {
	t       testing.TB
	NS      *netns.NS
	Bin     map[string]string // by binary name: eastguard-controller, egctl, ...
	DataDir string
	Proc    *topo.Process
	// Env and Args are added to the controller's environment and flags.
	Env  []string
	Args []string
	// OnStart, if set, is told each controller process started.
	OnStart func(*topo.Process)
}

// NewControlPlane makes the namespace and links it to the nodes; Start
// starts the controller.
func NewControlPlane(t testing.TB, bin map[string]string, dataDir string, nodes ...*topo.Node) *ControlPlane {
	t.Helper()
	cp := &ControlPlane{t: t, NS: netns.New(t, "ctl"), Bin: bin, DataDir: dataDir}
	for _, n := range nodes {
		ctlSide, nodeSide := fmt.Sprintf("eg-c%d", n.Index), "eg-ctl"
		netns.Veth(t, cp.NS, ctlSide, n.NS, nodeSide)
		base := 4*n.Index - 4
		cp.NS.IP(t, "addr", "add", fmt.Sprintf("10.250.240.%d/30", base+1), "dev", ctlSide)
		n.NS.IP(t, "addr", "add", fmt.Sprintf("10.250.240.%d/30", base+2), "dev", nodeSide)
	}
	return cp
}

// Addr is the controller's gRPC address as node n reaches it.
func (cp *ControlPlane) Addr(n *topo.Node) string {
	return fmt.Sprintf("10.250.240.%d:7443", 4*n.Index-3)
}

// AdminConf is the controller's admin.conf: the API's address and the
// admin token.
func (cp *ControlPlane) AdminConf() string { return filepath.Join(cp.DataDir, "admin.conf") }

// Start starts the controller and waits until egctl gets answers.
func (cp *ControlPlane) Start() {
	cp.t.Helper()
	cmd := cp.NS.Nsenter(cp.t.Context(), cp.Bin["eastguard-controller"], append([]string{"--data-dir", cp.DataDir,
		"--grpc-listen", ":7443", "--http-listen", ControllerHTTP, "--log-format", "console"}, cp.Args...)...)
	cmd.Env = append(os.Environ(), cp.Env...)
	cp.Proc = topo.Start(cp.t, "controller", cmd)
	if cp.OnStart != nil {
		cp.OnStart(cp.Proc)
	}
	testutil.Eventually(cp.t, 20*time.Second, "the controller to serve", func() error {
		if cp.Proc.Exited() {
			cp.t.Fatalf("controller exited:\n%s", cp.Proc.Output())
		}
		_, _, err := cp.Egctl("agents")
		return err
	})
}

// Egctl runs egctl in the controller's namespace with its admin.conf.
func (cp *ControlPlane) Egctl(args ...string) (stdout, stderr string, err error) {
	cmd := cp.NS.Nsenter(cp.t.Context(), cp.Bin["egctl"], args...)
	cmd.Env = append(os.Environ(), "EGCTL_CONFIG="+cp.AdminConf())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// MustEgctl is Egctl failing the test on error; it returns stdout.
func (cp *ControlPlane) MustEgctl(args ...string) string {
	cp.t.Helper()
	out, errs, err := cp.Egctl(args...)
	if err != nil {
		cp.t.Fatalf("egctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

// Token creates a one-time join token for node.
func (cp *ControlPlane) Token(node string) string {
	cp.t.Helper()
	out := strings.Split(strings.TrimSpace(cp.MustEgctl("token", "create", "--node", node, "--ttl", "10m")), "\n")
	return out[len(out)-1]
}

// AgentRow is the part of `egctl agents -o json` the tests read.
type AgentRow struct {
	Node           string `json:"node"`
	Connected      bool   `json:"connected"`
	AppliedVersion uint64 `json:"appliedVersion"`
	LatestVersion  uint64 `json:"latestVersion"`
	LastError      string `json:"lastError"`
	AppliedHash    string `json:"appliedHash"`
}

// Agents is `egctl agents -o json` by node.
func (cp *ControlPlane) Agents() (map[string]AgentRow, error) {
	out, errs, err := cp.Egctl("agents", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("egctl agents: %v: %s", err, errs)
	}
	var rows []AgentRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, err
	}
	m := make(map[string]AgentRow, len(rows))
	for _, r := range rows {
		m[r.Node] = r
	}
	return m, nil
}

// WaitSynced waits until every node's agent is connected and has applied
// the latest version (at least minVersion), and returns the rows.
func (cp *ControlPlane) WaitSynced(minVersion uint64, nodes ...string) map[string]AgentRow {
	cp.t.Helper()
	var rows map[string]AgentRow
	testutil.Eventually(cp.t, 30*time.Second, "agents in sync", func() error {
		var err error
		if rows, err = cp.Agents(); err != nil {
			return err
		}
		for _, n := range nodes {
			r := rows[n]
			if !r.Connected || r.AppliedVersion < minVersion || r.AppliedVersion != r.LatestVersion {
				return fmt.Errorf("%s: %+v", n, r)
			}
		}
		return nil
	})
	return rows
}

// Apply writes policy to a file and applies it with egctl; it returns
// egctl's output.
func (cp *ControlPlane) Apply(policy string) string {
	cp.t.Helper()
	f := filepath.Join(cp.t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(policy), 0o644); err != nil {
		cp.t.Fatal(err)
	}
	return cp.MustEgctl("apply", "-f", f)
}

// AlertRow is the part of `egctl alerts -o json` the tests read.
type AlertRow struct {
	ID          int64  `json:"id"`
	Rule        string `json:"rule"`
	State       string `json:"state"`
	Count       uint64 `json:"count"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Port        uint16 `json:"port"`
}

// ServeWebhook serves rc on the loopback of the controller's namespace
// until the test ends and returns the webhook URL (the controller needs
// --webhook-allow-private to deliver there).
func (cp *ControlPlane) ServeWebhook(rc *Receiver) string {
	cp.t.Helper()
	var lis net.Listener
	if err := cp.NS.Do(func() (err error) { lis, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		cp.t.Fatalf("webhook receiver: %v", err)
	}
	hs := &http.Server{Handler: rc, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(lis)
	cp.t.Cleanup(func() { hs.Close() })
	return "http://" + lis.Addr().String() + "/eastguard"
}

// Receiver is the security team's webhook endpoint: it checks each
// delivery's signature and keeps what it got, with when.
type Receiver struct {
	secret []byte
	// OnDelivery, if set, is told each delivery (err: why it was
	// refused, nil for a valid one) as it arrives.
	OnDelivery func(Received, error)

	mu   sync.Mutex
	got  []Received
	errs []string
}

// NewReceiver checks signatures with secret.
func NewReceiver(secret []byte) *Receiver { return &Receiver{secret: secret} }

// Received is one valid delivery.
type Received struct {
	At      time.Time
	Payload WebhookPayload
}

// WebhookPayload is the part of the documented JSON schema the tests
// check.
type WebhookPayload struct {
	// DeliveryID is the same on every attempt of a delivery: receivers
	// de-duplicate on it.
	DeliveryID int64  `json:"deliveryId"`
	Event      string `json:"event"`
	Alert      struct {
		ID          int64  `json:"id"`
		Rule        string `json:"rule"`
		Severity    string `json:"severity"`
		Count       uint64 `json:"count"`
		Port        uint16 `json:"port"`
		Protocol    string `json:"protocol"`
		Verdict     string `json:"verdict"`
		Decider     string `json:"decidingRule"`
		Node        string `json:"node"`
		Source      End    `json:"source"`
		Destination End    `json:"destination"`
		FirstSeen   string `json:"firstSeen"`
	} `json:"alert"`
}

// End is an alert's source or destination.
type End struct {
	// Name is the workload or address; for a node alert (datapath-
	// tampered, agent-silent) the source's is the node, the
	// destination's what happened.
	Name     string            `json:"name"`
	Workload string            `json:"workload"`
	Address  string            `json:"address"`
	Labels   map[string]string `json:"labels"`
}

func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = payload.Verify(rc.secret, r.Header.Get("X-Eastguard-Signature"), body, at, 5*time.Minute)
	}
	var p WebhookPayload
	if err == nil {
		err = json.Unmarshal(body, &p)
	}
	rc.mu.Lock()
	d := Received{At: at, Payload: p}
	if err != nil {
		rc.errs = append(rc.errs, err.Error())
	} else {
		rc.got = append(rc.got, d)
	}
	rc.mu.Unlock()
	if rc.OnDelivery != nil {
		rc.OnDelivery(d, err)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
	}
}

// Requests returns the valid deliveries and the refusals so far.
func (rc *Receiver) Requests() ([]Received, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Received(nil), rc.got...), append([]string(nil), rc.errs...)
}

// WaitOnlyAlert waits until `egctl alerts` lists exactly one alert and it
// is want (every field compared), and returns it.
func (cp *ControlPlane) WaitOnlyAlert(want AlertRow) AlertRow {
	cp.t.Helper()
	testutil.Eventually(cp.t, 15*time.Second, "the only alert to be "+fmt.Sprintf("%+v", want), func() error {
		var rows []AlertRow
		if err := json.Unmarshal([]byte(cp.MustEgctl("alerts", "-o", "json")), &rows); err != nil {
			return err
		}
		if len(rows) != 1 || rows[0] != want {
			return fmt.Errorf("alerts %+v", rows)
		}
		return nil
	})
	return want
}
