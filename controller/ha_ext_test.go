package controller_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store/postgres/pgtest"
	"github.com/eastguard/eastguard/internal/testutil"
)

// TestMain stops the throw-away PostgreSQL cluster of the Postgres tests,
// if one was started.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// haRun is one controller process of the test, run in-process.
type haRun struct {
	o      controller.Options
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned err
	err    error
}

func (r *haRun) api() string { return "http://" + r.o.HTTPListen }

func (r *haRun) conf() (*apiclient.Config, error) {
	return apiclient.LoadConfig(filepath.Join(r.o.DataDir, controller.AdminConfigFile))
}

// stop cancels Run and waits for it (a clean stop: nil).
func (r *haRun) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("controller %s: %v", r.o.HTTPListen, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("controller %s did not stop", r.o.HTTPListen)
	}
}

// TestPostgresRunTwoControllers: two controllers started together on an
// empty database make one CA between them: one leads (admin.conf, the
// API), the other stands by (healthz says so, the API answers 503 naming
// the leader, its agent listener serves a certificate of the same CA).
// When the leader stops, the standby takes over: it writes its
// admin.conf, answers the API with the first leader's token too (one
// store), and lists itself as the leader of a later term.
func TestPostgresRunTwoControllers(t *testing.T) {
	dsn := pgtest.DSN(t)
	key := filepath.Join(t.TempDir(), "ca-key.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	var runs []*haRun
	for range 2 {
		o := testOptions(filepath.Join(t.TempDir(), "ctl"))
		o.Store, o.CAKeyEncryptionKeyFile = dsn, key
		o.GRPCListen, o.HTTPListen = freeAddr(t), freeAddr(t)
		if err := o.Check(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := &haRun{o: o, cancel: cancel, done: make(chan struct{})}
		runs = append(runs, r)
		go func() {
			defer close(r.done)
			r.err = controller.Run(ctx, r.o, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
		}()
		t.Cleanup(func() { r.stop(t) })
	}
	var leader, standby *haRun
	testutil.Eventually(t, 30*time.Second, "one controller to lead and write admin.conf", func() error {
		for _, r := range runs {
			select {
			case <-r.done:
				t.Fatalf("controller %s stopped: %v", r.o.HTTPListen, r.err)
			default:
			}
		}
		for i, r := range runs {
			if _, err := r.conf(); err == nil {
				leader, standby = r, runs[1-i]
				return nil
			}
		}
		return fmt.Errorf("no admin.conf")
	})
	cfg, err := leader.conf()
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "the other to stand by", func() error {
		select {
		case <-standby.done:
			t.Fatalf("the standby stopped: %v", standby.err)
		default:
		}
		resp, err := http.Get(standby.api() + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get(controller.RoleHeader) != "standby" {
			return fmt.Errorf("healthz %d, role %q", resp.StatusCode, resp.Header.Get(controller.RoleHeader))
		}
		return nil
	})
	if _, err := standby.conf(); err == nil {
		t.Error("the standby wrote an admin.conf")
	}
	code, body := get(t, standby.api()+"/api/v1/agents", cfg.Token)
	var e apiclient.Error
	if err := json.Unmarshal([]byte(body), &e); code != 503 || err != nil || !e.NotLeader || e.Leader != leader.api() {
		t.Errorf("the standby's API: %d %s", code, body)
	}
	if code, body := get(t, leader.api()+"/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("the leader's healthz: %d %q", code, body)
	}
	// One CA: both agent listeners serve certificates it issued.
	issuer := func(addr string) string {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatalf("TLS to %s: %v", addr, err)
		}
		defer conn.Close()
		certs := conn.ConnectionState().PeerCertificates
		return fmt.Sprintf("%x", certs[0].AuthorityKeyId)
	}
	if a, b := issuer(leader.o.GRPCListen), issuer(standby.o.GRPCListen); a != b || a == "" {
		t.Errorf("serving certificates from different CAs: %s, %s", a, b)
	}

	// The leader stops (SIGTERM): it resigns, the standby leads.
	var before []apiclient.Controller
	if code, body := get(t, leader.api()+"/api/v1/controllers", cfg.Token); code != 200 || json.Unmarshal([]byte(body), &before) != nil ||
		len(before) != 2 || before[0].Role != "leader" || before[0].API != leader.api() || before[1].Role != "standby" {
		t.Fatalf("controllers before: %d %s", code, body)
	}
	leader.stop(t)
	testutil.Eventually(t, 30*time.Second, "the standby to lead", func() error {
		_, err := standby.conf()
		return err
	})
	var after []apiclient.Controller
	if code, body := get(t, standby.api()+"/api/v1/controllers", cfg.Token); code != 200 || json.Unmarshal([]byte(body), &after) != nil ||
		len(after) != 1 || after[0].Role != "leader" || after[0].API != standby.api() || after[0].Term <= before[0].Term {
		t.Errorf("controllers after (the resigned one's row deleted, a later term): %d %s (before: %+v)", code, body, before)
	}
	if _, body := get(t, standby.api()+"/metrics", ""); !strings.Contains(body, "eastguard_controller_leader 1") ||
		!strings.Contains(body, "eastguard_controller_leadership_changes_total 1") {
		t.Errorf("the new leader's metrics lack leader 1 and one change")
	}
}
