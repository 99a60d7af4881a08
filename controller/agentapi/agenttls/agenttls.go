// Package agenttls is the TLS of the controller's agent-facing listener:
// the serving certificate (issued from the controller's CA for the host
// names of the moment, rotated at two thirds of its life), the serials of
// revoked node certificates, and the server configuration that verifies a
// node's chain at the handshake.
//
// It must not import the rest of the controller (agentapi uses it) nor
// anything under agent/.
package agenttls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/eastguard/eastguard/internal/pki"
)

// Config configures a State.
type Config struct {
	CA *pki.CA
	// Hosts returns the DNS names and IP addresses the serving
	// certificate must cover; it is called at every rotation.
	Hosts func() []string
	// TTL is the serving certificate's lifetime.
	TTL time.Duration
	Now func() time.Time
	Log *zap.Logger
	// Refused counts a node chain refused, by reason (expired, unknown_ca,
	// no_identity); HandshakeRefused logs one refused at a handshake.
	Refused          func(reason string)
	HandshakeRefused func(remote net.Addr, err error)
}

// State is the listener's TLS.
type State struct {
	cfg     Config
	serving atomic.Pointer[tls.Certificate]

	// mu guards revoked; no other lock is taken while it is held (callers
	// may hold theirs: agentapi's certMu comes before it).
	mu      sync.RWMutex
	revoked map[string]string // serial -> node
}

// New issues the first serving certificate.
func New(cfg Config) (*State, error) {
	t := &State{cfg: cfg, revoked: make(map[string]string)}
	if err := t.issue(); err != nil {
		return nil, err
	}
	return t, nil
}

// Serving is the serving certificate in use.
func (t *State) Serving() *tls.Certificate { return t.serving.Load() }

// Revoke records a revoked node certificate.
func (t *State) Revoke(serial, node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.revoked[serial] = node
}

// IsRevoked says whether the certificate of serial was revoked.
func (t *State) IsRevoked(serial string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.revoked[serial]
	return ok
}

// issue makes a new serving certificate for the current host names.
func (t *State) issue() error {
	var dns []string
	var ips []net.IP
	for _, h := range t.cfg.Hosts() {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	cert, err := t.cfg.CA.IssueServer(dns, ips, t.cfg.TTL, t.cfg.Now())
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	t.serving.Store(cert)
	ipNames := make([]string, len(ips))
	for i, ip := range ips {
		ipNames[i] = ip.String()
	}
	t.cfg.Log.Info("serving certificate issued", zap.Strings("dns-names", dns), zap.Strings("ip-addresses", ipNames),
		zap.Time("cert-expiry", cert.Leaf.NotAfter), zap.String("cert-serial", pki.Serial(cert.Leaf)))
	return nil
}

// Rotate renews the serving certificate at two thirds of its life, until
// ctx is done. Connections already open keep the certificate they were
// made with; new ones get the new one.
func (t *State) Rotate(ctx context.Context) {
	for {
		leaf := t.serving.Load().Leaf
		wait := time.Until(leaf.NotBefore.Add(2 * leaf.NotAfter.Sub(leaf.NotBefore) / 3))
		timer := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if err := t.issue(); err != nil {
			t.cfg.Log.Error("serving certificate not rotated; retrying in a minute", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

// ServerCredentials are the listener's gRPC credentials: TLS with
// ServerConfig, and a chain refused at the handshake logged with the
// address it came from (HandshakeRefused).
func (t *State) ServerCredentials() credentials.TransportCredentials {
	return serverCreds{TransportCredentials: credentials.NewTLS(t.ServerConfig()), refused: t.cfg.HandshakeRefused}
}

// ServerConfig is the listener's TLS configuration. A client certificate
// is requested but not required (Join has none); when given, its chain is
// verified here, so a certificate of another CA, expired or without a
// node identity fails the handshake, with a log line that says why
// (ServerCredentials). A revoked one passes the handshake: every RPC it
// could open checks revocation and refuses it with PermissionDenied and
// the reason, which tells the agent to stop retrying; a failed handshake
// would tell it nothing, and it would try again forever. One
// configuration for every connection: a configuration made per client
// (GetConfigForClient, to know the remote address for the log) was two
// clones of it per handshake, one kept by every connection for its life.
func (t *State) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.serving.Load(), nil
		},
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // only Join accepts that; every other RPC checks
			}
			if _, err := t.VerifyChain(cs.PeerCertificates); err != nil {
				return &chainRefused{err: err}
			}
			return nil
		},
	}
}

// chainRefused is a node chain that VerifyChain refused at a handshake.
type chainRefused struct{ err error }

func (e *chainRefused) Error() string { return e.err.Error() }
func (e *chainRefused) Unwrap() error { return e.err }

// serverCreds logs the chains refused at a handshake, with the address
// they came from (which VerifyConnection is not told).
type serverCreds struct {
	credentials.TransportCredentials
	refused func(remote net.Addr, err error)
}

func (c serverCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if refused, ok := errors.AsType[*chainRefused](err); ok {
		c.refused(conn.RemoteAddr(), refused.err)
	}
	return out, info, err
}

func (c serverCreds) Clone() credentials.TransportCredentials {
	return serverCreds{TransportCredentials: c.TransportCredentials.Clone(), refused: c.refused}
}

// VerifyChain checks a node certificate chain (CA, validity, node
// identity) but not revocation, and returns its node.
func (t *State) VerifyChain(chain []*x509.Certificate) (string, error) {
	node, err := t.cfg.CA.VerifyNode(chain, t.cfg.Now())
	switch {
	case errors.Is(err, pki.ErrCertExpired), errors.Is(err, pki.ErrCertNotYet):
		t.cfg.Refused("expired")
	case errors.Is(err, pki.ErrUnknownCA):
		t.cfg.Refused("unknown_ca")
	case errors.Is(err, pki.ErrNoNodeIdentity):
		t.cfg.Refused("no_identity")
	}
	if err != nil {
		return "", err
	}
	return node, nil
}
