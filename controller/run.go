package controller

import (
	"context"
	"crypto/tls"
	pemlib "encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/cliflag"
	"github.com/eastguard/eastguard/internal/fsutil"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/policy"
)

// AdminConfigFile is the admin credential's file name under the data
// directory.
const AdminConfigFile = "admin.conf"

// Options are the controller process's settings, as eastguard-controller's
// flags give them.
type Options struct {
	DataDir       string
	GRPCListen    string
	HTTPListen    string
	HTTPTLSCert   string
	HTTPTLSKey    string
	Advertise     []string
	CACert, CAKey string
	CertTTL       time.Duration
	ServerCertTTL time.Duration
	Heartbeat     time.Duration
	// AgentLimits bound the gRPC listener's connections, streams and
	// joins (--agent-max-conns, ...).
	AgentLimits agentapi.Limits

	FlowRetention  time.Duration
	FlowMaxBytes   int64
	AlertRetention time.Duration
	// AgentFlowRate is each agent's flow records per second; 0 is
	// unlimited.
	AgentFlowRate  float64
	ExternalURL    string
	WebhookGiveUp  time.Duration
	AlertOnDenied  bool
	DeniedNotify   []string
	DeniedSeverity string
	// Version is reported to agents.
	Version string
}

// Check says what is wrong with the options, naming the flag; it trims a
// trailing slash off ExternalURL.
func (o *Options) Check() error {
	if o.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	for _, a := range []struct{ name, addr string }{{"--grpc-listen", o.GRPCListen}, {"--http-listen", o.HTTPListen}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT: %w", a.name, a.addr, err)
		}
	}
	if (o.HTTPTLSCert == "") != (o.HTTPTLSKey == "") {
		return errors.New("--http-tls-cert and --http-tls-key go together")
	}
	if (o.CACert == "") != (o.CAKey == "") {
		return errors.New("--ca-cert and --ca-key go together")
	}
	if o.CertTTL < time.Second || o.ServerCertTTL < time.Second || o.Heartbeat < 100*time.Millisecond {
		return errors.New("--cert-ttl and --server-cert-ttl must be at least 1s, --heartbeat at least 100ms")
	}
	if l := o.AgentLimits; l.MaxConns < 1 || l.MaxConnsPerSource < 1 || l.MaxStreamsPerConn < 1 || l.JoinBurst < 1 || !(l.JoinRate > 0) {
		return errors.New("--agent-max-conns, --agent-max-conns-per-source, --agent-max-streams-per-conn, --agent-join-rate and --agent-join-burst must be more than 0")
	}
	if o.FlowRetention < time.Minute || o.AlertRetention < time.Minute || o.WebhookGiveUp < time.Second {
		return errors.New("--flow-retention and --alert-retention must be at least 1m, --webhook-give-up at least 1s")
	}
	if o.FlowMaxBytes < 1<<20 {
		size := cliflag.ByteSize(o.FlowMaxBytes)
		return fmt.Errorf("--flow-max-bytes %s: want at least 1MiB", size.String())
	}
	if o.AgentFlowRate < 0 {
		return fmt.Errorf("--agent-flow-rate %v: want 0 (unlimited) or a positive rate", o.AgentFlowRate)
	}
	switch policy.AlertSeverity(o.DeniedSeverity) {
	case policy.SeverityInfo, policy.SeverityWarn, policy.SeverityCritical:
	default:
		return fmt.Errorf("--alert-on-denied-severity %q: want info, warning or critical", o.DeniedSeverity)
	}
	if len(o.DeniedNotify) > 0 && !o.AlertOnDenied {
		return errors.New("--alert-on-denied-notify needs --alert-on-denied")
	}
	if o.ExternalURL != "" {
		u, err := url.Parse(o.ExternalURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--external-url %q: want an http(s) URL such as https://eastguard.example.com", o.ExternalURL)
		}
		o.ExternalURL = strings.TrimRight(o.ExternalURL, "/")
	}
	return nil
}

// Run is the controller process: it opens the store in the data
// directory, loads or creates the CA, serves both listeners, writes
// admin.conf once both accept, and runs until ctx is done.
func Run(ctx context.Context, o Options, log *zap.Logger) error {
	st, err := store.OpenSQLite(o.DataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	var userCert, userKey []byte
	if o.CACert != "" {
		if userCert, err = os.ReadFile(o.CACert); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
		if userKey, err = os.ReadFile(o.CAKey); err != nil {
			return fmt.Errorf("--ca-key: %w", err)
		}
	}
	ca, err := LoadCA(ctx, st, userCert, userKey, log)
	if err != nil {
		return err
	}
	var httpTLS *tls.Config
	if o.HTTPTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.HTTPTLSCert, o.HTTPTLSKey)
		if err != nil {
			return fmt.Errorf("--http-tls-cert/--http-tls-key: %w", err)
		}
		httpTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	// The HTTP listener is opened before the controller so that alert
	// links can name its real address (--http-listen may say port 0).
	httpLis, err := net.Listen("tcp", o.HTTPListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	defer httpLis.Close()
	dashboardURL := o.ExternalURL
	if dashboardURL == "" {
		dashboardURL = apiURL(httpLis.Addr(), httpTLS != nil)
	}
	flowRate := o.AgentFlowRate
	if flowRate == 0 {
		flowRate = -1 // the flag's "unlimited"
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c, err := New(ctx, Config{
		Store:         st,
		CA:            ca,
		Log:           log,
		Registry:      reg,
		Version:       o.Version,
		ServingHosts:  servingHosts(o.GRPCListen, o.Advertise, log),
		NodeCertTTL:   o.CertTTL,
		ServerCertTTL: o.ServerCertTTL,
		Heartbeat:     o.Heartbeat,
		AgentLimits:   o.AgentLimits,

		FlowRetention:  o.FlowRetention,
		FlowMaxBytes:   o.FlowMaxBytes,
		AlertRetention: o.AlertRetention,
		AgentFlowRate:  flowRate,
		BuiltinAlerts: alert.Builtin{
			Denied: o.AlertOnDenied, Notify: o.DeniedNotify, Severity: policy.AlertSeverity(o.DeniedSeverity),
		},
		DashboardURL:  dashboardURL,
		WebhookGiveUp: o.WebhookGiveUp,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			log.Error("shutdown", zap.Error(err))
		}
	}()

	grpcLis, err := net.Listen("tcp", o.GRPCListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen: %w", err)
	}
	if httpTLS == nil && !isLoopback(o.HTTPListen) {
		log.Warn("serving the admin API over plain HTTP on a non-loopback address: the admin token crosses the network in clear; give --http-tls-cert and --http-tls-key",
			zap.String("http-listen", o.HTTPListen))
	}
	httpSrv := &http.Server{Handler: c.Handler(reg), ReadHeaderTimeout: 10 * time.Second, TLSConfig: httpTLS}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		if err := c.ServeGRPC(grpcLis); err != nil {
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
		zap.String("ca-fingerprint", ca.Fingerprint()), zap.String("data-dir", o.DataDir))

	// Both listeners accept connections now: admin.conf may tell egctl
	// where to go.
	var runErr error
	if err := writeAdminConfig(ctx, c, o, httpLis.Addr(), log); err != nil {
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
	if err := c.Close(); err != nil {
		log.Error("shutdown", zap.Error(err))
	}
	wg.Wait()
	return runErr
}

// writeAdminConfig writes DIR/admin.conf unless a valid one for this
// address is there already (it is written on first start, and again only
// if it was removed, its token is unknown, or the API moved).
func writeAdminConfig(ctx context.Context, c *Controller, o Options, httpAddr net.Addr, log *zap.Logger) error {
	path := filepath.Join(o.DataDir, AdminConfigFile)
	url := apiURL(httpAddr, o.HTTPTLSCert != "")
	var caCert string
	if o.HTTPTLSCert != "" {
		b, err := os.ReadFile(o.HTTPTLSCert)
		if err != nil {
			return fmt.Errorf("--http-tls-cert: %w", err)
		}
		caCert = trustAnchor(b)
	}
	if old, err := apiclient.LoadConfig(path); err == nil {
		if old.Server == url && old.CACert == caCert && c.API.CheckAdminToken(ctx, old.Token) == nil {
			return nil
		}
		log.Warn("admin.conf is out of date (API address, certificate or token changed); writing a new one", zap.String("path", path))
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("admin.conf unusable; writing a new one", zap.String("path", path), zap.Error(err))
	}
	token, err := c.API.NewAdminToken(ctx)
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
	return string(pemlib.EncodeToMemory(&pemlib.Block{Type: "CERTIFICATE", Bytes: last.Raw}))
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
		seen := make(map[string]bool, len(hosts))
		out := hosts[:0]
		for _, h := range hosts {
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
		return out
	}
}
