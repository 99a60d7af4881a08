package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/alert/webhook/egress"
	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
	"github.com/eastguard/eastguard/controller/alert/webhook/payload/payloadtest"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/sqlite"
	"github.com/eastguard/eastguard/internal/policy"
)

// waitFor bounds every wait of these tests: generous, for a slow, noisy
// machine; a passing run never waits that long.
const waitFor = 30 * time.Second

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", waitFor, what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fixture is an outbox in a real SQLite store (in a temporary directory
// that survives reopening), the webhooks of the policy in force, and what
// the deliverers it starts log and report.
type fixture struct {
	t   *testing.T
	dir string
	st  *sqlite.SQLite
	// secretsDir is the deliverers' --secrets-dir.
	secretsDir string
	// refusePrivate: the deliverers refuse loopback receivers (the
	// default outside tests); false lets them reach httptest servers.
	refusePrivate bool

	mu       sync.Mutex
	hooks    map[string]policy.Webhook
	outcomes []string // "webhook outcome", in order

	logCore zapcore.Core
	logs    *observer.ObservedLogs
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), secretsDir: t.TempDir(), hooks: map[string]policy.Webhook{}}
	f.logCore, f.logs = observer.New(zap.DebugLevel)
	f.open()
	t.Cleanup(f.close)
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	st, err := sqlite.Open(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	f.st = st
}

func (f *fixture) close() {
	if f.st != nil {
		if err := f.st.Close(); err != nil {
			f.t.Errorf("close store: %v", err)
		}
		f.st = nil
	}
}

// hook sets a webhook of the policy in force.
func (f *fixture) hook(name, url, format string, secret *policy.SecretRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks[name] = policy.Webhook{Meta: policy.Meta{Name: name}, URL: url, Format: format, SecretFrom: secret}
}

func (f *fixture) lookup(name string) (policy.Webhook, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.hooks[name]
	return w, ok
}

func (f *fixture) outcome(hook, outcome string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.outcomes = append(f.outcomes, hook+" "+outcome)
}

// outcomesOf returns the outcomes reported for a webhook, in order.
func (f *fixture) outcomesOf(hook string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, o := range f.outcomes {
		if h, oc, _ := strings.Cut(o, " "); h == hook {
			out = append(out, oc)
		}
	}
	return out
}

// raise stores an alert (a copy of sshAlert with its own key) and queues
// one delivery of event to each webhook, queued at created. It returns
// the alert and the deliveries' IDs.
func (f *fixture) raise(event string, created time.Time, hooks ...string) (store.Alert, []int64) {
	f.t.Helper()
	a := payloadtest.SSHAlert()
	a.ID, a.Notify, a.Created = 0, hooks, created
	var ids []int64
	err := f.st.EventTx(context.Background(), func(tx store.EventTx) error {
		a.Key = fmt.Sprintf("unexpected-ssh|203.0.113.7|web-1|22/TCP|%d", time.Now().UnixNano())
		if err := tx.InsertAlert(&a); err != nil {
			return err
		}
		var err error
		ids, err = queue(tx, a.ID, event, created, hooks...)
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return a, ids
}

// queue queues deliveries of an alert stored before.
func (f *fixture) queue(alertID int64, event string, created time.Time, hooks ...string) []int64 {
	f.t.Helper()
	var ids []int64
	err := f.st.EventTx(context.Background(), func(tx store.EventTx) error {
		var err error
		ids, err = queue(tx, alertID, event, created, hooks...)
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return ids
}

func queue(tx store.EventTx, alertID int64, event string, created time.Time, hooks ...string) ([]int64, error) {
	ds := make([]store.Delivery, len(hooks))
	for i, h := range hooks {
		ds[i] = store.Delivery{AlertID: alertID, Webhook: h, Event: event, NextAttempt: created, Created: created}
	}
	if err := tx.AddDeliveries(ds); err != nil {
		return nil, err
	}
	ids := make([]int64, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	return ids, nil
}

func (f *fixture) delivery(id int64) store.Delivery {
	f.t.Helper()
	d, err := f.st.Delivery(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// waitState waits until a delivery is in state and returns it.
func (f *fixture) waitState(id int64, state string) store.Delivery {
	f.t.Helper()
	var d store.Delivery
	eventually(f.t, fmt.Sprintf("delivery %d %s", id, state), func() error {
		d = f.delivery(id)
		if d.State != state {
			return fmt.Errorf("%+v", d)
		}
		return nil
	})
	return d
}

// waitAttempted waits until a delivery's failed attempts are recorded
// (at least n of them, still pending) and returns it.
func (f *fixture) waitAttempted(id int64, n int) store.Delivery {
	f.t.Helper()
	var d store.Delivery
	eventually(f.t, fmt.Sprintf("delivery %d attempted %d times", id, n), func() error {
		d = f.delivery(id)
		if d.Attempts < n || d.State != store.DeliveryPending || d.LastError == "" {
			return fmt.Errorf("%+v", d)
		}
		return nil
	})
	return d
}

// pending returns how many deliveries are pending.
func (f *fixture) pending() int {
	f.t.Helper()
	_, n, err := f.st.NextDeliveryAt(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// running is a Deliverer whose Run is in a goroutine.
type running struct {
	t      *testing.T
	d      *webhook.Deliverer
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs a Deliverer on the fixture's store and webhooks; zero
// durations of cfg are set for tests (a generous attempt timeout, short
// backoffs). It is stopped when the test ends.
func (f *fixture) start(cfg webhook.Config) *running {
	f.t.Helper()
	if cfg.Store == nil {
		cfg.Store = f.st
	}
	cfg.Webhooks = f.lookup
	cfg.Log = zap.New(f.logCore)
	cfg.Outcome = f.outcome
	if cfg.Secrets == nil {
		cfg.Secrets = egress.NewSecrets(f.secretsDir)
	}
	// The receivers are httptest servers on 127.0.0.1.
	cfg.Destinations.AllowPrivate = !f.refusePrivate
	if cfg.Timeout == 0 {
		cfg.Timeout = waitFor
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	}
	d, err := webhook.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: f.t, d: d, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		d.Run(ctx)
	}()
	f.t.Cleanup(r.stop)
	return r
}

// stop cancels Run and waits for it to return (which waits for the
// attempts in flight).
func (r *running) stop() {
	r.t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(waitFor):
		r.t.Fatalf("Run still running %v after its context was cancelled", waitFor)
	}
}

// received is one request a receiver got.
type received struct {
	path   string
	header http.Header
	body   []byte
	status int // what the receiver answered; 0 when it never did
}

// receiver is an httptest webhook receiver that records every request.
type receiver struct {
	*httptest.Server
	release chan struct{}

	mu          sync.Mutex
	reqs        []received
	inflight    int
	maxInflight int
}

// newReceiver serves handle, which gets the 1-based number of each
// request.
func newReceiver(t *testing.T, handle func(rc *receiver, n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{release: make(chan struct{})}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{path: r.URL.Path, header: r.Header.Clone(), body: body})
		n := len(rc.reqs)
		rc.inflight++
		rc.maxInflight = max(rc.maxInflight, rc.inflight)
		rc.mu.Unlock()
		sw := &statusWriter{ResponseWriter: w}
		handle(rc, n, sw, r)
		rc.mu.Lock()
		rc.reqs[n-1].status = sw.status
		rc.inflight--
		rc.mu.Unlock()
	}))
	t.Cleanup(func() {
		close(rc.release)
		rc.Close()
	})
	return rc
}

// answer answers every request with the statuses in turn, the last one
// repeated.
func answer(statuses ...int) func(*receiver, int, http.ResponseWriter, *http.Request) {
	return func(_ *receiver, n int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(statuses[min(n, len(statuses))-1])
	}
}

// hang keeps a request unanswered until the client gives up or the test
// ends.
func (rc *receiver) hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-rc.release:
	}
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.reqs)
}

// answered returns the requests answered with a 2xx.
func (rc *receiver) answered() []received {
	var out []received
	for _, r := range rc.requests() {
		if r.status >= 200 && r.status <= 299 {
			out = append(out, r)
		}
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// fakeClock is a Deliverer's clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestDeliverJSON: a json delivery arrives once, with the documented
// headers, a body of the documented schema and a signature the receiver
// verifies with Verify.
func TestDeliverJSON(t *testing.T) {
	f := newFixture(t)
	if err := os.WriteFile(filepath.Join(f.secretsDir, "secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var verifyErr error
	rc := newReceiver(t, func(rc *receiver, n int, w http.ResponseWriter, r *http.Request) {
		body := rc.requests()[n-1].body
		if err := payload.Verify([]byte("s3cret"), r.Header.Get(payload.SignatureHeader), body, time.Now(), 0); err != nil {
			rc.mu.Lock()
			verifyErr = err
			rc.mu.Unlock()
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	f.hook("security-team", rc.URL+"/eastguard", policy.FormatJSON, &policy.SecretRef{File: "secret"})
	a, ids := f.raise(store.EventFiring, time.Now(), "security-team")
	r := f.start(webhook.Config{DashboardURL: payloadtest.Dashboard})
	r.d.Kick()

	d := f.waitState(ids[0], store.DeliveryDelivered)
	r.stop() // nothing in flight, nothing more to send
	if d.Attempts != 1 || d.LastError != "" || d.Finished.IsZero() {
		t.Errorf("delivery %+v, want delivered at the first attempt", d)
	}
	reqs := rc.requests()
	rc.mu.Lock()
	vErr := verifyErr
	rc.mu.Unlock()
	if len(reqs) != 1 || vErr != nil {
		t.Fatalf("%d requests, want 1; verify error: %v", len(reqs), vErr)
	}
	req := reqs[0]
	if payload.DeliveryHeader != "X-Eastguard-Delivery" || payload.EventHeader != "X-Eastguard-Event" ||
		payload.SignatureHeader != "X-Eastguard-Signature" {
		t.Errorf("header names %s, %s, %s differ from the documented ones", payload.DeliveryHeader, payload.EventHeader, payload.SignatureHeader)
	}
	for h, want := range map[string]string{
		"Content-Type":         "application/json",
		"User-Agent":           "eastguard-controller",
		"X-Eastguard-Delivery": strconv.FormatInt(ids[0], 10),
		"X-Eastguard-Event":    "firing",
	} {
		if got := req.header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if sig := req.header.Get("X-Eastguard-Signature"); !strings.HasPrefix(sig, "t=") {
		t.Errorf("signature header %q", sig)
	}
	if req.path != "/eastguard" {
		t.Errorf("posted to %s", req.path)
	}
	p := payloadtest.CheckJSON(t, req.body)
	for path, want := range map[string]string{
		"event":      "firing",
		"deliveryId": strconv.FormatInt(ids[0], 10),
		"alert.id":   strconv.FormatInt(a.ID, 10),
		"alert.url":  fmt.Sprintf("https://eastguard.example.com/#/alerts/%d", a.ID),
	} {
		if got := payloadtest.Get(p, strings.Split(path, ".")...); got != want {
			t.Errorf("%s = %v, want %s", path, got, want)
		}
	}
	if got := f.outcomesOf("security-team"); !slices.Equal(got, []string{webhook.OutcomeDelivered}) {
		t.Errorf("outcomes %v, want [delivered]", got)
	}
}

// TestDeliverUnsigned: without a secret, nothing is signed; slack
// deliveries are never signed.
func TestDeliverUnsigned(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, answer(http.StatusOK))
	if err := os.WriteFile(filepath.Join(f.secretsDir, "secret"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.hook("plain", rc.URL+"/json", policy.FormatJSON, nil)
	f.hook("slack", rc.URL+"/slack", policy.FormatSlack, &policy.SecretRef{File: "secret"})
	_, ids := f.raise(store.EventFiring, time.Now(), "plain", "slack")
	f.start(webhook.Config{}).d.Kick()
	for _, id := range ids {
		f.waitState(id, store.DeliveryDelivered)
	}
	for _, r := range rc.requests() {
		if sig := r.header.Get(payload.SignatureHeader); sig != "" {
			t.Errorf("%s signed: %q", r.path, sig)
		}
		if r.path == "/slack" {
			payloadtest.SlackBody(t, r.body)
		}
	}
}

// TestDeliverSecretUnreadable: a json webhook whose secret cannot be read
// gets nothing (never an unsigned request) and is retried.
func TestDeliverSecretUnreadable(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, answer(http.StatusOK))
	f.hook("security-team", rc.URL, policy.FormatJSON, &policy.SecretRef{Env: "EASTGUARD_TEST_WEBHOOK_SECRET_NEVER_SET"})
	_, ids := f.raise(store.EventFiring, time.Now(), "security-team")
	r := f.start(webhook.Config{})
	r.d.Kick()
	d := f.waitAttempted(ids[0], 2)
	r.stop()
	if !strings.Contains(d.LastError, "EASTGUARD_TEST_WEBHOOK_SECRET_NEVER_SET is not set") {
		t.Errorf("last error %q does not say the secret is missing", d.LastError)
	}
	if n := len(rc.requests()); n != 0 {
		t.Errorf("%d requests sent without the secret", n)
	}
	if got := f.outcomesOf("security-team"); len(got) == 0 || got[0] != webhook.OutcomeRetry {
		t.Errorf("outcomes %v, want retries", got)
	}
}

// TestDeliverRetries: failed attempts are retried until one succeeds;
// the delivery ends delivered, with the number of attempts and the last
// error kept.
func TestDeliverRetries(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(*receiver, int, http.ResponseWriter, *http.Request)
		timeout time.Duration
		// wantAttempts is exact when exact, else a minimum (a timeout on a
		// loaded machine may cost an extra attempt).
		wantAttempts int
		exact        bool
		wantErr      string
		wantOutcomes []string
	}{
		{"500 twice then 200", func(_ *receiver, n int, w http.ResponseWriter, _ *http.Request) {
			if n <= 2 {
				http.Error(w, "boom\n\tline two", http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusOK)
		}, 0, 3, true, "HTTP 500 Internal Server Error: boom line two",
			[]string{webhook.OutcomeRetry, webhook.OutcomeRetry, webhook.OutcomeDelivered}},
		{"429 then 202", answer(http.StatusTooManyRequests, http.StatusAccepted), 0, 2, true, "HTTP 429 Too Many Requests",
			[]string{webhook.OutcomeRetry, webhook.OutcomeDelivered}},
		{"404 is retried too", answer(http.StatusNotFound, http.StatusOK), 0, 2, true, "HTTP 404 Not Found",
			[]string{webhook.OutcomeRetry, webhook.OutcomeDelivered}},
		{"hangs past the timeout, then answers", func(rc *receiver, n int, w http.ResponseWriter, r *http.Request) {
			if n == 1 {
				rc.hang(r)
				return
			}
			w.WriteHeader(http.StatusOK)
		}, 500 * time.Millisecond, 2, false, "POST timed out after 500ms", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			rc := newReceiver(t, tc.handle)
			f.hook("security-team", rc.URL, policy.FormatJSON, nil)
			_, ids := f.raise(store.EventFiring, time.Now(), "security-team")
			r := f.start(webhook.Config{Timeout: tc.timeout})
			r.d.Kick()
			d := f.waitState(ids[0], store.DeliveryDelivered)
			r.stop() // the outcome is reported after it is recorded
			if d.Attempts < tc.wantAttempts || (tc.exact && d.Attempts != tc.wantAttempts) {
				t.Errorf("attempts %d, want %d", d.Attempts, tc.wantAttempts)
			}
			if !strings.Contains(d.LastError, tc.wantErr) {
				t.Errorf("last error %q, want it to say %q", d.LastError, tc.wantErr)
			}
			if got := len(rc.answered()); got != 1 {
				t.Errorf("answered with a 2xx %d times, want once", got)
			}
			if tc.wantOutcomes != nil {
				if got := f.outcomesOf("security-team"); !slices.Equal(got, tc.wantOutcomes) {
					t.Errorf("outcomes %v, want %v", got, tc.wantOutcomes)
				}
			} else if got := f.outcomesOf("security-team"); len(got) < 2 || got[len(got)-1] != webhook.OutcomeDelivered {
				t.Errorf("outcomes %v, want retries then delivered", got)
			}
		})
	}
}

// TestDeliverGiveUp: a webhook that always fails is given up once
// GiveUpAfter has passed since the delivery was queued, whether the
// delivery was being retried or held back behind the webhook's failure,
// and the give-up is recorded with the last error.
func TestDeliverGiveUp(t *testing.T) {
	f := newFixture(t)
	clk := &fakeClock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	rc := newReceiver(t, func(_ *receiver, _ int, w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	})
	f.hook("security-team", rc.URL, policy.FormatJSON, nil)
	start := clk.Now()
	// Two alerts: deliveries of one alert to one webhook wait for each
	// other (order), those of two alerts do not.
	_, ids := f.raise(store.EventFiring, start, "security-team")
	_, more := f.raise(store.EventFiring, start, "security-team")
	ids = append(ids, more...)
	// Concurrency 2: at most one attempt to one webhook, so the first
	// delivery is attempted, fails, and the second is held behind it.
	r := f.start(webhook.Config{Now: clk.Now, Rand: func() float64 { return 0 }, Concurrency: 2,
		MinBackoff: time.Minute, MaxBackoff: 10 * time.Minute, GiveUpAfter: time.Hour})
	r.d.Kick()

	first := f.waitAttempted(ids[0], 1)
	if want := start.Add(time.Minute); !first.NextAttempt.Equal(want) {
		t.Errorf("first retry at %v, want %v (MinBackoff with no jitter)", first.NextAttempt, want)
	}
	var held store.Delivery
	eventually(t, "the second delivery held back", func() error {
		held = f.delivery(ids[1])
		if !strings.HasPrefix(held.LastError, "held back while the webhook is failing: HTTP 503") {
			return fmt.Errorf("%+v", held)
		}
		return nil
	})
	if held.Attempts != 0 || !held.NextAttempt.Equal(start.Add(time.Minute)) {
		t.Errorf("held delivery %+v, want no attempt and the next at the webhook's retry", held)
	}

	clk.Advance(2 * time.Hour)
	r.d.Kick()
	for _, id := range ids {
		f.waitState(id, store.DeliveryGaveUp)
	}
	r.stop() // outcomes and logs follow the store write
	for _, id := range ids {
		d := f.delivery(id)
		if d.Attempts != 1 || !strings.Contains(d.LastError, "HTTP 503 Service Unavailable: down for maintenance") ||
			!d.Finished.Equal(clk.Now()) {
			t.Errorf("given up delivery %+v, want 1 attempt, the receiver's error and finished now", d)
		}
	}
	if got := f.outcomesOf("security-team"); !slices.Equal(got, []string{webhook.OutcomeRetry, webhook.OutcomeGaveUp, webhook.OutcomeGaveUp}) {
		t.Errorf("outcomes %v, want retry, gave_up, gave_up", got)
	}
	if f.pending() != 0 {
		t.Errorf("%d deliveries still pending", f.pending())
	}
	if n := len(f.logs.FilterMessage("webhook delivery given up").All()); n != 2 {
		t.Errorf("%d give-ups logged, want 2", n)
	}
	if n := len(rc.requests()); n != 2 {
		t.Errorf("%d requests, want 2 (one attempt each)", n)
	}
}

// TestDeliverGiveUpDeadline: a retry is never scheduled past the
// give-up deadline, and the last try there gives up.
func TestDeliverGiveUpDeadline(t *testing.T) {
	f := newFixture(t)
	clk := &fakeClock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	rc := newReceiver(t, answer(http.StatusBadGateway))
	f.hook("h", rc.URL, policy.FormatJSON, nil)
	start := clk.Now()
	_, ids := f.raise(store.EventFiring, start, "h")
	r := f.start(webhook.Config{Now: clk.Now, MinBackoff: 2 * time.Minute, MaxBackoff: 10 * time.Minute, GiveUpAfter: 90 * time.Second})
	r.d.Kick()
	if d := f.waitAttempted(ids[0], 1); !d.NextAttempt.Equal(start.Add(90 * time.Second)) {
		t.Errorf("retry at %v, want the give-up deadline %v", d.NextAttempt, start.Add(90*time.Second))
	}
	clk.Advance(90 * time.Second)
	r.d.Kick()
	d := f.waitState(ids[0], store.DeliveryGaveUp)
	if !strings.Contains(d.LastError, "HTTP 502") {
		t.Errorf("given up delivery %+v", d)
	}
}

// TestDeliverRetryAfter: a receiver's Retry-After (seconds or a date)
// sets the next attempt when longer than the backoff, capped at
// MaxBackoff, and holds the webhook's other deliveries as long.
func TestDeliverRetryAfter(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		retryAfter string
		wait       time.Duration
	}{
		{"seconds", "120", 2 * time.Minute},
		{"capped at MaxBackoff", "3600", 10 * time.Minute},
		{"shorter than the backoff", "1", time.Minute},
		{"HTTP date", t0.Add(5 * time.Minute).Format(http.TimeFormat), 5 * time.Minute},
		{"date in the past", t0.Add(-time.Hour).Format(http.TimeFormat), time.Minute},
		{"malformed", "soon", time.Minute},
		{"huge", "99999999999999999", 10 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			clk := &fakeClock{now: t0}
			rc := newReceiver(t, func(_ *receiver, n int, w http.ResponseWriter, _ *http.Request) {
				if n == 1 {
					w.Header().Set("Retry-After", tc.retryAfter)
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				w.WriteHeader(http.StatusOK)
			})
			f.hook("slack", rc.URL, policy.FormatSlack, nil)
			_, ids := f.raise(store.EventFiring, t0, "slack")
			_, more := f.raise(store.EventFiring, t0, "slack")
			ids = append(ids, more...)
			r := f.start(webhook.Config{Now: clk.Now, Rand: func() float64 { return 0 }, Concurrency: 2,
				MinBackoff: time.Minute, MaxBackoff: 10 * time.Minute, GiveUpAfter: 24 * time.Hour})
			r.d.Kick()
			if d := f.waitAttempted(ids[0], 1); !d.NextAttempt.Equal(t0.Add(tc.wait)) {
				t.Errorf("next attempt in %v, want %v", d.NextAttempt.Sub(t0), tc.wait)
			}
			eventually(t, "the other delivery held", func() error {
				d := f.delivery(ids[1])
				if d.LastError == "" {
					return fmt.Errorf("%+v", d)
				}
				if !d.NextAttempt.Equal(t0.Add(tc.wait)) {
					t.Errorf("other delivery held until %v, want %v", d.NextAttempt.Sub(t0), tc.wait)
				}
				return nil
			})
			clk.Advance(tc.wait)
			r.d.Kick()
			f.waitState(ids[0], store.DeliveryDelivered)
			f.waitState(ids[1], store.DeliveryDelivered)
			// The probe after the hold is the delivery with the fewest
			// attempts, then the rest.
			var order []string
			for _, req := range rc.requests() {
				order = append(order, req.header.Get(payload.DeliveryHeader))
			}
			want := []string{strconv.FormatInt(ids[0], 10), strconv.FormatInt(ids[1], 10), strconv.FormatInt(ids[0], 10)}
			if !slices.Equal(order, want) {
				t.Errorf("requests for deliveries %v, want %v", order, want)
			}
		})
	}
}

// TestDeliverDeadWebhookDoesNotDelayOthers: a receiver that never answers
// holds at most half the attempt slots; deliveries to a healthy webhook
// queued behind its go out meanwhile, and stopping does not wait for the
// hung attempts (nothing is recorded for them: they are sent again by the
// next run).
func TestDeliverDeadWebhookDoesNotDelayOthers(t *testing.T) {
	f := newFixture(t)
	dead := newReceiver(t, func(rc *receiver, _ int, _ http.ResponseWriter, r *http.Request) { rc.hang(r) })
	healthy := newReceiver(t, answer(http.StatusOK))
	f.hook("dead", dead.URL, policy.FormatJSON, nil)
	f.hook("healthy", healthy.URL, policy.FormatJSON, nil)
	now := time.Now()
	var deadIDs, healthyIDs []int64
	for range 6 {
		_, ids := f.raise(store.EventFiring, now.Add(-time.Minute), "dead")
		deadIDs = append(deadIDs, ids...)
	}
	for range 6 {
		_, ids := f.raise(store.EventFiring, now, "healthy")
		healthyIDs = append(healthyIDs, ids...)
	}
	// The attempt timeout is far longer than the test may take: the
	// healthy deliveries cannot be waiting for the dead ones to time out.
	r := f.start(webhook.Config{Concurrency: 4, Timeout: time.Hour})
	r.d.Kick()
	for _, id := range healthyIDs {
		f.waitState(id, store.DeliveryDelivered)
	}
	dead.mu.Lock()
	maxInflight := dead.maxInflight
	dead.mu.Unlock()
	if maxInflight > 2 {
		t.Errorf("%d attempts at once to the dead webhook, want at most half of Concurrency 4", maxInflight)
	}
	r.stop()
	for _, id := range deadIDs {
		if d := f.delivery(id); d.State != store.DeliveryPending || d.Attempts != 0 || d.LastError != "" {
			t.Errorf("dead webhook's delivery after stopping: %+v, want pending and untouched", d)
		}
	}
	if got := len(healthy.answered()); got != len(healthyIDs) {
		t.Errorf("healthy receiver answered %d requests, want %d", got, len(healthyIDs))
	}
}

// TestDeliverInOrder: deliveries of one alert to one webhook go out in
// the order queued (firing before resolved), even when the first fails
// and is retried.
func TestDeliverInOrder(t *testing.T) {
	f := newFixture(t)
	var failed sync.Map
	rc := newReceiver(t, func(rc *receiver, n int, w http.ResponseWriter, _ *http.Request) {
		req := rc.requests()[n-1]
		id := req.header.Get(payload.DeliveryHeader)
		if _, again := failed.LoadOrStore(id, true); !again && req.header.Get(payload.EventHeader) == store.EventFiring {
			w.WriteHeader(http.StatusInternalServerError) // every firing fails once
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	f.hook("h", rc.URL, policy.FormatJSON, nil)
	now := time.Now()
	var alerts []int64
	for range 3 {
		a, _ := f.raise(store.EventFiring, now, "h")
		f.queue(a.ID, store.EventResolved, now, "h")
		alerts = append(alerts, a.ID)
	}
	f.start(webhook.Config{Concurrency: 8}).d.Kick()
	eventually(t, "every delivery done", func() error {
		if n := f.pending(); n != 0 {
			return fmt.Errorf("%d pending", n)
		}
		return nil
	})
	for _, id := range alerts {
		var events []string
		for _, req := range rc.requests() {
			p := payloadtest.CheckJSON(t, req.body)
			if payloadtest.Get(p, "alert", "id") == strconv.FormatInt(id, 10) {
				events = append(events, fmt.Sprintf("%s:%d", payloadtest.Get(p, "event"), req.status))
			}
		}
		if want := []string{"firing:500", "firing:200", "resolved:200"}; !slices.Equal(events, want) {
			t.Errorf("alert %d: requests %v, want %v", id, events, want)
		}
	}
}

// TestDeliverRefresh: refresh deliveries are re-posts for Alertmanager;
// to other formats they are marked delivered without a request (and no
// outcome: nothing was attempted).
func TestDeliverRefresh(t *testing.T) {
	f := newFixture(t)
	others := newReceiver(t, answer(http.StatusOK))
	am := newReceiver(t, answer(http.StatusOK))
	f.hook("json", others.URL+"/json", policy.FormatJSON, nil)
	f.hook("slack", others.URL+"/slack", policy.FormatSlack, nil)
	f.hook("am", am.URL+"/alertmanager/", policy.FormatAlertmanager, nil)
	_, ids := f.raise(store.EventRefresh, time.Now(), "json", "slack", "am")
	r := f.start(webhook.Config{})
	r.d.Kick()
	for _, id := range ids {
		f.waitState(id, store.DeliveryDelivered)
	}
	r.stop()
	for i, id := range ids {
		d := f.delivery(id)
		if wantAttempts := []int{0, 0, 1}[i]; d.Attempts != wantAttempts {
			t.Errorf("delivery %+v: attempts %d, want %d", d, d.Attempts, wantAttempts)
		}
	}
	if n := len(others.requests()); n != 0 {
		t.Errorf("%d refresh requests to json and slack webhooks", n)
	}
	reqs := am.requests()
	if len(reqs) != 1 || reqs[0].path != "/alertmanager/api/v2/alerts" || reqs[0].header.Get(payload.EventHeader) != store.EventRefresh {
		t.Fatalf("alertmanager requests %+v, want one refresh POST to /alertmanager/api/v2/alerts", reqs)
	}
	if alerts := payloadtest.CheckAlertmanager(t, reqs[0].body); len(alerts) != 1 || !time.Time(alerts[0].EndsAt).After(time.Now()) {
		t.Errorf("refresh of an open alert: %+v, want one alert ending in the future", alerts)
	}
	f.mu.Lock()
	outcomes := slices.Clone(f.outcomes)
	f.mu.Unlock()
	if !slices.Equal(outcomes, []string{"am delivered"}) {
		t.Errorf("outcomes %v, want only am delivered", outcomes)
	}
}

// TestDeliverRedirectNotFollowed: a redirect is a failure to retry, not
// a move: the alert (and its signature) never reaches where it points.
func TestDeliverRedirectNotFollowed(t *testing.T) {
	elsewhere := newReceiver(t, answer(http.StatusOK))
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			f := newFixture(t)
			rc := newReceiver(t, func(_ *receiver, _ int, w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, elsewhere.URL+"/stolen", code)
			})
			f.hook("h", rc.URL, policy.FormatJSON, nil)
			_, ids := f.raise(store.EventFiring, time.Now(), "h")
			r := f.start(webhook.Config{})
			r.d.Kick()
			d := f.waitAttempted(ids[0], 1)
			r.stop()
			if want := fmt.Sprintf("HTTP %d %s", code, http.StatusText(code)); !strings.Contains(d.LastError, want) {
				t.Errorf("last error %q, want %q", d.LastError, want)
			}
		})
	}
	if n := len(elsewhere.requests()); n != 0 {
		t.Errorf("redirect followed: %d requests reached its target", n)
	}
}

// TestDeliverErrorsHideURL: what is recorded and logged about a failure
// never contains the webhook URL (a Slack URL is its own secret).
func TestDeliverErrorsHideURL(t *testing.T) {
	const token = "T0000/B0000/s3cr3tt0ken"
	hung := newReceiver(t, func(rc *receiver, _ int, _ http.ResponseWriter, r *http.Request) { rc.hang(r) })
	failing := newReceiver(t, answer(http.StatusForbidden))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + lis.Addr().String()
	lis.Close()

	tests := []struct {
		name, url, format, wantErr string
		timeout                    time.Duration
	}{
		{"connection refused", refused + "/services/" + token, policy.FormatSlack, "connection refused", 0},
		{"timeout", hung.URL + "/services/" + token, policy.FormatSlack, "timed out", 300 * time.Millisecond},
		{"HTTP error", failing.URL + "/services/" + token, policy.FormatSlack, "HTTP 403 Forbidden", 0},
		{"unparsable URL", refused + "/services/" + token + "/%zz", policy.FormatSlack, "invalid URL escape", 0},
		{"unparsable URL, json", refused + "/services/" + token + "\x7f", policy.FormatJSON, "invalid control character", 0},
		{"unparsable URL, alertmanager", refused + "/services/" + token + "/%zz", policy.FormatAlertmanager, "invalid URL escape", 0},
		{"no such host", "http://eastguard-test.invalid/services/" + token, policy.FormatSlack, "POST", 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.hook("h", tc.url, tc.format, nil)
			_, ids := f.raise(store.EventFiring, time.Now(), "h")
			r := f.start(webhook.Config{Timeout: tc.timeout})
			r.d.Kick()
			d := f.waitAttempted(ids[0], 1)
			r.stop()
			if !strings.Contains(d.LastError, tc.wantErr) {
				t.Errorf("last error %q, want it to say %q", d.LastError, tc.wantErr)
			}
			if strings.Contains(d.LastError, "s3cr3t") || strings.Contains(d.LastError, "/services/") {
				t.Errorf("last error %q contains the URL", d.LastError)
			}
			for _, e := range f.logs.All() {
				line := fmt.Sprint(e.Message, e.ContextMap())
				if strings.Contains(line, "s3cr3t") {
					t.Errorf("log line contains the URL: %s", line)
				}
			}
		})
	}
}

// TestDeliverGone: a delivery whose webhook left the policy, or whose
// alert was deleted, is given up without a request.
func TestDeliverGone(t *testing.T) {
	f := newFixture(t)
	rc := newReceiver(t, answer(http.StatusOK))
	f.hook("h", rc.URL, policy.FormatJSON, nil)
	_, gone := f.raise(store.EventFiring, time.Now(), "removed")
	r := f.start(webhook.Config{})
	r.d.Kick()
	d := f.waitState(gone[0], store.DeliveryGaveUp)
	r.stop()
	if !strings.Contains(d.LastError, `webhook "removed" is no longer in the policy`) {
		t.Errorf("given up delivery %+v", d)
	}
	if got := f.outcomesOf("removed"); !slices.Equal(got, []string{webhook.OutcomeGaveUp}) {
		t.Errorf("outcomes %v, want gave_up", got)
	}
	if n := len(rc.requests()); n != 0 {
		t.Errorf("%d requests", n)
	}
}

// TestOutboxSurvivesRestart: deliveries queued while the receiver is
// down stay in the store across a stop, a close and a reopen; the next
// Deliverer sends each exactly once and leaves nothing pending.
func TestOutboxSurvivesRestart(t *testing.T) {
	tests := []struct {
		name string
		down func(rc *receiver, w http.ResponseWriter, r *http.Request)
	}{
		{"receiver refusing", func(_ *receiver, w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}},
		{"receiver hanging", func(rc *receiver, _ http.ResponseWriter, r *http.Request) { rc.hang(r) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			var mu sync.Mutex
			up := false
			rc := newReceiver(t, func(rc *receiver, _ int, w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				ok := up
				mu.Unlock()
				if !ok {
					tc.down(rc, w, r)
					return
				}
				w.WriteHeader(http.StatusOK)
			})
			f.hook("json", rc.URL+"/json", policy.FormatJSON, nil)
			f.hook("slack", rc.URL+"/slack", policy.FormatSlack, nil)
			f.hook("am", rc.URL+"/am", policy.FormatAlertmanager, nil)
			var ids []int64
			// Queued before any Deliverer runs, and while one runs.
			_, queued := f.raise(store.EventFiring, time.Now(), "json", "slack", "am")
			ids = append(ids, queued...)
			r := f.start(webhook.Config{Timeout: time.Hour})
			a, queued := f.raise(store.EventFiring, time.Now(), "json", "slack", "am")
			ids = append(ids, queued...)
			ids = append(ids, f.queue(a.ID, store.EventResolved, time.Now(), "json", "slack", "am")...)
			r.d.Kick()
			eventually(t, "the receiver tried", func() error {
				if len(rc.requests()) == 0 {
					return errors.New("no request yet")
				}
				return nil
			})
			r.stop()
			for _, id := range ids {
				if d := f.delivery(id); d.State != store.DeliveryPending {
					t.Fatalf("delivery %+v, want pending while the receiver is down", d)
				}
			}

			f.close()
			f.open()
			mu.Lock()
			up = true
			mu.Unlock()
			r = f.start(webhook.Config{Timeout: time.Hour})
			r.d.Kick()
			eventually(t, "the outbox empty", func() error {
				if n := f.pending(); n != 0 {
					return fmt.Errorf("%d pending", n)
				}
				return nil
			})
			r.stop() // no attempt in flight, none to come
			got := map[string]int{}
			for _, req := range rc.answered() {
				got[req.header.Get(payload.DeliveryHeader)]++
			}
			for _, id := range ids {
				d := f.delivery(id)
				if d.State != store.DeliveryDelivered {
					t.Errorf("delivery %+v, want delivered", d)
				}
				if n := got[strconv.FormatInt(id, 10)]; n != 1 {
					t.Errorf("delivery %d (%s to %s) received %d times, want once", id, d.Event, d.Webhook, n)
				}
			}
			if len(got) != len(ids) {
				t.Errorf("received deliveries %v, want exactly %v", got, ids)
			}
		})
	}
}
