package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/store/postgres"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/internal/testutil"
)

// TestMain stops the throw-away PostgreSQL of the Postgres tests.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// runPostgresController runs controller.Run on the PostgreSQL database
// dsn (as eastguard-controller --store does) until stop is called, and
// returns its admin config once written; gRPC listens on grpcAddr.
func runPostgresController(t *testing.T, dataDir, dsn, keyFile, grpcAddr string) (cfg *apiclient.Config, stop func()) {
	t.Helper()
	o := controller.Options{
		DataDir: dataDir, Store: dsn, CAKeyEncryptionKeyFile: keyFile,
		GRPCListen: grpcAddr, HTTPListen: "127.0.0.1:0",
		CertTTL: time.Hour, ServerCertTTL: 24 * time.Hour, Heartbeat: 200 * time.Millisecond,
		FlowRetention: 7 * 24 * time.Hour, FlowMaxBytes: 4 << 30, AlertRetention: 30 * 24 * time.Hour,
		WebhookGiveUp: 24 * time.Hour, DeniedSeverity: "warning",
		WebhookRate: 1, WebhookBurst: 20, AlertMaxLivePerRule: 100, AlertMaxResolved: 100000, WebhookOutboxMax: 100000,
		AgentLimits: agentapi.DefaultLimits(),
	}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dataDir, controller.AdminConfigFile)
	os.Remove(path) // written again once both listeners accept
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx, o, zap.NewNop()) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("controller: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	testutil.Eventually(t, 30*time.Second, "admin.conf written", func() error {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("controller exited: %v", err)
		default:
		}
		var err error
		cfg, err = apiclient.LoadConfig(path)
		return err
	})
	return cfg, stop
}

// TestPostgresControllerEndToEnd: eastguard-controller on PostgreSQL
// (controller.Run with --store and --ca-key-encryption-key-file): an agent
// joins with a token made through the API and applies its rule set; after
// a restart of the controller (its CA unsealed from the database, nothing
// in the data directory but admin.conf) the agent reconnects with its
// certificate and gets a policy change. A wrong sealing key stops the
// controller at start.
func TestPostgresControllerEndToEnd(t *testing.T) {
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "ca-key.key")
	if err := os.WriteFile(keyFile, []byte("8f1c2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "ctl")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := lis.Addr().String() // the same across the restart
	lis.Close()
	cfg, stop := runPostgresController(t, dataDir, dsn, keyFile, grpcAddr)
	if entries, _ := os.ReadDir(dataDir); len(entries) != 1 || entries[0].Name() != controller.AdminConfigFile {
		t.Errorf("data directory holds %v, want only admin.conf (the store is PostgreSQL)", entries)
	}
	api, err := apiclient.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	apply := func(doc string) {
		t.Helper()
		var res apiclient.ChangeResult
		if err := api.Do(ctx, "POST", "/api/v1/apply", apiclient.ApplyRequest{Files: []apiclient.File{{Name: "p.yaml", Content: doc}}}, &res); err != nil {
			t.Fatal(err)
		}
	}
	apply(twoNodes)
	var tok apiclient.JoinToken
	if err := api.Do(ctx, "POST", "/api/v1/tokens", apiclient.TokenRequest{Node: "node-a", TTL: "1h"}, &tok); err != nil {
		t.Fatal(err)
	}
	h := &harness{&controllertest.Controller{T: t, Addr: grpcAddr}}
	a := h.startAgent("node-a", tok.Token, nil, nil)
	testutil.Eventually(t, 30*time.Second, "node-a applying a rule set", func() error {
		if a.enf.version() == 0 {
			return errors.New("no rule set applied")
		}
		return nil
	})
	first := a.enf.version()

	stop()
	cfg, stop = runPostgresController(t, dataDir, dsn, keyFile, grpcAddr)
	defer stop()
	if api, err = apiclient.NewClient(cfg); err != nil {
		t.Fatal(err)
	}
	apply(adminSSH)
	testutil.Eventually(t, 30*time.Second, "node-a applying the change after the restart", func() error {
		var agents []apiclient.AgentStatus
		if err := api.Do(ctx, "GET", "/api/v1/agents", nil, &agents); err != nil {
			return err
		}
		if a.enf.version() <= first || len(agents) != 2 || agents[0].Node != "node-a" || !agents[0].Connected || agents[0].AppliedVersion != a.enf.version() {
			return fmt.Errorf("agent at version %d (before the restart %d), controller says %+v", a.enf.version(), first, agents)
		}
		return nil
	})
	// The audit trail in PostgreSQL: kept across the restart, each action
	// with its actor, one chain.
	var trail apiclient.AuditList
	if err := api.Do(ctx, "GET", "/api/v1/audit?order=oldest&limit=10000", nil, &trail); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, r := range trail.Records {
		if r.Action != "node.renew" {
			seen = append(seen, r.Action+" "+r.Object+" "+r.ActorKind)
		}
	}
	for _, want := range []string{"admintoken.create admin-token/", "policy.apply Policy/shop admin-token", "token.create join-token/",
		"node.join node/node-a node", "policy.apply Policy/admin admin-token"} {
		if !slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, want) || strings.Contains(s, want) }) {
			t.Errorf("audit trail lacks %q: %q", want, seen)
		}
	}
	chainOK(t, trail.Records)
	stop()

	wrong := filepath.Join(dir, "wrong.key")
	if err := os.WriteFile(wrong, make([]byte, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	o := controller.Options{DataDir: dataDir, Store: dsn, CAKeyEncryptionKeyFile: wrong, GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0"}
	if err := controller.Run(ctx, o, zap.NewNop()); err == nil || !errors.Is(err, postgres.ErrCAKeyWrongKey) {
		t.Errorf("start with a wrong key: %v", err)
	}
}
