package integration_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// hookReceiver is a json webhook receiver that refuses everything until
// it is told to be healthy, then verifies signatures and keeps what it
// accepted.
type hookReceiver struct {
	*httptest.Server
	healthy atomic.Bool

	mu       sync.Mutex
	refused  int
	accepted []payload.Payload
	errs     []error
}

func newHookReceiver(t *testing.T, secret []byte) *hookReceiver {
	t.Helper()
	rc := &hookReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if !rc.healthy.Load() {
			rc.refused++
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		if err == nil {
			err = payload.Verify(secret, r.Header.Get(payload.SignatureHeader), body, time.Now(), 0)
		}
		var p payload.Payload
		if err == nil {
			err = json.Unmarshal(body, &p)
		}
		if err == nil && r.Header.Get(payload.DeliveryHeader) != strconv.FormatInt(p.DeliveryID, 10) {
			err = fmt.Errorf("header %s=%s, body deliveryId %d", payload.DeliveryHeader, r.Header.Get(payload.DeliveryHeader), p.DeliveryID)
		}
		if err != nil {
			rc.errs = append(rc.errs, err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.accepted = append(rc.accepted, p)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *hookReceiver) state() (refused int, accepted []payload.Payload, errs []error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.refused, append([]payload.Payload(nil), rc.accepted...), append([]error(nil), rc.errs...)
}

// TestWebhookDeliveryAcrossRestart: an alert raised by an ingested flow
// is queued for its webhook in the store; while the receiver refuses it
// is retried, and a controller restarted on the same store (receiver
// healthy by then) delivers it, signed, exactly once. The deliveries
// metric counts each outcome.
func TestWebhookDeliveryAcrossRestart(t *testing.T) {
	secretsDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(secretsDir, "webhook-secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := newHookReceiver(t, []byte("s3cret"))
	h := newHarness(t, func(c *controller.Config) {
		c.SecretsDir = secretsDir
		c.WebhookAllowPrivate = true // the receiver is on 127.0.0.1
		c.WebhookMinBackoff = 10 * time.Millisecond
		c.WebhookTimeout = 30 * time.Second
		c.DashboardURL = "https://eastguard.example.com/"
	})
	h.Apply(twoNodes, testutil.SSHAlertPolicy(rc.URL+"/eastguard", "webhook-secret"))
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)
	if ack := src.send(t, &pb.FlowBatch{Seq: 1, SpoolId: 1, Records: []*pb.FlowRecord{sshAttempt(40000, h.Clock.Now())}}); ack.GetError() != "" {
		t.Fatalf("batch refused: %s", ack.GetError())
	}
	testutil.Eventually(t, 30*time.Second, "a refused delivery attempt retried", func() error {
		if got := h.Counter("eastguard_controller_webhook_deliveries_total", "outcome", "retry"); got < 1 {
			return fmt.Errorf("retry outcomes %v", got)
		}
		return nil
	})
	if got := h.Counter("eastguard_controller_webhook_deliveries_total", "outcome", "delivered"); got != 0 {
		t.Errorf("delivered %v while the receiver refuses", got)
	}
	if err := a.stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("agent: %v", err)
	}
	as := h.alerts(t)
	if len(as) != 1 {
		t.Fatalf("alerts %+v, want the SSH attempt's", as)
	}

	h.Stop()
	rc.healthy.Store(true)
	h.Start()
	testutil.Eventually(t, 30*time.Second, "the alert delivered after the restart", func() error {
		_, n, err := h.St.NextDeliveryAt(context.Background())
		if err != nil || n != 0 {
			return fmt.Errorf("%d pending, %v", n, err)
		}
		return nil
	})
	h.Stop() // nothing more can be sent
	refused, accepted, errs := rc.state()
	if len(errs) != 0 {
		t.Errorf("receiver errors: %v", errs)
	}
	if refused == 0 {
		t.Error("the receiver refused nothing before the restart")
	}
	if len(accepted) != 1 {
		t.Fatalf("receiver accepted %d deliveries, want exactly 1: %+v", len(accepted), accepted)
	}
	p := accepted[0]
	if p.Event != "firing" || p.Alert.ID != as[0].ID || p.Alert.Rule != "unexpected-ssh" || p.Alert.Severity != "critical" ||
		p.Alert.Source.Workload != "client" || p.Alert.Destination.Workload != "web" || p.Alert.Port != 22 ||
		p.Alert.Protocol != "TCP" || p.Alert.Verdict != "denied" || p.Alert.Node != "node-a" ||
		p.Alert.URL != fmt.Sprintf("https://eastguard.example.com/#/alerts/%d", as[0].ID) {
		t.Errorf("delivered payload %+v", p)
	}
	// The registry is the restarted controller's.
	if got := h.Counter("eastguard_controller_webhook_deliveries_total", "outcome", "delivered"); got != 1 {
		t.Errorf("delivered outcomes after the restart %v, want 1", got)
	}
	if got := h.Counter("eastguard_controller_webhook_deliveries_total", "outcome", "gave_up"); got != 0 {
		t.Errorf("gave_up outcomes %v", got)
	}
}

// TestPortScanAlertStorm: a 2,000-port scan from one source against a
// node with --alert-on-denied is at most a few alerts and a few webhook
// deliveries, and the delivered alert says how many ports were tried.
// Before, every port was an alert and a delivery of its own.
func TestPortScanAlertStorm(t *testing.T) {
	var mu sync.Mutex
	var got []payload.Payload
	// Refused until the whole scan is stored, so the delivery (read at
	// its attempt) carries the whole scan.
	var ready atomic.Bool
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		var p payload.Payload
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	h := newHarness(t, func(c *controller.Config) {
		c.WebhookMinBackoff = 10 * time.Millisecond
		c.BuiltinAlerts = alert.Builtin{Denied: true, Notify: []string{"scan-hook"}}
		c.WebhookAllowPrivate = true // the receiver is on 127.0.0.1
	})
	h.Apply(twoNodes, fmt.Sprintf("apiVersion: eastguard.dev/v1\nkind: Webhook\nmetadata: {name: scan-hook}\nspec: {url: %q}\n", rc.URL))
	src := newScriptedFlows()
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, withFlows(src))
	h.waitApplied(a)
	now := h.Clock.Now()
	for b := range 4 {
		var recs []*pb.FlowRecord
		for i := range 500 {
			r := sshAttempt(uint32(20000+b*500+i), now)
			r.DstPort = uint32(1 + b*500 + i)
			recs = append(recs, r)
		}
		if ack := src.send(t, &pb.FlowBatch{Seq: uint64(b + 1), SpoolId: 1, Records: recs}); ack.GetError() != "" {
			t.Fatalf("batch %d refused: %s", b+1, ack.GetError())
		}
	}
	ready.Store(true)
	testutil.Eventually(t, 30*time.Second, "the scan's alert delivered", func() error {
		mu.Lock()
		defer mu.Unlock()
		_, n, err := h.St.NextDeliveryAt(context.Background())
		if err != nil || n != 0 || len(got) == 0 {
			return fmt.Errorf("%d pending, %d delivered, %v", n, len(got), err)
		}
		return nil
	})
	if as := h.alerts(t); len(as) > 3 {
		t.Errorf("a 2,000-port scan raised %d alerts, want at most a few", len(as))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) > 3 {
		t.Fatalf("a 2,000-port scan made %d webhook deliveries, want at most a few", len(got))
	}
	if p := got[0].Alert; p.Port != 1 || p.PortCount != 2000 || p.Count != 2000 || len(p.Ports) != alert.MaxPortSample || p.Ports[0] != 1 {
		t.Errorf("delivered alert: port %d, ports %v, port count %d, count %d; want 2000 ports from 1, a sample of %d",
			p.Port, p.Ports, p.PortCount, p.Count, alert.MaxPortSample)
	}
}
