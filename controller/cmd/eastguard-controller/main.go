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
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/server"
	"github.com/eastguard/eastguard/controller/server/restapi"
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
	httpLis, err := net.Listen("tcp", o.httpListen)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("--http-listen: %w", err)
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
	if old, err := restapi.LoadConfig(path); err == nil {
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
	data, err := (&restapi.Config{Server: url, Token: token, CACert: caCert}).Marshal()
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
