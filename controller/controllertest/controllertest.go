// Package controllertest runs a controller in-process for tests: its
// store in a temporary directory that survives restarts, gRPC on a
// loopback port kept across restarts, a clock the test can move, logs and
// metrics the test can read, and the admin API on an httptest server.
// Only tests import it; it must not import anything under agent/.
package controllertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/pki"
)

// Clock is the controller's clock in tests: real time plus an offset the
// test can move forward.
type Clock struct{ offset atomic.Int64 }

// Now is the clock's time.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// Controller is a controller serving gRPC on loopback.
type Controller struct {
	T     testing.TB
	Dir   string
	St    *sqlite.SQLite
	CA    *pki.CA
	Srv   *controller.Controller
	Addr  string // gRPC
	Reg   *prometheus.Registry
	Logs  *observer.ObservedLogs
	Clock *Clock
	Cfg   controller.Config
	// StoreOpts are passed to sqlite.Open at every start.
	StoreOpts []sqlite.Option
	// WrapStore, if set, wraps the store the controller is given (tests
	// inject failures with it).
	WrapStore func(store.Store) store.Store
	// LogLevel, if set, is the lowest level Logs keeps (default: debug).
	// Benchmarks of memory raise it: kept log entries are the test's
	// memory, not the controller's.
	LogLevel zapcore.LevelEnabler

	serveWG sync.WaitGroup
	mu      sync.Mutex
	acks    []agentapi.Ack
}

// Option changes the controller's configuration before it starts.
type Option func(*controller.Config)

// New starts a controller with short heartbeats and flushes; it is
// stopped when the test ends.
func New(t testing.TB, opts ...Option) *Controller {
	t.Helper()
	h := &Controller{T: t, Dir: t.TempDir(), Clock: &Clock{}}
	h.Cfg = controller.Config{
		Heartbeat:     200 * time.Millisecond,
		FlushInterval: 50 * time.Millisecond,
		Now:           h.Clock.Now,
		OnAck: func(a agentapi.Ack) {
			h.mu.Lock()
			h.acks = append(h.acks, a)
			h.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&h.Cfg)
	}
	h.Start()
	t.Cleanup(h.Stop)
	return h
}

// Acks returns the acks recorded so far.
func (h *Controller) Acks() []agentapi.Ack {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]agentapi.Ack(nil), h.acks...)
}

// Start opens the store and serves; the listener's port is kept across
// restarts so that agents find the controller again.
func (h *Controller) Start() {
	h.T.Helper()
	var err error
	if h.St, err = sqlite.Open(h.Dir, h.StoreOpts...); err != nil {
		h.T.Fatal(err)
	}
	var level zapcore.LevelEnabler = zap.DebugLevel
	if h.LogLevel != nil {
		level = h.LogLevel
	}
	core, logs := observer.New(level)
	h.Logs = logs
	log := zap.New(core)
	if h.CA, err = controller.LoadCA(context.Background(), h.St, nil, nil, log); err != nil {
		h.T.Fatal(err)
	}
	h.Reg = prometheus.NewRegistry()
	cfg := h.Cfg
	cfg.CA, cfg.Log, cfg.Registry = h.CA, log, h.Reg
	if cfg.Store == nil {
		// An Option that set Store (a PostgreSQL store: benchmarks) keeps
		// it; the CA is still the SQLite store's.
		cfg.Store = h.St
	}
	if h.WrapStore != nil {
		cfg.Store = h.WrapStore(cfg.Store)
	}
	if h.Srv, err = controller.New(context.Background(), cfg); err != nil {
		h.T.Fatal(err)
	}
	addr := h.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	for range 50 { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		h.T.Fatal(err)
	}
	h.Addr = lis.Addr().String()
	h.serveWG.Go(func() {
		if err := h.Srv.ServeGRPC(lis); err != nil {
			h.T.Errorf("serve: %v", err)
		}
	})
}

// Stop stops the controller and closes its store (a no-op if stopped).
func (h *Controller) Stop() {
	if h.Srv == nil {
		return
	}
	if err := h.Srv.Close(); err != nil {
		h.T.Errorf("close: %v", err)
	}
	h.serveWG.Wait()
	if err := h.St.Close(); err != nil {
		h.T.Errorf("close store: %v", err)
	}
	h.Srv = nil
}

// Restart stops and starts the controller on the same store and port.
func (h *Controller) Restart() {
	h.T.Helper()
	h.Stop()
	h.Start()
}

// Token makes a join token for node.
func (h *Controller) Token(node string, ttl time.Duration) string {
	h.T.Helper()
	tok, err := h.Srv.Agents.CreateJoinToken(context.Background(), node, ttl)
	if err != nil {
		h.T.Fatal(err)
	}
	return tok.Token
}

// Apply applies each file's content as one change and fails the test if
// it is refused.
func (h *Controller) Apply(files ...string) *apiclient.ChangeResult {
	h.T.Helper()
	var in []apiclient.File
	for i, f := range files {
		in = append(in, apiclient.File{Name: fmt.Sprintf("f%d.yaml", i+1), Content: f})
	}
	res, err := h.Srv.Policy.Apply(context.Background(), in, false)
	if err != nil {
		h.T.Fatalf("apply: %v", err)
	}
	return res
}

// AgentStatus returns a node's status as the API lists it (zero if the
// node is not listed).
func (h *Controller) AgentStatus(node string) apiclient.AgentStatus {
	for _, a := range h.Srv.Nodes.Agents() {
		if a.Node == node {
			return a
		}
	}
	return apiclient.AgentStatus{}
}

// Counter reads a counter of the controller's registry.
func (h *Controller) Counter(name, label, value string) float64 {
	h.T.Helper()
	mfs, err := h.Reg.Gather()
	if err != nil {
		h.T.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// Logged returns the log messages (with their error field) that contain
// every one of the words.
func (h *Controller) Logged(words ...string) []string {
	var out []string
	for _, e := range h.Logs.All() {
		line := e.Message
		for _, f := range e.Context {
			if f.Key == "error" {
				line += ": " + fmt.Sprint(f.Interface)
			}
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// ServeAPI serves the controller's HTTP handler on an httptest server
// until the test ends, and returns its admin configuration (URL and a new
// admin token).
func (h *Controller) ServeAPI() *apiclient.Config {
	h.T.Helper()
	api := httptest.NewServer(h.Srv.Handler(h.Reg))
	h.T.Cleanup(api.Close)
	token, err := h.Srv.API.NewAdminToken(context.Background(), restapi.AdminTokenSpec{Name: "controllertest"})
	if err != nil {
		h.T.Fatal(err)
	}
	return &apiclient.Config{Server: api.URL, Token: token.Token}
}

// InsertFlows puts flow records straight into the controller's store.
func (h *Controller) InsertFlows(recs ...flowrecord.Record) {
	h.T.Helper()
	if err := h.St.EventTx(context.Background(), func(tx store.EventTx) error { return tx.InsertFlows(recs) }); err != nil {
		h.T.Fatal(err)
	}
}

// InsertAlerts puts alerts straight into the controller's store, in
// order, and sets their ids.
func (h *Controller) InsertAlerts(alerts ...*store.Alert) {
	h.T.Helper()
	err := h.St.EventTx(context.Background(), func(tx store.EventTx) error {
		for _, a := range alerts {
			if err := tx.InsertAlert(a); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.T.Fatal(err)
	}
}

// Call sends an HTTP request with the admin token as bearer (none if
// token is "") and an optional body, and returns the status and the body.
func Call(t testing.TB, method, url, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// FlowRecordKeys are the JSON keys of a flow record (docs/ARCHITECTURE.md,
// "Flow record"): the API, egctl and the flow log all write exactly these.
var FlowRecordKeys = []string{"time", "node", "direction", "protocol", "srcAddr", "srcPort", "srcWorkload", "srcIdentity",
	"dstAddr", "dstPort", "dstWorkload", "dstIdentity", "verdict", "rule", "packets", "bytes", "firstSeen", "lastSeen",
	"packetsSent", "packetsReceived", "bytesSent", "bytesReceived", "state"}
