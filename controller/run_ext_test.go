package controller_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
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

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/testutil"
	"go.uber.org/zap"
)

// start runs the controller until the test ends and returns its admin
// config once written, and its gRPC address.
func start(t *testing.T, dataDir string) (*apiclient.Config, string) {
	t.Helper()
	cfg, grpcAddr, _ := startWith(t, dataDir, nil)
	return cfg, grpcAddr
}

// startWith is start with options changed by change (if not nil); stop
// stops the controller before the test ends (once is enough).
func startWith(t *testing.T, dataDir string, change func(*controller.Options)) (cfg *apiclient.Config, grpcAddr string, stop func()) {
	t.Helper()
	o := testOptions(dataDir)
	// A free port for gRPC, so the test knows where to find it (the HTTP
	// address is in admin.conf).
	o.GRPCListen, o.HTTPListen = freeAddr(t), "127.0.0.1:0"
	if change != nil {
		change(&o)
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dataDir, controller.AdminConfigFile)
	before, _ := os.ReadFile(path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx, o, zap.NewNop()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("controller: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	// Ready once admin.conf is written, or, when it is already up to date,
	// once the API answers with its token.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if now, err := os.ReadFile(path); err == nil && !bytes.Equal(now, before) {
			break
		}
		if before != nil {
			if old, err := apiclient.LoadConfig(path); err == nil && apiAnswers(old) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no admin.conf after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cfg, err := apiclient.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, o.GRPCListen, stop
}

// apiAnswers says whether the API at cfg accepts cfg's token.
func apiAnswers(cfg *apiclient.Config) bool {
	c, err := apiclient.NewClient(cfg)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.Do(ctx, "GET", "/api/v1/agents", nil, nil) == nil
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// get sends no retry: admin.conf is written only once both listeners
// accept.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	code, b := controllertest.Call(t, "GET", url, token, "")
	return code, string(b)
}

func TestAdminConfAndHTTP(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	cfg, grpcAddr := start(t, dir)
	// Both listeners accept by the time admin.conf exists.
	c, err := net.DialTimeout("tcp", grpcAddr, 5*time.Second)
	if err != nil {
		t.Errorf("gRPC listener not accepting once admin.conf is written: %v", err)
	} else {
		c.Close()
	}
	info, err := os.Stat(filepath.Join(dir, controller.AdminConfigFile))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("admin.conf mode %v, %v", info.Mode().Perm(), err)
	}
	if !strings.HasPrefix(cfg.Server, "http://127.0.0.1:") || !strings.HasPrefix(cfg.Token, "egadm1.") {
		t.Errorf("admin.conf: %+v", cfg)
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", 200}, {"/metrics", "", 200}, {"/", "", 200},
		{"/api/v1/agents", "", 401}, {"/api/v1/policies", "egadm1.x.y", 401}, {"/api/v1/nothing", "", 401},
		{"/api/v1/agents", cfg.Token, 200}, {"/api/v1/nothing", cfg.Token, 404},
	} {
		if code, body := get(t, cfg.Server+c.path, c.token); code != c.want {
			t.Errorf("GET %s (token %q): %d, want %d\n%s", c.path, c.token, code, c.want, body)
		}
	}
	if _, body := get(t, cfg.Server+"/metrics", ""); !strings.Contains(body, "eastguard_controller_agents_connected") {
		t.Error("/metrics lacks eastguard_controller_agents_connected")
	}
}

// testOptions are the flags' defaults.
func testOptions(dataDir string) controller.Options {
	return controller.Options{
		DataDir: dataDir, GRPCListen: ":7443", HTTPListen: "127.0.0.1:8080",
		CertTTL: time.Hour, ServerCertTTL: 24 * time.Hour, Heartbeat: 10 * time.Second,
		FlowRetention: 7 * 24 * time.Hour, FlowMaxBytes: 4 << 30, AlertRetention: 30 * 24 * time.Hour,
		WebhookGiveUp: 24 * time.Hour, DeniedSeverity: "warning",
		WebhookRate: 1, WebhookBurst: 20, AlertMaxLivePerRule: 100, AlertMaxResolved: 100000, WebhookOutboxMax: 100000,
		AgentLimits: agentapi.DefaultLimits(),
	}
}

// TestAdminConfRewriteRevokesOldToken: the token of an admin.conf the
// controller replaces (the API moved) stops working; an admin.conf that
// is up to date is kept, and its token keeps working across restarts.
func TestAdminConfRewriteRevokesOldToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	httpAddr := freeAddr(t)
	atFixed := func(o *controller.Options) { o.HTTPListen = httpAddr }
	first, _, stop := startWith(t, dir, atFixed)
	stop()
	again, _, stop := startWith(t, dir, atFixed)
	if again.Token != first.Token {
		t.Errorf("admin.conf rewritten although up to date")
	}
	if code, body := get(t, again.Server+"/api/v1/agents", first.Token); code != 200 {
		t.Errorf("the first admin.conf's token after a restart: %d %s", code, body)
	}
	stop()
	// Another HTTP address: admin.conf is rewritten with a new token, and
	// the old one is revoked.
	moved, _, _ := startWith(t, dir, nil)
	if moved.Token == first.Token || moved.Server == first.Server {
		t.Fatalf("admin.conf not rewritten: %+v", moved)
	}
	if code, body := get(t, moved.Server+"/api/v1/agents", moved.Token); code != 200 {
		t.Errorf("new token: %d %s", code, body)
	}
	if code, body := get(t, moved.Server+"/api/v1/agents", first.Token); code != 401 {
		t.Errorf("the replaced admin.conf's token: %d %s, want 401", code, body)
	}
}

// dialHTTP opens a raw connection to the API at cfg.
func dialHTTP(t *testing.T, cfg *apiclient.Config) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(cfg.Server, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer waits up to 10 s for the server to close c and says
// whether it did.
func closedByServer(t *testing.T, c net.Conn, r *bufio.Reader) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := r.ReadByte()
	if err == nil {
		t.Fatal("the server sent something unasked")
	}
	return errors.Is(err, io.EOF)
}

// TestHTTPListenerTimeouts: a connection that sends nothing, and a
// keep-alive connection left idle after a request, are closed after their
// timeouts (short ones here; the defaults are 10 s and 1 min).
func TestHTTPListenerTimeouts(t *testing.T) {
	cfg, _, _ := startWith(t, filepath.Join(t.TempDir(), "ctl"), func(o *controller.Options) {
		o.HTTP = controller.HTTPLimits{ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	})
	silent := dialHTTP(t, cfg)
	if !closedByServer(t, silent, bufio.NewReader(silent)) {
		t.Error("a connection that sent nothing is still open after 10s")
	}
	idle := dialHTTP(t, cfg)
	r := bufio.NewReader(idle)
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: eastguard\r\n\r\n")
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("keep-alive request: %d, close %v", resp.StatusCode, resp.Close)
	}
	if !closedByServer(t, idle, r) {
		t.Error("an idle keep-alive connection is still open after 10s")
	}
}

// TestHTTPListenerConnectionLimit: beyond the limit, a connection waits
// (unanswered) until another one closes.
func TestHTTPListenerConnectionLimit(t *testing.T) {
	cfg, _, _ := startWith(t, filepath.Join(t.TempDir(), "ctl"), func(o *controller.Options) {
		o.HTTP = controller.HTTPLimits{ReadHeaderTimeout: time.Minute, MaxConns: 2}
	})
	held := []net.Conn{dialHTTP(t, cfg), dialHTTP(t, cfg)}
	third := dialHTTP(t, cfg)
	r := bufio.NewReader(third)
	io.WriteString(third, "GET /healthz HTTP/1.1\r\nHost: eastguard\r\n\r\n")
	third.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := r.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection was served while two were held (limit 2): %v", err)
	}
	held[0].Close()
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("the waiting connection once a slot freed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("the waiting connection: %d", resp.StatusCode)
	}
}

// TestHTTPSFromCA: with --http-tls-from-ca the API is served over TLS with
// a certificate of the controller's CA, which admin.conf carries; egctl's
// client verifies it, plain HTTP and clients without the CA are refused,
// and the certificate rotates without admin.conf changing.
func TestHTTPSFromCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	cfg, _, _ := startWith(t, dir, func(o *controller.Options) {
		o.HTTPTLSFromCA = true
		o.Advertise = []string{"ctl.example"}
		o.ServerCertTTL = 3 * time.Second // rotated after 2 s
	})
	if !strings.HasPrefix(cfg.Server, "https://127.0.0.1:") {
		t.Fatalf("admin.conf server %q, want https", cfg.Server)
	}
	caCerts, err := pki.ParseCertificatesPEM([]byte(cfg.CACert))
	if err != nil || len(caCerts) != 1 || !caCerts[0].IsCA {
		t.Fatalf("admin.conf caCert is not the CA: %v", err)
	}
	if !apiAnswers(cfg) {
		t.Fatal("the API does not answer over TLS with admin.conf's CA")
	}
	host := strings.TrimPrefix(cfg.Server, "https://")
	if code, body := get(t, "http://"+host+"/healthz", ""); code != 400 {
		t.Errorf("plain HTTP to the TLS listener: %d %s", code, body)
	}
	if _, err := http.Get(cfg.Server + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the CA: %v", err)
	}
	// The names: the advertised one too, for clients that reach the
	// controller by it (a Kubernetes Service).
	roots := x509.NewCertPool()
	roots.AddCert(caCerts[0])
	serial := func(name string) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", host, &tls.Config{RootCAs: roots, ServerName: name})
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	first, err := serial("ctl.example")
	if err != nil {
		t.Fatalf("TLS as ctl.example: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "the HTTPS certificate to rotate", func() error {
		s, err := serial("127.0.0.1")
		if err == nil && s == first {
			err = errors.New("same certificate")
		}
		return err
	})
	if !apiAnswers(cfg) {
		t.Error("admin.conf no longer works after the certificate rotated")
	}
}

// TestPolicyChangeLogsNodeNames: a policy change logs which nodes got a
// new rule set, not how many (an operator needs the names).
func TestPolicyChangeLogsNodeNames(t *testing.T) {
	h := controllertest.New(t)
	h.Apply(testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{
		{Name: "web", Node: "node-b", Interface: "veth-web", Addrs: []string{"10.250.1.2"}},
		{Name: "client", Node: "node-a", Interface: "veth-client", Addrs: []string{"10.250.3.2"}},
	}}))
	changes := h.Logs.FilterMessage("policy changed").All()
	if len(changes) != 1 {
		t.Fatalf("%d \"policy changed\" lines, want 1", len(changes))
	}
	if got := fmt.Sprint(changes[0].ContextMap()["nodes-changed"]); got != "[node-a node-b]" {
		t.Errorf("nodes-changed = %s, want [node-a node-b]", got)
	}
}
