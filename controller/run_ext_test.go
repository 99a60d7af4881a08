package controller_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"go.uber.org/zap"
)

// start runs the controller until the test ends and returns its admin
// config once written, and its gRPC address.
func start(t *testing.T, dataDir string) (*apiclient.Config, string) {
	t.Helper()
	// A free port for gRPC, so the test knows where to find it (the HTTP
	// address is in admin.conf).
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := lis.Addr().String()
	lis.Close()
	o := testOptions(dataDir)
	o.GRPCListen, o.HTTPListen = grpcAddr, "127.0.0.1:0"
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	path := filepath.Join(dataDir, controller.AdminConfigFile)
	go func() { done <- controller.Run(ctx, o, zap.NewNop()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
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
	return cfg, grpcAddr
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
		WebhookGiveUp: 24 * time.Hour, DeniedSeverity: "warning", AgentLimits: agentapi.DefaultLimits(),
	}
}
