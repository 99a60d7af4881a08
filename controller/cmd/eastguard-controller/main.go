// Command eastguard-controller is Eastguard's central service: it keeps
// the policy, compiles it into every node's rule set, pushes the rule sets
// to the agents over mutually authenticated gRPC and tracks what each has
// applied. It serves the admin API (egctl) and /metrics over HTTP.
package main

import (
	"context"
	"crypto/tls"
	pemlib "encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/alert/webhook"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/controller/server"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/fsutil"
	"github.com/eastguard/eastguard/internal/logging"
	"github.com/eastguard/eastguard/internal/pki"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// AdminConfigFile is the admin credential's file name under --data-dir.
const AdminConfigFile = "admin.conf"

type options struct {
	dataDir       string
	grpcListen    string
	httpListen    string
	httpTLSCert   string
	httpTLSKey    string
	advertise     []string
	caCert        string
	caKey         string
	certTTL       time.Duration
	serverCertTTL time.Duration
	heartbeat     time.Duration
	logFormat     string
	logLevel      string

	flowRetention  time.Duration
	flowMaxBytes   byteSize
	alertRetention time.Duration
	agentFlowRate  float64
	externalURL    string
	webhookGiveUp  time.Duration
	alertOnDenied  bool
	deniedNotify   []string
	deniedSeverity string
}

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
(the controller creates it mode 0700) and back it up.

Flags:
`

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("eastguard-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for the store and admin.conf (required)")
	fs.StringVar(&o.grpcListen, "grpc-listen", ":7443", "agent-facing gRPC address (mutual TLS)")
	fs.StringVar(&o.httpListen, "http-listen", "127.0.0.1:8080", "admin API, /metrics and /healthz address")
	fs.StringVar(&o.httpTLSCert, "http-tls-cert", "", "serve the HTTP listener over TLS with this certificate (PEM)")
	fs.StringVar(&o.httpTLSKey, "http-tls-key", "", "key of --http-tls-cert (PEM)")
	fs.Var((*listFlag)(&o.advertise), "advertise", "extra DNS name or IP address agents reach the controller by, for the serving certificate (repeatable, comma-separated)")
	fs.StringVar(&o.caCert, "ca-cert", "", "on first start: use this CA certificate (PEM) instead of creating one")
	fs.StringVar(&o.caKey, "ca-key", "", "key of --ca-cert (PEM)")
	fs.DurationVar(&o.certTTL, "cert-ttl", pki.DefaultNodeCertTTL, "lifetime of node certificates (agents renew at 2/3)")
	fs.DurationVar(&o.serverCertTTL, "server-cert-ttl", pki.DefaultServerCertTTL, "lifetime of the serving certificate (rotated at 2/3)")
	fs.DurationVar(&o.heartbeat, "heartbeat", server.DefaultHeartbeat, "heartbeat interval on agent streams")
	o.flowMaxBytes = server.DefaultFlowMaxBytes
	fs.DurationVar(&o.flowRetention, "flow-retention", server.DefaultFlowRetention, "delete flow records older than this")
	fs.Var(&o.flowMaxBytes, "flow-max-bytes", "keep the flow store under this size (e.g. 4GiB, 500MB); the oldest flows go first")
	fs.DurationVar(&o.alertRetention, "alert-retention", server.DefaultAlertRetention, "delete resolved alerts and finished webhook deliveries older than this")
	fs.Float64Var(&o.agentFlowRate, "agent-flow-rate", server.DefaultAgentFlowRate, "flow records per second each agent may send (0: unlimited); beyond it batches wait in the agent's spool")
	fs.StringVar(&o.externalURL, "external-url", "", "the dashboard's URL as the security team reaches it, for links in alerts (default: the HTTP listener's)")
	fs.DurationVar(&o.webhookGiveUp, "webhook-give-up", webhook.DefaultGiveUpAfter, "stop retrying a webhook delivery this long after the alert queued it (recorded as gave-up)")
	fs.BoolVar(&o.alertOnDenied, "alert-on-denied", false, "raise an alert (rule "+alert.BuiltinDeniedRule+") for every denied flow, in addition to the AlertRules")
	fs.Var((*listFlag)(&o.deniedNotify), "alert-on-denied-notify", "webhooks (by name) that --alert-on-denied alerts go to (repeatable, comma-separated)")
	fs.StringVar(&o.deniedSeverity, "alert-on-denied-severity", "warning", "severity of --alert-on-denied alerts: info, warning or critical")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.dataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	for _, a := range []struct{ name, addr string }{{"--grpc-listen", o.grpcListen}, {"--http-listen", o.httpListen}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return nil, fmt.Errorf("%s %q: want HOST:PORT: %w", a.name, a.addr, err)
		}
	}
	if (o.httpTLSCert == "") != (o.httpTLSKey == "") {
		return nil, errors.New("--http-tls-cert and --http-tls-key go together")
	}
	if (o.caCert == "") != (o.caKey == "") {
		return nil, errors.New("--ca-cert and --ca-key go together")
	}
	if o.certTTL < time.Second || o.serverCertTTL < time.Second || o.heartbeat < 100*time.Millisecond {
		return nil, errors.New("--cert-ttl and --server-cert-ttl must be at least 1s, --heartbeat at least 100ms")
	}
	if o.flowRetention < time.Minute || o.alertRetention < time.Minute || o.webhookGiveUp < time.Second {
		return nil, errors.New("--flow-retention and --alert-retention must be at least 1m, --webhook-give-up at least 1s")
	}
	if o.flowMaxBytes < 1<<20 {
		return nil, fmt.Errorf("--flow-max-bytes %s: want at least 1MiB", o.flowMaxBytes.String())
	}
	if o.agentFlowRate < 0 {
		return nil, fmt.Errorf("--agent-flow-rate %v: want 0 (unlimited) or a positive rate", o.agentFlowRate)
	}
	switch policy.AlertSeverity(o.deniedSeverity) {
	case policy.SeverityInfo, policy.SeverityWarn, policy.SeverityCritical:
	default:
		return nil, fmt.Errorf("--alert-on-denied-severity %q: want info, warning or critical", o.deniedSeverity)
	}
	if len(o.deniedNotify) > 0 && !o.alertOnDenied {
		return nil, errors.New("--alert-on-denied-notify needs --alert-on-denied")
	}
	if o.externalURL != "" {
		u, err := url.Parse(o.externalURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--external-url %q: want an http(s) URL such as https://eastguard.example.com", o.externalURL)
		}
		o.externalURL = strings.TrimRight(o.externalURL, "/")
	}
	if o.logFormat != "json" && o.logFormat != "console" {
		return nil, fmt.Errorf("--log-format %q: want json or console", o.logFormat)
	}
	return o, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-controller: %v\n", err)
		return exitUsage
	}
	log, err := logging.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "eastguard-controller: %v\n", err)
		return exitUsage
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := controller(ctx, o, log); err != nil {
		log.Error("controller failed", zap.Error(err))
		return exitFailure
	}
	return exitOK
}

func controller(ctx context.Context, o *options, log *zap.Logger) error {
	st, err := store.OpenSQLite(o.dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	var userCert, userKey []byte
	if o.caCert != "" {
		if userCert, err = os.ReadFile(o.caCert); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
		if userKey, err = os.ReadFile(o.caKey); err != nil {
			return fmt.Errorf("--ca-key: %w", err)
		}
	}
	ca, err := server.LoadCA(ctx, st, userCert, userKey, log)
	if err != nil {
		return err
	}
	var httpTLS *tls.Config
	if o.httpTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.httpTLSCert, o.httpTLSKey)
		if err != nil {
			return fmt.Errorf("--http-tls-cert/--http-tls-key: %w", err)
		}
		httpTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	// The HTTP listener is opened before the server so that alert links
	// can name its real address (--http-listen may say port 0).
	httpLis, err := net.Listen("tcp", o.httpListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	defer httpLis.Close()
	dashboardURL := o.externalURL
	if dashboardURL == "" {
		dashboardURL = apiURL(httpLis.Addr(), httpTLS != nil)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := server.New(ctx, server.Config{
		Store:         st,
		CA:            ca,
		Log:           log,
		Registry:      reg,
		ServingHosts:  servingHosts(o.grpcListen, o.advertise, log),
		NodeCertTTL:   o.certTTL,
		ServerCertTTL: o.serverCertTTL,
		Heartbeat:     o.heartbeat,

		FlowRetention:  o.flowRetention,
		FlowMaxBytes:   int64(o.flowMaxBytes),
		AlertRetention: o.alertRetention,
		AgentFlowRate:  flowRate(o.agentFlowRate),
		BuiltinAlerts: alert.Builtin{
			Denied: o.alertOnDenied, Notify: o.deniedNotify, Severity: policy.AlertSeverity(o.deniedSeverity),
		},
		DashboardURL:  dashboardURL,
		WebhookGiveUp: o.webhookGiveUp,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Close(); err != nil {
			log.Error("shutdown", zap.Error(err))
		}
	}()

	grpcLis, err := net.Listen("tcp", o.grpcListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen: %w", err)
	}
	if httpTLS == nil && !isLoopback(o.httpListen) {
		log.Warn("serving the admin API over plain HTTP on a non-loopback address: the admin token crosses the network in clear; give --http-tls-cert and --http-tls-key",
			zap.String("http-listen", o.httpListen))
	}
	httpSrv := &http.Server{Handler: srv.Handler(reg), ReadHeaderTimeout: 10 * time.Second, TLSConfig: httpTLS}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		if err := srv.ServeGRPC(grpcLis); err != nil {
			errs <- fmt.Errorf("gRPC listener: %w", err)
		}
	})
	wg.Go(func() {
		var err error
		if httpTLS != nil {
			err = httpSrv.ServeTLS(httpLis, "", "")
		} else {
			err = httpSrv.Serve(httpLis)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("HTTP listener: %w", err)
		}
	})
	log.Info("controller serving", zap.String("grpc-listen", grpcLis.Addr().String()), zap.String("http-listen", httpLis.Addr().String()),
		zap.String("ca-fingerprint", ca.Fingerprint()), zap.String("data-dir", o.dataDir))

	// Both listeners accept connections now: admin.conf may tell egctl
	// where to go.
	var runErr error
	if err := writeAdminConfig(ctx, srv, o, httpLis.Addr(), log); err != nil {
		runErr = err
	} else {
		select {
		case <-ctx.Done():
			log.Info("stopping")
		case runErr = <-errs:
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = httpSrv.Shutdown(shutdown)
	if err := srv.Close(); err != nil {
		log.Error("shutdown", zap.Error(err))
	}
	wg.Wait()
	return runErr
}

// flowRate maps the flag's 0 (unlimited) to the server's negative.
func flowRate(r float64) float64 {
	if r == 0 {
		return -1
	}
	return r
}

// byteSize is a size flag: a number of bytes with an optional unit (KB,
// MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024).
type byteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

func (b *byteSize) String() string {
	for _, u := range sizeUnits[:4] {
		if v := int64(*b); v >= u.mult && v%u.mult == 0 && (u.mult == 1<<40 || v%(u.mult<<10) != 0) {
			return fmt.Sprintf("%d%s", v/u.mult, u.suffix)
		}
	}
	return strconv.FormatInt(int64(*b), 10)
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64/mult {
		return fmt.Errorf("%q is not a size such as 4GiB, 500MB or 1048576", s)
	}
	*b = byteSize(v * mult)
	return nil
}

// writeAdminConfig writes DIR/admin.conf unless a valid one for this
// address is there already (it is written on first start, and again only
// if it was removed, its token is unknown, or the API moved).
func writeAdminConfig(ctx context.Context, srv *server.Server, o *options, httpAddr net.Addr, log *zap.Logger) error {
	path := filepath.Join(o.dataDir, AdminConfigFile)
	url := apiURL(httpAddr, o.httpTLSCert != "")
	var caCert string
	if o.httpTLSCert != "" {
		b, err := os.ReadFile(o.httpTLSCert)
		if err != nil {
			return fmt.Errorf("--http-tls-cert: %w", err)
		}
		caCert = trustAnchor(b)
	}
	if old, err := apiclient.LoadConfig(path); err == nil {
		if old.Server == url && old.CACert == caCert && srv.CheckAdminToken(ctx, old.Token) == nil {
			return nil
		}
		log.Warn("admin.conf is out of date (API address, certificate or token changed); writing a new one", zap.String("path", path))
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("admin.conf unusable; writing a new one", zap.String("path", path), zap.Error(err))
	}
	token, err := srv.NewAdminToken(ctx)
	if err != nil {
		return err
	}
	data, err := (&apiclient.Config{Server: url, Token: token, CACert: caCert}).Marshal()
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("write admin credential: %w", err)
	}
	log.Info("admin credential written", zap.String("path", path), zap.String("server", url))
	return nil
}

// apiURL is the URL egctl uses: a wildcard listener is reached on
// loopback.
func apiURL(addr net.Addr, https bool) string {
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// trustAnchor returns the certificate egctl should trust for the API: the
// last certificate of the chain file when it is self-signed (a private CA
// or a self-signed certificate), else none (a public CA: system roots).
func trustAnchor(chainPEM []byte) string {
	certs, err := pki.ParseCertificatesPEM(chainPEM)
	if err != nil {
		return ""
	}
	last := certs[len(certs)-1]
	if last.CheckSignatureFrom(last) != nil {
		return ""
	}
	return string(encodeCert(last.Raw))
}

func isLoopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// servingHosts returns the names the serving certificate must cover:
// localhost and the loopback addresses, the host of --grpc-listen (every
// local address when it is a wildcard, looked up again at each rotation),
// and every --advertise.
func servingHosts(grpcListen string, advertise []string, log *zap.Logger) func() []string {
	host, _, _ := net.SplitHostPort(grpcListen)
	return func() []string {
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		ip := net.ParseIP(host)
		if host == "" || ip != nil && ip.IsUnspecified() {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				log.Warn("local addresses not listed for the serving certificate; use --advertise", zap.Error(err))
			}
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
					hosts = append(hosts, n.IP.String())
				}
			}
		} else {
			hosts = append(hosts, host)
		}
		hosts = append(hosts, advertise...)
		return dedupe(hosts)
	}
}

func dedupe(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := in[:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func encodeCert(der []byte) []byte {
	return pemlib.EncodeToMemory(&pemlib.Block{Type: "CERTIFICATE", Bytes: der})
}
