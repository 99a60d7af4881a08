package controller_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
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
