package agentapi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/controller/nodes"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// nodeAlertSession is a session of node-a over a running ingester with a
// real event store, for what sessions turn into alerts.
func nodeAlertSession(t *testing.T) (*session, *sqlite.SQLite) {
	t.Helper()
	st, err := sqlite.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	in := flowingest.New(flowingest.Config{Store: st, Log: zap.NewNop()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); in.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	s := &Service{cfg: Config{Heartbeat: time.Second}, log: zap.NewNop(), now: time.Now, m: newMetrics(nil),
		nodes: nodes.New(st, time.Now, zap.NewNop()), flows: in}
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := pki.NewNodeKey()
	csr, _ := pki.NewCSR(key, "node-a")
	leaf, _, err := ca.SignNode(csr, "node-a", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.tls, err = agenttls.New(agenttls.Config{CA: ca, Hosts: func() []string { return []string{"localhost"} }, TTL: time.Hour,
		Now: time.Now, Log: zap.NewNop()}); err != nil {
		t.Fatal(err)
	}
	ss := &session{s: s, node: "node-a", serial: pki.Serial(leaf), stream: &sentStream{},
		peerHeartbeat: time.Second, done: make(chan struct{}), lastRecv: time.Now()}
	ss.certExpiry.Store(leaf.NotAfter.UnixNano())
	return ss, st
}

// waitAlert polls the store for the one alert of rule and returns it.
func waitAlert(t *testing.T, st *sqlite.SQLite, rule string) store.Alert {
	t.Helper()
	var got store.Alert
	testutil.Eventually(t, 30*time.Second, "the "+rule+" alert", func() error {
		as, err := st.Alerts(context.Background(), store.AlertQuery{})
		if err != nil {
			return err
		}
		if len(as) != 1 || as[0].Rule != rule {
			return fmt.Errorf("alerts: %+v", as)
		}
		got = as[0]
		return nil
	})
	return got
}

// TestDriftReportRaisesAlert: an agent's drift report becomes the
// critical datapath-tampered alert of its node; a report that breaks the
// bounds (a control character forging a log line) closes the stream
// with InvalidArgument and raises nothing; a kind this controller does not
// know is alerted as "other", so an agent cannot make up alert keys or
// metric labels without end.
func TestDriftReportRaisesAlert(t *testing.T) {
	ss, st := nodeAlertSession(t)
	bad := &pb.AgentMessage{Msg: &pb.AgentMessage_Drift{Drift: &pb.DatapathDrift{Kind: "map-modified", Object: "eg_policy", Detail: "x\nFAKE", Count: 1}}}
	if err := ss.handle(bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "drift.detail") {
		t.Fatalf("invalid drift report: %v, want InvalidArgument naming drift.detail", err)
	}
	msg := &pb.AgentMessage{Msg: &pb.AgentMessage_Drift{Drift: &pb.DatapathDrift{Kind: "link-detached", Object: "tcx-7-ingress (eth0)",
		Detail: "our tcx link is no longer attached to the interface", Repaired: true, Count: 2, UnixNano: time.Now().UnixNano()}}}
	if err := ss.handle(msg); err != nil {
		t.Fatal(err)
	}
	a := waitAlert(t, st, alert.BuiltinTamperedRule)
	if a.Severity != "critical" || a.Node != "node-a" || a.Source != "node-a" || a.Destination != "link-detached" || a.Count != 2 ||
		a.Verdict != "repaired" || !strings.Contains(a.DecidingRule, "tcx-7-ingress (eth0)") {
		t.Errorf("alert %+v", a)
	}

	odd := &pb.AgentMessage{Msg: &pb.AgentMessage_Drift{Drift: &pb.DatapathDrift{Kind: "made-up-kind", Detail: "d", Count: 1}}}
	if err := ss.handle(odd); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "the other-kind alert", func() error {
		as, err := st.Alerts(context.Background(), store.AlertQuery{})
		if err != nil {
			return err
		}
		for _, a := range as {
			if a.Destination == "other" && strings.HasPrefix(a.DecidingRule, "made-up-kind: ") {
				return nil
			}
		}
		return fmt.Errorf("alerts: %+v", as)
	})
}

// TestSilentAgentRaisesAlert: a stream whose agent sends nothing for
// longer than its heartbeats allow is closed, and the node gets the
// critical agent-silent alert.
func TestSilentAgentRaisesAlert(t *testing.T) {
	ss, st := nodeAlertSession(t)
	ss.lastRecv = time.Now().Add(-time.Minute)
	if err := ss.heartbeat(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("heartbeat of a silent stream: %v, want DeadlineExceeded", err)
	}
	a := waitAlert(t, st, alert.BuiltinSilentRule)
	if a.Severity != "critical" || a.Node != "node-a" || a.Destination != "silent" || !strings.Contains(a.DecidingRule, "no message from the agent") {
		t.Errorf("alert %+v", a)
	}
}

// TestDriftReportsRateLimited: an agent flooding drift reports gets the
// first ones alerted and the rest dropped and counted as rate_limited,
// never a stream error (an honest agent stays far below).
func TestDriftReportsRateLimited(t *testing.T) {
	ss, st := nodeAlertSession(t)
	ss.s.drifts = admission.NewRateLimiter[string](driftRate, driftBurst)
	for range 1000 {
		msg := &pb.AgentMessage{Msg: &pb.AgentMessage_Drift{Drift: &pb.DatapathDrift{Kind: "map-modified", Detail: "d", Count: 1}}}
		if err := ss.handle(msg); err != nil {
			t.Fatal(err)
		}
	}
	if got := promtest.ToFloat64(ss.s.m.refused.WithLabelValues("rate_limited")); got < 1000-driftBurst-driftRate*5 {
		t.Errorf("%v reports refused as rate_limited out of 1000", got)
	}
	waitAlert(t, st, alert.BuiltinTamperedRule)
	testutil.Eventually(t, 30*time.Second, "the alert's count", func() error {
		as, err := st.Alerts(context.Background(), store.AlertQuery{})
		if err != nil || len(as) != 1 {
			return fmt.Errorf("alerts %+v, %v", as, err)
		}
		if as[0].Count < driftBurst || as[0].Count > driftBurst+driftRate*5 {
			return fmt.Errorf("count %d, want about %d", as[0].Count, driftBurst)
		}
		return nil
	})
}
