package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/pki"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Enforcer is what the client needs of agent/enforcer.
type Enforcer interface {
	// Apply enforces rs atomically and keeps it as the last known good;
	// on error the rule set in force stays. It returns the interfaces
	// still missing (enforced once they appear).
	Apply(rs *ruleset.RuleSet) (pending []string, err error)
	// Current returns the rule set in force as it was received (nil:
	// none). Callers must not modify it.
	Current() *ruleset.RuleSet
}

// Config configures a Client. Zero durations take the defaults.
type Config struct {
	Node string
	// Controller is the controllers' gRPC addresses (HOST:PORT, several
	// separated by commas: high availability); each host must be one its
	// controller's serving certificate names. The client stays with the
	// one that answers as the leader.
	Controller string
	// Resolve, if set, resolves a controller's host name to the addresses
	// tried in turn (the agent: its failsafe opens them first); nil
	// dials the names as given.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// JoinToken is needed the first time, and to join again with a new
	// identity; otherwise the state directory's credentials are used.
	JoinToken string
	// ServiceAccountTokenFile is the agent pod's projected Kubernetes
	// ServiceAccount token (audience eastguard), joined with in place of
	// a join token (exclusive with JoinToken; needs CAFile). It is read at
	// each join attempt: the kubelet rotates it. A refused token is tried
	// again with backoff (the next one may be admitted), never final.
	ServiceAccountTokenFile string
	// CAFile is the controller's CA certificate (PEM), trusted for the
	// first join; with a join token it must be the CA the token pins. It
	// is read at each join attempt. A missing token or CA file is waited
	// for (it comes from a Secret or ConfigMap that may not exist yet).
	CAFile   string
	State    *state.Dir
	Enforcer Enforcer
	// DefaultMode is the agent's --default-mode, reported to the
	// controller, which compiles this node's rule set with it.
	DefaultMode  ruleset.Mode
	AgentVersion string
	Kernel       string
	Capabilities []string
	// Counters, if set, is read at every heartbeat and sent along.
	Counters func() (map[string]uint64, error)
	// Lookup, if set, answers the controller's lookup requests (egctl
	// explain --live) from the datapath's maps; without it the agent
	// answers that it cannot.
	Lookup LookupFunc
	// Flows, if set, supplies flow batches to send on the stream
	// (agent/flows.Spool).
	Flows FlowSource
	// Drift, if set, holds the datapath drift findings to report
	// (DriftReports); they are sent as they come, coalesced per kind.
	Drift *DriftReports
	// Heartbeat is how often the agent sends one (default 10s).
	Heartbeat time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential wait
	// between connection attempts (defaults 250ms and 15s).
	MinBackoff, MaxBackoff time.Duration
	Log                    *zap.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Dialer, if set, makes the connections to the addresses Resolve
	// returns, or the HOST:PORT entries (the agent: its failsafe; tests).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

// FlowSource hands flow batches to the stream and takes the controller's
// answers. Delivery is acknowledged: a batch stays with the source until
// Ack, and Reset (the stream ended) makes unacknowledged ones go again.
type FlowSource interface {
	Next(ctx context.Context) (*pb.FlowBatch, error)
	Ack(*pb.FlowAck)
	Reset()
}

// Client is the agent's control-plane client.
type Client struct {
	cfg   Config
	log   *zap.Logger
	now   func() time.Time
	token *pki.JoinToken
	creds atomic.Pointer[identity]

	// hashed caches the hash of the rule set in force. hashMu is never
	// held together with agentStream.mu.
	hashMu  sync.Mutex
	hashed  *ruleset.RuleSet
	hashVal string
	// hashPart is hashed's part of its hash (nil if unknown): a delta
	// that keeps the node's endpoints and ipcache has its result hashed
	// from it (ruleset.HashFrom), only its entries and rules encoded.
	hashPart *ruleset.HashPart

	targets *targets

	connected atomic.Bool
	streams   atomic.Int64
	lookups   lookupLimiter
}

// controllerWindow is the HTTP/2 flow-control window of the connection to
// the controller and of its stream (fixed: see dial).
const controllerWindow = 4 << 20

// Permanent errors: Run returns them, since retrying cannot help (the
// agent then exits 1, saying what to do; what is pinned stays enforced).
var (
	ErrJoinRefused = errors.New("join refused")
	ErrRevoked     = errors.New("this node's certificate was revoked")
	ErrExpired     = errors.New("this node's certificate expired")
)

// New checks the configuration. It does no I/O.
func New(cfg Config) (*Client, error) {
	if err := pki.ValidNodeName(cfg.Node); err != nil {
		return nil, err
	}
	if cfg.Controller == "" || cfg.State == nil || cfg.Enforcer == nil {
		return nil, errors.New("controlplane: Controller, State and Enforcer are required")
	}
	given, err := splitControllers(cfg.Controller)
	if err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(15*time.Second, cfg.MinBackoff)
	}
	c := &Client{cfg: cfg, log: cfg.Log, now: cfg.Now, targets: &targets{given: given, resolve: cfg.Resolve, log: cfg.Log}}
	if cfg.ServiceAccountTokenFile != "" {
		if cfg.JoinToken != "" {
			return nil, errors.New("controlplane: a join token or a ServiceAccount token file, not both")
		}
		if cfg.CAFile == "" {
			return nil, errors.New("controlplane: a ServiceAccount token file needs the controller's CA file (--ca-file)")
		}
	}
	if cfg.JoinToken != "" {
		t, err := pki.ParseJoinToken(cfg.JoinToken)
		if err != nil {
			return nil, err
		}
		c.token = &t
	}
	return c, nil
}

// Connected reports whether a stream is up (tests, status).
func (c *Client) Connected() bool { return c.connected.Load() }

// Streams counts the streams opened so far (tests: a renewal must not
// open a new one).
func (c *Client) Streams() int64 { return c.streams.Load() }

// CertExpiry is when the current certificate expires (zero before the
// join).
func (c *Client) CertExpiry() time.Time {
	if cr := c.creds.Load(); cr != nil {
		return cr.expiry()
	}
	return time.Time{}
}

// Run joins if needed, then keeps a stream to the controller open until
// ctx is done (it returns nil) or a permanent error: ErrJoinRefused,
// ErrRevoked, ErrExpired, or credentials it could never be admitted with
// (none and no token, another node's). Transient errors (the controller
// unreachable, a stream lost) are retried with backoff, never returned.
// Enforcement never depends on it.
func (c *Client) Run(ctx context.Context) error {
	if err := c.ensureIdentity(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wg.Go(func() {
		if err := c.renewLoop(ctx); err != nil {
			cancel(err)
		}
	})
	b := c.newBackoff()
	for {
		tg, established, err := c.stream(ctx)
		if ctx.Err() != nil {
			if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
				return cause
			}
			return nil
		}
		if errors.Is(err, ErrRevoked) {
			return err
		}
		if established {
			b.reset()
		}
		wait := c.nextWait(b, tg, err)
		c.log.Warn("controller stream down; enforcement continues with the rule set in force; reconnecting",
			zap.Error(explain(err)), zap.String("controller", tg.addr), zap.Duration("retry-in", wait))
		select {
		case <-ctx.Done():
			continue
		case <-time.After(wait):
		}
	}
}

// ensureIdentity loads the saved identity, or joins for a new one. With
// a ServiceAccount token, an expired saved certificate is replaced by
// joining again.
func (c *Client) ensureIdentity(ctx context.Context) error {
	saved, err := loadCredentials(c.cfg.State, c.cfg.Node)
	sa := c.cfg.ServiceAccountTokenFile != ""
	switch {
	case err == nil && (c.token == nil || c.token.ID == saved.meta.TokenID):
		if !c.now().After(saved.expiry()) {
			c.creds.Store(saved)
			c.log.Info("using saved node certificate", zap.Time("cert-expiry", saved.expiry()),
				zap.String("cert-serial", pki.Serial(saved.cert.Leaf)))
			return nil
		}
		if !sa {
			return fmt.Errorf("%w at %s: join again with a new --join-token", ErrExpired, saved.expiry().Format(time.RFC3339))
		}
		c.log.Warn("saved node certificate expired; joining again with the ServiceAccount token", zap.Time("cert-expiry", saved.expiry()))
	case err != nil && !errors.Is(err, ErrNoCredentials):
		if c.token == nil && !sa {
			return fmt.Errorf("node credentials: %w", err)
		}
		c.log.Warn("saved credentials unusable; joining with the token given", zap.Error(err))
	case c.token == nil && !sa:
		return errors.New("no node certificate in --state-dir yet: give --join-token (egctl token create --node NAME) or, in Kubernetes, --join-service-account-token-file")
	}
	b := c.newBackoff()
	for {
		tg, creds, fingerprint, err := c.joinOnce(ctx)
		if err == nil {
			c.creds.Store(creds)
			c.log.Info("joined the controller", zap.String("method", joinMethod(sa)), zap.Time("cert-expiry", creds.expiry()),
				zap.String("cert-serial", pki.Serial(creds.cert.Leaf)), zap.String("ca-fingerprint", fingerprint))
			return nil
		}
		var final *finalError
		switch {
		case errors.As(err, &final):
			return final.err
		case errors.Is(err, errWaiting):
		case refused(err) && !sa:
			return fmt.Errorf("%w: %v", ErrJoinRefused, status.Convert(err).Message())
		case refused(err):
			// The kubelet's next token, or the controller's next answer
			// about this pod, may be admitted: retry, never exit.
			err = fmt.Errorf("the controller refused the ServiceAccount token: %s", status.Convert(err).Message())
		}
		wait := c.nextWait(b, tg, err)
		c.log.Warn("join failed; retrying; enforcement continues with what is pinned", zap.Error(explain(err)),
			zap.String("controller", tg.addr), zap.Duration("retry-in", wait))
		select {
		case <-ctx.Done():
			return nil // stopped before joining: Run returns nil, as documented
		case <-time.After(wait):
		}
	}
}

func joinMethod(serviceAccount bool) string {
	if serviceAccount {
		return "service-account"
	}
	return "token"
}

// refused tells the controller's refusals (final) from transport errors.
func refused(err error) bool {
	// The pin check fails inside the TLS handshake, which gRPC reports
	// as a transport error: match its words.
	if errors.Is(err, pki.ErrCAPin) || strings.Contains(err.Error(), pki.ErrCAPin.Error()) {
		return true
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument:
		return !strings.Contains(err.Error(), "authentication handshake failed")
	}
	return false
}

// explain adds what an operator needs to know to transport errors whose
// wording hides it.
func explain(err error) error {
	if err != nil && strings.Contains(err.Error(), "bad certificate") {
		return fmt.Errorf("the controller refuses this node's certificate (revoked, expired or from another CA): %w", err)
	}
	return err
}

// renewLoop renews the certificate at two thirds of its life, retrying
// until it expires.
func (c *Client) renewLoop(ctx context.Context) error {
	b := c.newBackoff()
	for {
		cur := c.creds.Load()
		wait := cur.renewAt().Sub(c.now())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(wait, 0)):
		}
		tg, creds, err := c.renew(ctx)
		if err == nil {
			c.creds.Store(creds)
			b.reset()
			c.log.Info("node certificate renewed", zap.Time("cert-expiry", creds.expiry()),
				zap.String("cert-serial", pki.Serial(creds.cert.Leaf)))
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if status.Code(err) == codes.PermissionDenied {
			return fmt.Errorf("%w: %v", ErrRevoked, status.Convert(err).Message())
		}
		if c.now().After(cur.expiry()) {
			return fmt.Errorf("%w at %s before it could be renewed (%v): join again with a new --join-token",
				ErrExpired, cur.expiry().Format(time.RFC3339), err)
		}
		wait = min(c.nextWait(b, tg, err), time.Until(cur.expiry()))
		c.log.Warn("certificate renewal failed; retrying", zap.Error(explain(err)), zap.Duration("retry-in", wait),
			zap.Time("cert-expiry", cur.expiry()))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(wait, 0)):
		}
	}
}

// nextWait moves on from the target that failed and returns how long to
// wait before the next attempt: the backoff once every target has been
// tried, a short jittered pause before trying the next one.
func (c *Client) nextWait(b *backoff, tg target, err error) time.Duration {
	if tg.addr == "" || c.targets.failed(tg, err) || !c.targets.several() {
		return b.next()
	}
	return c.cfg.MinBackoff/2 + rand.N(c.cfg.MinBackoff/2+1)
}

// dial connects to the current target, checking its certificate against
// the name it was given by.
func (c *Client) dial(ctx context.Context, tlsCfg *tls.Config) (target, *grpc.ClientConn, error) {
	tg, err := c.targets.current(ctx)
	if err != nil {
		return tg, nil, err
	}
	if tlsCfg.ServerName == "" {
		tlsCfg.ServerName = tg.host
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512 << 20)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		grpc.WithReadBufferSize(8 << 10),
		// Fixed flow-control windows: the default dynamic window answers
		// every message the controller sends (a rule set update, a
		// heartbeat) with a BDP-estimation ping, two more TLS records
		// and round trips per message on a controller that serves
		// thousands of agents. 4 MB per round trip still brings a large
		// rule set at 80 MB/s from a controller 50 ms away.
		grpc.WithStaticStreamWindowSize(controllerWindow),
		grpc.WithStaticConnWindowSize(controllerWindow),
	}
	if c.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dialer))
	}
	conn, err := grpc.NewClient("passthrough:///"+tg.addr, opts...)
	if err != nil {
		return tg, nil, fmt.Errorf("controller address %q: %w", tg.addr, err)
	}
	return tg, conn, nil
}

// backoff is jittered exponential backoff: each wait is drawn from the
// upper half of a range that doubles up to the maximum.
type backoff struct {
	min, max, cur time.Duration
}

func (c *Client) newBackoff() *backoff {
	return &backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff, cur: c.cfg.MinBackoff}
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(2*b.cur, b.max)
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.cur = b.min }
