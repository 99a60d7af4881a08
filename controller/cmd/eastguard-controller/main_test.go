package main

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/testutil"
)

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--data-dir", "d", "--grpc-listen", "nope"},
		{"--data-dir", "d", "--http-tls-cert", "c"},
		{"--data-dir", "d", "--ca-key", "k"},
		{"--data-dir", "d", "--cert-ttl", "1ms"},
		{"--data-dir", "d", "extra"},
		{"--data-dir", "d", "--http-max-connections", "0"},
		{"--data-dir", "d", "--http-tls-from-ca", "--http-tls-cert", "c", "--http-tls-key", "k"},
		{"--data-dir", "d", "--agent-join-rate", "0"},
		{"--data-dir", "d", "--agent-max-conns-per-source", "-1"},
		{"--data-dir", "d", "--audit-retention", "1m"},
		{"--data-dir", "d", "--audit-retention", "-1h"},
		// PostgreSQL: never without the CA key's sealing key; its flags
		// only with --store.
		{"--data-dir", "d", "--store", "postgres://eg@db/eastguard"},
		{"--data-dir", "d", "--store", "mysql://eg@db/eastguard", "--ca-key-encryption-key-file", "k"},
		{"--data-dir", "d", "--ca-key-encryption-key-file", "k"},
		{"--data-dir", "d", "--store-password-file", "p"},
		{"--data-dir", "d", "--store", "postgres://eg@db/eastguard", "--ca-key-encryption-key-file", "k", "--store-flow-partition", "week"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	o, err := parseFlags([]string{"--data-dir", "d", "--store", "postgres://eg@db/eastguard", "--ca-key-encryption-key-file", "k",
		"--store-password-file", "p", "--store-flow-partition", "hour"}, io.Discard)
	if err != nil || o.Store != "postgres://eg@db/eastguard" || o.CAKeyEncryptionKeyFile != "k" || o.StorePasswordFile != "p" || o.StoreFlowPartition != "hour" {
		t.Errorf("--store flags: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"--data-dir", "d"}, io.Discard)
	if err != nil || o.AuditRetention != 400*24*time.Hour || o.AuditLog != "" {
		t.Errorf("audit defaults: retention %v, log %q, %v", o.AuditRetention, o.AuditLog, err)
	}
	o, err = parseFlags([]string{"--data-dir", "d", "--audit-retention", "0", "--audit-log", "/var/log/eastguard/audit.jsonl"}, io.Discard)
	if err != nil || o.AuditRetention != 0 || o.AuditLog != "/var/log/eastguard/audit.jsonl" {
		t.Errorf("--audit-retention 0 --audit-log: retention %v, log %q, %v", o.AuditRetention, o.AuditLog, err)
	}
	o, err = parseFlags([]string{"--data-dir", "d", "--advertise", "a.example,10.0.0.1", "--advertise", "b", "--http-max-connections", "10"}, io.Discard)
	if err != nil || o.HTTP.MaxConns != 10 {
		t.Errorf("--http-max-connections: %v %v", o.HTTP.MaxConns, err)
	}
	if err != nil || !slices.Equal(o.Advertise, []string{"a.example", "10.0.0.1", "b"}) {
		t.Errorf("--advertise: %v %v", o.Advertise, err)
	}
	o, err = parseFlags([]string{"--data-dir", "d", "--agent-max-conns-per-source", "300", "--agent-join-rate", "0.5"}, io.Discard)
	if want := (agentapi.Limits{MaxConns: agentapi.DefaultMaxConns, MaxConnsPerSource: 300, MaxStreamsPerConn: agentapi.DefaultMaxStreamsPerConn,
		JoinRate: 0.5, JoinBurst: agentapi.DefaultJoinBurst}); err != nil || o.AgentLimits != want {
		t.Errorf("agent limits: %+v %v, want %+v", o.AgentLimits, err, want)
	}
}

// TestVersion: --version prints the stamped version (make build sets it)
// and exits 0, needing no other flag.
func TestVersion(t *testing.T) {
	testutil.CheckVersionFlag(t, "eastguard-controller", &version, run)
}

// TestUnknownNotifyWebhookExits2: --alert-on-denied-notify naming a
// webhook the stored policy does not define (it defines others) stops
// the controller at start with exit 2 and the name. Before, it started
// and the built-in alerts went nowhere.
func TestUnknownNotifyWebhookExits2(t *testing.T) {
	h := controllertest.New(t)
	h.Apply("apiVersion: eastguard.dev/v1\nkind: Webhook\nmetadata: {name: ops}\nspec: {url: https://hooks.example.com/ops}\n")
	h.Stop()
	var stderr strings.Builder
	code := run([]string{"--data-dir", h.Dir, "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--alert-on-denied", "--alert-on-denied-notify", "nosuch", "--log-format", "console"}, io.Discard, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), `--alert-on-denied-notify names webhook "nosuch", which the policy does not define (it defines ops)`) {
		t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
	}
}
