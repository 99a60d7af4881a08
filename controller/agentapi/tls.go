package agentapi

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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// tlsState is the gRPC listener's TLS: the serving certificate (rotated
// at two thirds of its life) and the revoked node certificates (checked
// at every handshake and every RPC).
type tlsState struct {
	s       *Service
	serving atomic.Pointer[tls.Certificate]

	// mu guards revoked; taken after Service.certMu, and no other lock is
	// taken while it is held.
	mu      sync.RWMutex
	revoked map[string]string // serial -> node
}

func newTLSState(ctx context.Context, s *Service) (*tlsState, error) {
	t := &tlsState{s: s, revoked: make(map[string]string)}
	certs, err := s.st.RevokedCerts(ctx, s.now())
	if err != nil {
		return nil, err
	}
	t.revoke(certs)
	if err := t.issue(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *tlsState) revoke(certs []store.Cert) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range certs {
		if !c.Revoked.IsZero() {
			t.revoked[c.Serial] = c.Node
		}
	}
}

func (t *tlsState) isRevoked(serial string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.revoked[serial]
	return ok
}

// issue makes a new serving certificate for the current host names.
func (t *tlsState) issue() error {
	var dns []string
	var ips []net.IP
	for _, h := range t.s.cfg.ServingHosts() {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	cert, err := t.s.ca.IssueServer(dns, ips, t.s.cfg.ServerCertTTL, t.s.now())
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	t.serving.Store(cert)
	ipNames := make([]string, len(ips))
	for i, ip := range ips {
		ipNames[i] = ip.String()
	}
	t.s.log.Info("serving certificate issued", zap.Strings("dns-names", dns), zap.Strings("ip-addresses", ipNames),
		zap.Time("cert-expiry", cert.Leaf.NotAfter), zap.String("cert-serial", pki.Serial(cert.Leaf)))
	return nil
}

// rotate renews the serving certificate at two thirds of its life, until
// ctx is done. Connections already open keep the certificate they were
// made with; new ones get the new one.
func (t *tlsState) rotate(ctx context.Context) {
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
			t.s.log.Error("serving certificate not rotated; retrying in a minute", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

// serverConfig is the gRPC listener's TLS configuration. A client
// certificate is requested but not required (Join has none); when given,
// its chain is verified here, so a certificate of another CA, expired or
// without a node identity fails the handshake, with a log line that says
// why. A revoked one passes the handshake: every RPC it could open checks
// revocation (authenticate) and refuses it with PermissionDenied and the
// reason, which tells the agent to stop retrying; a failed handshake would
// tell it nothing, and it would try again forever.
func (t *tlsState) serverConfig() *tls.Config {
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return t.serving.Load(), nil
		},
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2"},
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c := base.Clone()
			remote := hello.Conn.RemoteAddr()
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return nil // only Join accepts that; every other RPC checks
				}
				_, err := t.verifyChain(cs.PeerCertificates)
				if err != nil {
					t.s.refusals.Warn(remote, "agent certificate refused", zap.Stringer("remote", remote), zap.Error(err))
				}
				return err
			}
			return c, nil
		},
	}
}

var errRevoked = errors.New("certificate revoked")

// verify checks a node certificate chain: CA, validity, node identity,
// revocation.
func (t *tlsState) verify(chain []*x509.Certificate) (string, error) {
	node, err := t.verifyChain(chain)
	if err != nil {
		return "", err
	}
	if err := t.checkNotRevoked(identity{node: node, cert: chain[0]}); err != nil {
		return "", err
	}
	return node, nil
}

// checkNotRevoked says whether id's certificate was revoked, and counts
// the refusal if so. The caller holds Service.certMu when the answer must
// stay true until it has acted on it.
func (t *tlsState) checkNotRevoked(id identity) error {
	if serial := pki.Serial(id.cert); t.isRevoked(serial) {
		t.s.m.refused.WithLabelValues("revoked").Inc()
		return fmt.Errorf("%w: certificate of node %q (serial %s) was revoked", errRevoked, id.node, serial)
	}
	return nil
}

// verifyChain checks a node certificate chain but not revocation.
func (t *tlsState) verifyChain(chain []*x509.Certificate) (string, error) {
	node, err := t.s.ca.VerifyNode(chain, t.s.now())
	switch {
	case errors.Is(err, pki.ErrCertExpired), errors.Is(err, pki.ErrCertNotYet):
		t.s.m.refused.WithLabelValues("expired").Inc()
	case errors.Is(err, pki.ErrUnknownCA):
		t.s.m.refused.WithLabelValues("unknown_ca").Inc()
	case errors.Is(err, pki.ErrNoNodeIdentity):
		t.s.m.refused.WithLabelValues("no_identity").Inc()
	}
	if err != nil {
		return "", err
	}
	return node, nil
}

// identity is the node an RPC's connection was authenticated as.
type identity struct {
	node string
	cert *x509.Certificate
}

// authenticate returns the caller's node identity, checked again (a long
// connection outlives a revocation or its certificate's expiry).
func (s *Service) authenticate(ctx context.Context) (identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return identity{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return identity{}, status.Error(codes.Unauthenticated, "this RPC needs a node certificate: join with a token first")
	}
	node, err := s.tls.verify(info.State.PeerCertificates)
	if err != nil {
		s.refusals.Warn(p.Addr, "agent RPC refused", zap.Stringer("remote", p.Addr), zap.Error(err))
		code := codes.Unauthenticated
		if errors.Is(err, errRevoked) {
			code = codes.PermissionDenied
		}
		return identity{}, status.Error(code, err.Error())
	}
	return identity{node: node, cert: info.State.PeerCertificates[0]}, nil
}
