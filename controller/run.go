package controller

import (
	"context"
	"crypto/tls"
	pemlib "encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/alert"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/clientcert"
	"github.com/eastguard/eastguard/controller/flowingest"
	"github.com/eastguard/eastguard/controller/leader"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/controller/store/postgres"
	"github.com/eastguard/eastguard/controller/store/sqlite"
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
	DataDir string
	// Store is the store's location: "" for SQLite in DataDir, or a
	// postgres:// URL (--store). StorePasswordFile holds its password
	// (--store-password-file); CAKeyEncryptionKeyFile the key that seals
	// the CA key in PostgreSQL (required with it); StoreFlowPartition is
	// the flows table's partition size there, "day" or "hour".
	Store                  string
	StorePasswordFile      string
	CAKeyEncryptionKeyFile string
	StoreFlowPartition     string
	GRPCListen             string
	HTTPListen             string
	HTTPTLSCert            string
	HTTPTLSKey             string
	// HTTPTLSFromCA serves the HTTP listener over TLS with the
	// controller's own serving certificate, issued from its CA and
	// rotated with it; admin.conf then carries the CA.
	HTTPTLSFromCA bool
	// HTTPClientCA, with TLS on the HTTP listener, lets the client
	// certificates these CAs issue log in to the dashboard;
	// HTTPClientCRL is their revocation list (optional).
	HTTPClientCA  string
	HTTPClientCRL string
	// HTTP bounds the HTTP listener's connections; zero fields take the
	// defaults.
	HTTP      HTTPLimits
	Advertise []string
	// AdvertiseGRPC and AdvertiseAPI are the agents' gRPC address
	// (HOST:PORT) and the admin API's URL of this controller as other
	// controllers name it when they stand by (high availability); empty:
	// derived from --advertise, --external-url and the listeners.
	AdvertiseGRPC string
	AdvertiseAPI  string
	CACert, CAKey string
	CertTTL       time.Duration
	ServerCertTTL time.Duration
	Heartbeat     time.Duration
	// AgentLimits bound the gRPC listener's connections, streams and
	// joins (--agent-max-conns, ...).
	AgentLimits agentapi.Limits
	// ServiceAccounts, if set, admits agents that join with their
	// Kubernetes ServiceAccount token (Kubernetes mode: the verifier of
	// controller/kube/join); nil refuses such joins.
	ServiceAccounts agentapi.ServiceAccountVerifier

	FlowRetention  time.Duration
	FlowMaxBytes   int64
	AlertRetention time.Duration
	// AuditRetention is how long audit records are kept (0: forever);
	// AuditLog, if set, is the file every record is appended to as a
	// JSON line.
	AuditRetention time.Duration
	AuditLog       string
	// AgentFlowRate is each agent's flow records per second; 0 is
	// unlimited.
	AgentFlowRate float64
	ExternalURL   string
	WebhookGiveUp time.Duration
	// WebhookRate is each webhook's deliveries per second (0: unlimited),
	// WebhookBurst how many at once.
	WebhookRate  float64
	WebhookBurst int
	// AlertMaxLivePerRule, AlertMaxResolved and WebhookOutboxMax bound
	// alert storms: see alert.Limits.
	AlertMaxLivePerRule int
	AlertMaxResolved    int
	WebhookOutboxMax    int
	// WebhookAllowPrivate lets webhooks reach loopback and link-local
	// addresses; SecretsDir holds the files webhooks' secretFrom.file
	// names.
	WebhookAllowPrivate bool
	SecretsDir          string
	AlertOnDenied       bool
	DeniedNotify        []string
	DeniedSeverity      string
	// Kubernetes is Kubernetes mode: pods and custom resources mirrored
	// into the policy.
	Kubernetes KubernetesOptions
	// Version is reported to agents.
	Version string
}

// Check says what is wrong with the options, naming the flag; it trims a
// trailing slash off ExternalURL.
func (o *Options) Check() error {
	if o.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if err := o.checkStore(); err != nil {
		return err
	}
	for _, a := range []struct{ name, addr string }{{"--grpc-listen", o.GRPCListen}, {"--http-listen", o.HTTPListen}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT: %w", a.name, a.addr, err)
		}
	}
	if (o.HTTPTLSCert == "") != (o.HTTPTLSKey == "") {
		return errors.New("--http-tls-cert and --http-tls-key go together")
	}
	if o.HTTPTLSFromCA && o.HTTPTLSCert != "" {
		return errors.New("give --http-tls-from-ca or --http-tls-cert/--http-tls-key, not both")
	}
	if o.HTTPClientCA != "" && o.HTTPTLSCert == "" && !o.HTTPTLSFromCA {
		return errors.New("--http-client-ca needs TLS on the HTTP listener: give --http-tls-from-ca, or --http-tls-cert and --http-tls-key")
	}
	if o.AdvertiseGRPC != "" {
		host, port, err := net.SplitHostPort(o.AdvertiseGRPC)
		if err != nil || host == "" {
			return fmt.Errorf("--advertise-grpc %q: want HOST:PORT ([ADDRESS]:PORT for any IP address)", o.AdvertiseGRPC)
		}
		o.AdvertiseGRPC = net.JoinHostPort(host, port) // [10.0.0.1]:7443 is 10.0.0.1:7443
	}
	if o.AdvertiseAPI != "" {
		if u, err := url.Parse(o.AdvertiseAPI); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--advertise-api %q: want an http(s) URL such as https://ctl-1.example.com:8080", o.AdvertiseAPI)
		}
	}
	if (o.AdvertiseGRPC != "" || o.AdvertiseAPI != "") && o.Store == "" {
		return errors.New("--advertise-grpc and --advertise-api go with --store postgres://... (with SQLite there is one controller)")
	}
	if o.HTTPClientCRL != "" && o.HTTPClientCA == "" {
		return errors.New("--http-client-crl goes with --http-client-ca")
	}
	if err := o.HTTP.check(); err != nil {
		return err
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
	if o.AuditRetention != 0 && o.AuditRetention < time.Hour {
		return fmt.Errorf("--audit-retention %s: want at least 1h, or 0 to keep every record", o.AuditRetention)
	}
	if o.FlowMaxBytes < 1<<20 {
		size := cliflag.ByteSize(o.FlowMaxBytes)
		return fmt.Errorf("--flow-max-bytes %s: want at least 1MiB", size.String())
	}
	if o.AgentFlowRate < 0 {
		return fmt.Errorf("--agent-flow-rate %v: want 0 (unlimited) or a positive rate", o.AgentFlowRate)
	}
	if o.WebhookRate < 0 || o.WebhookBurst < 1 {
		return fmt.Errorf("--webhook-rate %v, --webhook-burst %d: want a rate of 0 (unlimited) or more and a burst of at least 1", o.WebhookRate, o.WebhookBurst)
	}
	if o.AlertMaxLivePerRule < 1 || o.AlertMaxResolved < 1 || o.WebhookOutboxMax < 1 {
		return fmt.Errorf("--alert-max-live-per-rule %d, --alert-max-resolved %d, --webhook-outbox-max %d: each must be at least 1",
			o.AlertMaxLivePerRule, o.AlertMaxResolved, o.WebhookOutboxMax)
	}
	if o.SecretsDir != "" {
		if fi, err := os.Stat(o.SecretsDir); err != nil || !fi.IsDir() {
			return fmt.Errorf("--secrets-dir %q: want an existing directory", o.SecretsDir)
		}
	}
	switch policy.AlertSeverity(o.DeniedSeverity) {
	case policy.SeverityInfo, policy.SeverityWarn, policy.SeverityCritical:
	default:
		return fmt.Errorf("--alert-on-denied-severity %q: want info, warning or critical", o.DeniedSeverity)
	}
	if len(o.DeniedNotify) > 0 && !o.AlertOnDenied {
		return errors.New("--alert-on-denied-notify needs --alert-on-denied")
	}
	if err := o.Kubernetes.check(); err != nil {
		return err
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

// Run is the controller process: it opens the store (SQLite in the data
// directory, or PostgreSQL with --store), loads or creates the CA, serves
// both listeners, writes admin.conf once both accept, and runs until ctx
// is done.
//
// On PostgreSQL it first campaigns for leadership (controller/leader):
// until it leads it serves as a standby (standby.go), then it loads
// everything from the store (New) and serves as the leader. It returns
// ErrLeadershipLost if its leader session fails: the process exits and
// its supervisor restarts it as a standby, so that it never acts as
// leader without the lock. With SQLite it always leads.
func Run(ctx context.Context, o Options, log *zap.Logger) error {
	st, connCfg, err := openStore(ctx, o, log)
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
	// Both listeners are opened first: alert links and the address a
	// standby advertises name their real addresses (a listen address may
	// say port 0).
	httpLis, err := net.Listen("tcp", o.HTTPListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	defer httpLis.Close()
	grpcRaw, err := net.Listen("tcp", o.GRPCListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen: %w", err)
	}
	grpcLis := newHandoff(grpcRaw)
	defer grpcLis.Close()
	https := o.HTTPTLSCert != "" || o.HTTPTLSFromCA

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	role := newRoleMetrics(reg)

	// The leader election, on PostgreSQL: a controller that does not lead
	// at once waits for the CA (the first leader creates it) and stands by.
	var elector *leader.Elector
	var term *leader.Term
	if connCfg != nil {
		if elector, err = leader.New(leader.Config{
			Conn: connCfg, Instance: leader.NewInstance(), Log: log.Named("leader"), Version: o.Version,
			GRPC: advertisedGRPC(o, grpcRaw.Addr()), API: advertisedAPI(o, httpLis.Addr(), https),
			OnRole: role.set,
		}); err != nil {
			return err
		}
		if term, err = waitForCA(ctx, elector, st, log); err != nil {
			return err
		}
		defer func() {
			if term != nil {
				term.Resign()
			}
		}()
	} else {
		role.set(true)
	}
	ca, err := LoadCA(ctx, st, userCert, userKey, log)
	if err != nil {
		return err
	}
	// httpTLS is the HTTP listener's TLS (nil: plain HTTP); caCert is
	// what admin.conf tells egctl to trust for it.
	var httpTLS *tls.Config
	var caCert string
	// serving is the certificate the HTTP listener serves with
	// --http-tls-from-ca: the standby's, then the leader's.
	var serving atomic.Pointer[func() *tls.Certificate]
	switch {
	case o.HTTPTLSCert != "":
		cert, err := tls.LoadX509KeyPair(o.HTTPTLSCert, o.HTTPTLSKey)
		if err != nil {
			return fmt.Errorf("--http-tls-cert/--http-tls-key: %w", err)
		}
		httpTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		chain, err := os.ReadFile(o.HTTPTLSCert)
		if err != nil {
			return fmt.Errorf("--http-tls-cert: %w", err)
		}
		caCert = trustAnchor(chain)
	case o.HTTPTLSFromCA:
		// The certificate is the controller's serving certificate: its
		// names cover the HTTP listener too (servingHosts), it is rotated
		// at two thirds of its life, and its chain ends at the CA that
		// admin.conf carries.
		httpTLS = &tls.Config{MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return (*serving.Load())(), nil }}
		caCert = string(ca.CertPEM)
	}
	var clientCerts *clientcert.Verifier
	if o.HTTPClientCA != "" {
		if clientCerts, err = clientcert.Load(clientcert.Config{CAFile: o.HTTPClientCA, CRLFile: o.HTTPClientCRL,
			OwnCA: ca.Cert, Log: log.Named("clientcert")}); err != nil {
			return err
		}
		clientCerts.Configure(httpTLS)
	}
	if httpTLS == nil && !isLoopback(o.HTTPListen) {
		log.Warn("serving the admin API over plain HTTP on a non-loopback address: the admin token crosses the network in clear; give --http-tls-from-ca, or --http-tls-cert and --http-tls-key",
			zap.String("http-listen", o.HTTPListen))
	}
	dashboardURL := o.ExternalURL
	if dashboardURL == "" {
		dashboardURL = apiURL(httpLis.Addr(), httpTLS != nil)
	}

	var kc *kubeClients
	if o.Kubernetes.On() {
		if kc, err = newKubeClients(o.Kubernetes); err != nil {
			return err
		}
		if o.ServiceAccounts == nil {
			o.ServiceAccounts = kc.verifier(o.Kubernetes, log)
		}
	}

	var handler roleHandler
	httpSrv, httpConns := httpServer(&handler, httpLis, o.HTTP, httpTLS, log)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	httpServing := false
	serveHTTP := func() {
		if httpServing {
			return
		}
		httpServing = true
		wg.Go(func() {
			var err error
			if httpTLS != nil {
				err = httpSrv.ServeTLS(httpConns, "", "")
			} else {
				err = httpSrv.Serve(httpConns)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("HTTP listener: %w", err)
			}
		})
	}
	shutdownHTTP := func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutdown)
	}

	if elector != nil && term == nil {
		// Stand by until this controller leads.
		sbCtx, sbCancel := context.WithCancel(ctx)
		sbTLS, err := agenttls.New(agenttls.Config{CA: ca, Hosts: servingHosts(o, log), TTL: o.ServerCertTTL, Now: time.Now, Log: log.Named("standby"),
			Refused: func(string) {}, HandshakeRefused: func(net.Addr, error) {}})
		if err != nil {
			sbCancel()
			return err
		}
		leaderInfo := func() leader.Info { l, _ := elector.Leader(); return l }
		sbGRPC, limit := standbyGRPC(sbCtx, sbTLS, o.AgentLimits, func() string { return leaderInfo().GRPC })
		sbServing := sbTLS.Serving
		serving.Store(&sbServing)
		handler.set(standbyHandler(reg, func() string { return leaderInfo().API }))
		sbLis := limit(grpcLis.Next())
		wg.Go(func() { _ = sbGRPC.Serve(sbLis) })
		serveHTTP()
		log.Info("standing by: another controller leads", zap.String("grpc-listen", grpcRaw.Addr().String()),
			zap.String("http-listen", httpLis.Addr().String()), zap.String("instance", elector.Instance()))
		term, err = elector.Campaign(ctx)
		sbGRPC.Stop()
		sbCancel()
		if err != nil {
			shutdownHTTP()
			wg.Wait()
			if ctx.Err() != nil {
				log.Info("stopping")
				return nil
			}
			return err
		}
	}
	takeover := time.Now()
	c, err := New(ctx, Config{
		Store:         st,
		CA:            ca,
		Log:           log,
		Registry:      reg,
		Version:       o.Version,
		ServingHosts:  servingHosts(o, log),
		NodeCertTTL:   o.CertTTL,
		ServerCertTTL: o.ServerCertTTL,
		Heartbeat:     o.Heartbeat,
		AgentLimits:   o.AgentLimits,
		// Kubernetes mode's verifier, when there is one.
		ServiceAccounts: o.ServiceAccounts,
		ClientCerts:     clientCerts,
		Controllers:     listControllers(st, elector),

		Settings: flowingest.Settings{
			FlowRetention:  o.FlowRetention,
			FlowMaxBytes:   o.FlowMaxBytes,
			AlertRetention: o.AlertRetention,
			AgentFlowRate:  rateFlag(o.AgentFlowRate),
			BuiltinAlerts: alert.Builtin{
				Denied: o.AlertOnDenied, Notify: o.DeniedNotify, Severity: policy.AlertSeverity(o.DeniedSeverity),
			},
			AlertLimits: alert.Limits{
				MaxLivePerRule: o.AlertMaxLivePerRule, MaxResolved: o.AlertMaxResolved, MaxFinishedDeliveries: o.WebhookOutboxMax,
			},
		},
		DashboardURL:  dashboardURL,
		WebhookGiveUp: o.WebhookGiveUp,
		WebhookRate:   rateFlag(o.WebhookRate),
		WebhookBurst:  o.WebhookBurst,
		// Webhooks never reach the controller's own listeners.
		OwnAddrs:            ownAddrs(o.GRPCListen, httpLis.Addr()),
		WebhookAllowPrivate: o.WebhookAllowPrivate,
		SecretsDir:          o.SecretsDir,
		AuditLogFile:        o.AuditLog,
		AuditRetention:      auditRetention(o.AuditRetention),
	})
	if err != nil {
		shutdownHTTP()
		wg.Wait()
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			log.Error("shutdown", zap.Error(err))
		}
	}()
	leaderServing := c.ServingCertificate
	serving.Store(&leaderServing)
	handler.set(leaderHandler(c.Handler(reg)))
	serveHTTP()
	if kc != nil {
		wg.Go(func() {
			if err := runKubernetes(ctx, c, kc, o.Kubernetes, ca.CertPEM, reg, log); err != nil {
				errs <- fmt.Errorf("kubernetes: %w", err)
			}
		})
	}
	leaderLis := grpcLis.Next()
	wg.Go(func() {
		if err := c.ServeGRPC(leaderLis); err != nil {
			errs <- fmt.Errorf("gRPC listener: %w", err)
		}
	})
	fields := []zap.Field{zap.String("grpc-listen", grpcRaw.Addr().String()), zap.String("http-listen", httpLis.Addr().String()),
		zap.String("ca-fingerprint", ca.Fingerprint()), zap.String("data-dir", o.DataDir)}
	var lost <-chan struct{}
	if term != nil {
		lost = term.Lost()
		fields = append(fields, zap.String("instance", elector.Instance()), zap.Int64("term", term.Number()),
			zap.Duration("loaded-in", time.Since(takeover)))
	}
	log.Info("controller serving", fields...)

	// Both listeners accept connections now: admin.conf may tell egctl
	// where to go.
	var runErr error
	if err := writeAdminConfig(ctx, c, o.DataDir, apiURL(httpLis.Addr(), httpTLS != nil), caCert, log); err != nil {
		if ctx.Err() == nil { // else: stopped while starting, a clean stop
			runErr = err
		}
	} else {
		select {
		case <-ctx.Done():
			log.Info("stopping")
		case runErr = <-errs:
		case <-lost:
			runErr = fmt.Errorf("%w: %w", ErrLeadershipLost, term.Err())
			// Another controller may lead already: write nothing more.
			c.Abandon()
		}
	}
	shutdownHTTP()
	if err := c.Close(); err != nil {
		log.Error("shutdown", zap.Error(err))
	}
	wg.Wait()
	return runErr
}

// ErrLeadershipLost ends Run when the leader's database session fails:
// eastguard-controller exits 1 and its supervisor restarts it, as a
// standby until it leads again.
var ErrLeadershipLost = errors.New("leadership lost")

// rateFlag maps a rate flag's 0 ("unlimited") to the packages' -1.
func rateFlag(r float64) float64 {
	if r == 0 {
		return -1
	}
	return r
}

// waitForCA makes the first attempt at leadership; a controller that does
// not lead then waits until the CA is in the store (the first leader of a
// new database creates it), so that it never creates one of its own.
func waitForCA(ctx context.Context, e *leader.Elector, st store.Store, log *zap.Logger) (*leader.Term, error) {
	for i := 0; ; i++ {
		term, err := e.TryLead(ctx)
		if term != nil {
			return term, nil
		}
		if err != nil {
			log.Warn("leader election: the database cannot be reached; retrying", zap.Error(err))
		} else if _, _, err := st.CA(ctx); err == nil {
			return nil, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		} else if i == 0 {
			log.Info("another controller leads and the CA is not in the store yet: waiting for it")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leader.DefaultRetryInterval):
		}
	}
}

// listControllers is GET /api/v1/controllers' source: the controllers'
// table on PostgreSQL, nil (this one alone) on SQLite.
func listControllers(st store.Store, e *leader.Elector) func(context.Context) ([]apiclient.Controller, error) {
	pg, ok := st.(*postgres.Postgres)
	if e == nil || !ok {
		return nil
	}
	return func(ctx context.Context) ([]apiclient.Controller, error) {
		list, err := leader.List(ctx, pg.Pool(), time.Now())
		if err != nil {
			return nil, err
		}
		out := make([]apiclient.Controller, len(list))
		for i, c := range list {
			out[i] = apiclient.Controller{Instance: c.Instance, Role: c.Role, GRPC: c.GRPC, API: c.API, Version: c.Version,
				Started: c.Started, LastSeen: c.LastSeen, Term: c.Term}
		}
		return out, nil
	}
}

// advertisedGRPC is the agents' address of this controller as the
// controllers' table records it: --advertise-grpc, else the first
// --advertise on the listener's port, else the listener's address.
func advertisedGRPC(o Options, addr net.Addr) string {
	if o.AdvertiseGRPC != "" {
		return o.AdvertiseGRPC
	}
	_, port, _ := net.SplitHostPort(addr.String())
	if len(o.Advertise) > 0 {
		return net.JoinHostPort(o.Advertise[0], port)
	}
	return addr.String()
}

// advertisedAPI is the admin API's URL of this controller as the
// controllers' table records it: --advertise-api, else --external-url,
// else the HTTP listener's port on --advertise-grpc's host, else the
// listener's address.
func advertisedAPI(o Options, addr net.Addr, https bool) string {
	switch {
	case o.AdvertiseAPI != "":
		return o.AdvertiseAPI
	case o.ExternalURL != "":
		return o.ExternalURL
	case o.AdvertiseGRPC != "":
		host, _, _ := net.SplitHostPort(o.AdvertiseGRPC)
		_, port, _ := net.SplitHostPort(addr.String())
		scheme := "http"
		if https {
			scheme = "https"
		}
		return scheme + "://" + net.JoinHostPort(host, port)
	}
	return apiURL(addr, https)
}

// roleMetrics are the leadership's metrics.
type roleMetrics struct {
	leader  prometheus.Gauge
	changes prometheus.Counter
	mu      sync.Mutex
	known   bool
	leading bool
}

func newRoleMetrics(reg prometheus.Registerer) *roleMetrics {
	m := &roleMetrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "eastguard_controller_leader",
			Help: "1 while this controller leads (always with SQLite), 0 while it stands by."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "eastguard_controller_leadership_changes_total",
			Help: "Changes of this controller's role (standby to leader, leader to standby) since it started."}),
	}
	reg.MustRegister(m.leader, m.changes)
	return m
}

func (m *roleMetrics) set(leading bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.known && m.leading != leading {
		m.changes.Inc()
	}
	m.known, m.leading = true, leading
	if leading {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// ownAddrs returns the controller's listening addresses: --grpc-listen
// (a host name there is resolved once, here) and the HTTP listener's.
func ownAddrs(grpcListen string, httpAddr net.Addr) func() []netip.AddrPort {
	var out []netip.AddrPort
	if ap, err := netip.ParseAddrPort(httpAddr.String()); err == nil {
		out = append(out, ap)
	}
	host, port, _ := net.SplitHostPort(grpcListen)
	if p, err := strconv.ParseUint(port, 10, 16); err == nil {
		var ips []netip.Addr
		if a, err := netip.ParseAddr(host); err == nil {
			ips = append(ips, a)
		} else if host == "" {
			ips = append(ips, netip.IPv6Unspecified())
		} else if addrs, err := net.LookupHost(host); err == nil {
			for _, s := range addrs {
				if a, err := netip.ParseAddr(s); err == nil {
					ips = append(ips, a)
				}
			}
		}
		for _, a := range ips {
			out = append(out, netip.AddrPortFrom(a, uint16(p)))
		}
	}
	return func() []netip.AddrPort { return out }
}

// writeAdminConfig writes DIR/admin.conf unless a valid one for this
// address is there already (it is written on first start, and again only
// if it was removed, its token is no longer valid, or the API moved).
// The token of a file it replaces is revoked first: a copy of the old
// file left anywhere stops working, and a crash between the two steps
// leaves a file whose token is refused, which the next start replaces.
func writeAdminConfig(ctx context.Context, c *Controller, dataDir, url, caCert string, log *zap.Logger) error {
	path := filepath.Join(dataDir, AdminConfigFile)
	if old, err := apiclient.ReadConfig(path); err == nil {
		// Only a token the store refuses makes admin.conf out of date; a
		// store that cannot answer now is an error, not a reason to revoke
		// a token that may be valid.
		tokenErr := c.API.CheckAdminToken(ctx, old.Token)
		if tokenErr != nil && !errors.Is(tokenErr, restapi.ErrAdminTokenRefused) {
			return fmt.Errorf("check the token of %s: %w", path, tokenErr)
		}
		if old.Check() == nil && slices.Contains(apiclient.SplitServers(old.Server), url) && old.CACert == caCert && tokenErr == nil {
			return nil
		}
		log.Warn("admin.conf is out of date (API address, certificate or token changed); writing a new one", zap.String("path", path))
		if old.Token != "" {
			id, err := c.API.RetireAdminToken(ctx, old.Token)
			if err != nil {
				return fmt.Errorf("revoke the admin token of the admin.conf being replaced: %w", err)
			}
			if id != "" {
				log.Info("the replaced admin.conf's token is revoked", zap.String("admin-token", id))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("admin.conf unusable; writing a new one", zap.String("path", path), zap.Error(err))
	}
	token, err := c.API.NewAdminToken(ctx, restapi.AdminTokenSpec{Name: restapi.AdminConfName})
	if err != nil {
		return err
	}
	data, err := (&apiclient.Config{Server: url, Token: token.Token, CACert: caCert}).Marshal()
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("write admin credential: %w", err)
	}
	log.Info("admin credential written", zap.String("path", path), zap.String("server", url), zap.String("admin-token", token.ID))
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
// localhost and the loopback addresses, the host of --grpc-listen, and of
// --http-listen when the certificate serves it too (--http-tls-from-ca)
// (every local address when one is a wildcard, looked up again at each
// rotation), and every --advertise.
func servingHosts(o Options, log *zap.Logger) func() []string {
	listens := []string{o.GRPCListen}
	if o.HTTPTLSFromCA {
		listens = append(listens, o.HTTPListen)
	}
	advertise := o.Advertise
	if h, _, err := net.SplitHostPort(o.AdvertiseGRPC); err == nil && h != "" {
		advertise = append(append([]string(nil), advertise...), h)
	}
	return func() []string {
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		for _, l := range listens {
			host, _, _ := net.SplitHostPort(l)
			ip := net.ParseIP(host)
			if host != "" && (ip == nil || !ip.IsUnspecified()) {
				hosts = append(hosts, host)
				continue
			}
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				log.Warn("local addresses not listed for the serving certificate; use --advertise", zap.Error(err))
			}
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
					hosts = append(hosts, n.IP.String())
				}
			}
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

// checkStore checks the store's flags: --store is a postgres:// URL, and
// with it the CA key's sealing key is given (the key must never be in
// clear in a shared database); the PostgreSQL flags need --store.
func (o *Options) checkStore() error {
	if o.Store == "" {
		for _, f := range []struct{ name, v string }{{"--store-password-file", o.StorePasswordFile},
			{"--ca-key-encryption-key-file", o.CAKeyEncryptionKeyFile}, {"--store-flow-partition", o.StoreFlowPartition}} {
			if f.v != "" {
				return fmt.Errorf("%s goes with --store postgres://...", f.name)
			}
		}
		return nil
	}
	if !postgres.IsDSN(o.Store) {
		return errors.New("--store: want postgres://USER@HOST/DATABASE?... (without --store, the store is SQLite in --data-dir)")
	}
	if o.CAKeyEncryptionKeyFile == "" {
		return errors.New("--store postgres://... needs --ca-key-encryption-key-file: the CA key is never stored in clear in a shared database (make the key with: openssl rand -hex 32 > FILE)")
	}
	switch o.StoreFlowPartition {
	case "", "day", "hour":
	default:
		return fmt.Errorf("--store-flow-partition %q: want day or hour", o.StoreFlowPartition)
	}
	return nil
}

// openStore opens the store the options name: SQLite in the data
// directory, or PostgreSQL. The DSN is logged with its password redacted.
func openStore(ctx context.Context, o Options, log *zap.Logger) (store.Store, *pgx.ConnConfig, error) {
	if o.Store == "" {
		st, err := sqlite.Open(o.DataDir)
		if err != nil {
			return nil, nil, err
		}
		log.Info("store opened", zap.String("store", "sqlite"), zap.String("path", st.Path()))
		return st, nil, nil
	}
	// The data directory still holds admin.conf.
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("--data-dir: %w", err)
	}
	dsn := postgres.RedactDSN(o.Store)
	pool, err := postgres.ParseDSN(o.Store, o.StorePasswordFile)
	if err != nil {
		return nil, nil, err
	}
	key, err := postgres.LoadKeyFile(o.CAKeyEncryptionKeyFile)
	if err != nil {
		return nil, nil, err
	}
	part := postgres.PartitionDay
	if o.StoreFlowPartition == "hour" {
		part = postgres.PartitionHour
	}
	st, err := postgres.Open(ctx, postgres.Config{Pool: pool, CAKeyKey: key, Partition: part})
	if err != nil {
		return nil, nil, fmt.Errorf("--store %s: %w", dsn, err)
	}
	log.Info("store opened", zap.String("store", "postgres"), zap.String("dsn", dsn), zap.Duration("flow-partition", part))
	// The leader's session: the pool's settings (password included),
	// a connection of its own.
	return st, pool.ConnConfig, nil
}

// auditRetention maps --audit-retention (0: keep every record) to
// Config.AuditRetention (negative: keep every record).
func auditRetention(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
