package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/internal/cliflag"
	"github.com/eastguard/eastguard/internal/pki"
)

const usage = `eastguard-controller keeps the policy and pushes every node's rule set to its agent.

Usage:
  eastguard-controller --data-dir DIR [--grpc-listen ADDR] [--http-listen ADDR] [flags]

Examples:
  eastguard-controller --data-dir /var/lib/eastguard-controller
  eastguard-controller --data-dir ./ctl --grpc-listen :7443 --http-listen 127.0.0.1:8080 --advertise ctl.example.com

On first start it creates its CA (or imports --ca-cert/--ca-key) and writes
the admin credential to DIR/admin.conf (mode 0600), for egctl:
  EGCTL_CONFIG=DIR/admin.conf egctl token create --node node-a --ttl 1h

The store (DIR/eastguard.db, SQLite) holds the CA key: keep DIR private
(the controller creates it mode 0700) and back it up. Or keep the store in
PostgreSQL, the CA key sealed with a key of your own:
  eastguard-controller --data-dir DIR --store postgres://eastguard@db.example.com/eastguard?sslmode=verify-full \
      --store-password-file /etc/eastguard/db-password --ca-key-encryption-key-file /etc/eastguard/ca-key.key
Several controllers on one PostgreSQL database are highly available: one
leads, the others stand by and take over within seconds of its death.

Flags:
`

type flags struct {
	controller.Options
	logFormat, logLevel string
	version             bool
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	o := &f.Options
	fs := flag.NewFlagSet("eastguard-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&o.DataDir, "data-dir", "", "directory for the store and admin.conf (required)")
	fs.StringVar(&o.Store, "store", "", "keep the store in PostgreSQL: postgres://USER@HOST/DATABASE?sslmode=verify-full&... (default: SQLite in --data-dir); a password here is never logged, --store-password-file keeps it off the command line")
	fs.StringVar(&o.StorePasswordFile, "store-password-file", "", "with --store: the database password, the file's first line")
	fs.StringVar(&o.CAKeyEncryptionKeyFile, "ca-key-encryption-key-file", "", "with --store (required): 32 random bytes, raw or hex (openssl rand -hex 32), that seal the CA key in the database (AES-256-GCM)")
	fs.StringVar(&o.StoreFlowPartition, "store-flow-partition", "", "with --store: the flows table's partitions, day (default) or hour")
	fs.StringVar(&o.GRPCListen, "grpc-listen", ":7443", "agent-facing gRPC address (mutual TLS)")
	fs.StringVar(&o.HTTPListen, "http-listen", "127.0.0.1:8080", "admin API, /metrics and /healthz address")
	fs.StringVar(&o.HTTPTLSCert, "http-tls-cert", "", "serve the HTTP listener over TLS with this certificate (PEM)")
	fs.StringVar(&o.HTTPTLSKey, "http-tls-key", "", "key of --http-tls-cert (PEM)")
	fs.BoolVar(&o.HTTPTLSFromCA, "http-tls-from-ca", false, "serve the HTTP listener over TLS with a certificate from the controller's own CA (its serving certificate, rotated; admin.conf carries the CA)")
	fs.StringVar(&o.HTTPClientCA, "http-client-ca", "", "with TLS on the HTTP listener: let client certificates these CAs issue (PEM bundle; never the controller's own CA) log in to the dashboard, named by their subject's common name")
	fs.StringVar(&o.HTTPClientCRL, "http-client-crl", "", "revocation list (PEM or DER) for --http-client-ca's certificates, signed by one of them; read again when it changes, and no certificate logs in while it cannot be read")
	fs.IntVar(&o.HTTP.MaxConns, "http-max-connections", controller.DefaultHTTPMaxConns, "connections the HTTP listener serves at once; more wait until one closes")
	fs.IntVar(&o.AgentLimits.MaxConns, "agent-max-conns", agentapi.DefaultMaxConns, "connections the gRPC listener holds at most; more are closed at once")
	fs.IntVar(&o.AgentLimits.MaxConnsPerSource, "agent-max-conns-per-source", agentapi.DefaultMaxConnsPerSource, "connections the gRPC listener holds from one IPv4 address or IPv6 /64")
	fs.IntVar(&o.AgentLimits.MaxStreamsPerConn, "agent-max-streams-per-conn", agentapi.DefaultMaxStreamsPerConn, "concurrent calls on one gRPC connection")
	fs.Float64Var(&o.AgentLimits.JoinRate, "agent-join-rate", agentapi.DefaultJoinRate, "joins per second one IPv4 address or IPv6 /64 may start (beyond it and --agent-join-burst: retry later)")
	fs.IntVar(&o.AgentLimits.JoinBurst, "agent-join-burst", agentapi.DefaultJoinBurst, "joins one source may start at once")
	fs.StringVar(&o.AdvertiseGRPC, "advertise-grpc", "", "with --store postgres:// (high availability): this controller's agent address, HOST:PORT ([ADDRESS]:PORT takes any IP address), as standbys name the leader to agents (default: the first --advertise on --grpc-listen's port, else --grpc-listen)")
	fs.StringVar(&o.AdvertiseAPI, "advertise-api", "", "with --store postgres:// (high availability): this controller's admin API URL, as standbys and egctl status name it (default: --external-url, else the HTTP listener's port on --advertise-grpc's host, else the HTTP listener's address)")
	fs.Var((*cliflag.List)(&o.Advertise), "advertise", "extra DNS name or IP address agents reach the controller by, for the serving certificate (repeatable, comma-separated)")
	fs.StringVar(&o.CACert, "ca-cert", "", "on first start: use this CA certificate (PEM) instead of creating one")
	fs.StringVar(&o.CAKey, "ca-key", "", "key of --ca-cert (PEM)")
	fs.DurationVar(&o.CertTTL, "cert-ttl", pki.DefaultNodeCertTTL, "lifetime of node certificates (agents renew at 2/3)")
	fs.DurationVar(&o.ServerCertTTL, "server-cert-ttl", pki.DefaultServerCertTTL, "lifetime of the serving certificate (rotated at 2/3)")
	fs.DurationVar(&o.Heartbeat, "heartbeat", agentapi.DefaultHeartbeat, "heartbeat interval on agent streams")
	o.FlowMaxBytes = flowingest.DefaultFlowMaxBytes
	fs.DurationVar(&o.FlowRetention, "flow-retention", flowingest.DefaultFlowRetention, "delete flow records older than this")
	fs.Var((*cliflag.ByteSize)(&o.FlowMaxBytes), "flow-max-bytes", "keep the flow store under this size (e.g. 4GiB, 500MB); the oldest flows go first")
	fs.DurationVar(&o.AlertRetention, "alert-retention", flowingest.DefaultAlertRetention, "delete resolved alerts and finished webhook deliveries older than this")
	fs.DurationVar(&o.AuditRetention, "audit-retention", audit.DefaultRetention, "delete audit records older than this, oldest first (0: keep every record)")
	fs.StringVar(&o.AuditLog, "audit-log", "", "also append every audit record to this file as a JSON line (created mode 0600)")
	fs.Float64Var(&o.AgentFlowRate, "agent-flow-rate", flowingest.DefaultAgentFlowRate, "flow records per second each agent may send (0: unlimited); beyond it batches wait in the agent's spool")
	fs.StringVar(&o.ExternalURL, "external-url", "", "the dashboard's URL as the security team reaches it, for links in alerts (default: the HTTP listener's)")
	fs.DurationVar(&o.WebhookGiveUp, "webhook-give-up", webhook.DefaultGiveUpAfter, "stop retrying a webhook delivery this long after the alert queued it (recorded as gave-up)")
	fs.Float64Var(&o.WebhookRate, "webhook-rate", webhook.DefaultRate, "deliveries per second to each webhook (0: unlimited); beyond it (and --webhook-burst) deliveries wait in the outbox, none is lost")
	fs.IntVar(&o.WebhookBurst, "webhook-burst", webhook.DefaultBurst, "deliveries one webhook may get at once before --webhook-rate applies")
	fs.IntVar(&o.AlertMaxLivePerRule, "alert-max-live-per-rule", alert.DefaultMaxLivePerRule, "live alerts one rule may have; further source/destination pairs are folded into the rule's summary alert")
	fs.IntVar(&o.AlertMaxResolved, "alert-max-resolved", alert.DefaultMaxResolved, "resolved alerts kept (besides --alert-retention); the oldest go first")
	fs.IntVar(&o.WebhookOutboxMax, "webhook-outbox-max", alert.DefaultMaxFinishedDeliveries, "finished (delivered or given-up) webhook deliveries kept; the oldest go first, pending ones never")
	fs.BoolVar(&o.WebhookAllowPrivate, "webhook-allow-private", false, "let webhooks reach loopback and link-local addresses (127.0.0.0/8, ::1, 169.254.0.0/16 with cloud metadata, fe80::/10); private RFC 1918 ranges are allowed without it")
	fs.StringVar(&o.SecretsDir, "secrets-dir", "", "directory of the files webhooks' secretFrom.file names (regular files, at most 4KiB, relative names)")
	fs.BoolVar(&o.AlertOnDenied, "alert-on-denied", false, "raise an alert (rule "+alert.BuiltinDeniedRule+") for every denied flow, in addition to the AlertRules")
	fs.Var((*cliflag.List)(&o.DeniedNotify), "alert-on-denied-notify", "webhooks (by name) that --alert-on-denied alerts go to (repeatable, comma-separated)")
	fs.StringVar(&o.DeniedSeverity, "alert-on-denied-severity", "warning", "severity of --alert-on-denied alerts: info, warning or critical")
	fs.BoolVar(&o.Kubernetes.Enabled, "kubernetes", false, "Kubernetes mode, in the cluster: pods become workloads, eastguard.dev/v1 custom resources become policy, agents join with their ServiceAccount token")
	fs.StringVar(&o.Kubernetes.Kubeconfig, "kubeconfig", "", "Kubernetes mode with this kubeconfig file (outside the cluster)")
	fs.StringVar(&o.Kubernetes.AgentServiceAccount, "kubernetes-agent-service-account", "", "NAMESPACE/NAME of the agents' ServiceAccount, whose tokens may join (default: the controller's namespace/eastguard-agent)")
	fs.StringVar(&o.Kubernetes.Namespace, "kubernetes-namespace", "", "the controller's namespace, where it publishes its CA for agents (default: $POD_NAMESPACE, else the pod's)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if f.version {
		return f, nil
	}
	if o.HTTP.MaxConns < 1 {
		return nil, fmt.Errorf("--http-max-connections %d: want at least 1", o.HTTP.MaxConns)
	}
	if f.logFormat != "json" && f.logFormat != "console" {
		return nil, fmt.Errorf("--log-format %q: want json or console", f.logFormat)
	}
	o.Version = version
	return f, o.Check()
}
