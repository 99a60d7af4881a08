package agentapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// newTLS makes the listener's TLS (agenttls) with the revoked
// certificates from the store.
func newTLS(ctx context.Context, s *Service) (*agenttls.State, error) {
	t, err := agenttls.New(agenttls.Config{
		CA: s.ca, Hosts: s.cfg.ServingHosts, TTL: s.cfg.ServerCertTTL, Now: s.now, Log: s.log,
		Refused: func(reason string) { s.m.refused.WithLabelValues(reason).Inc() },
		HandshakeRefused: func(remote net.Addr, err error) {
			s.refusals.Warn(remote, "agent certificate refused", zap.Stringer("remote", remote), zap.Error(err))
		},
	})
	if err != nil {
		return nil, err
	}
	certs, err := s.st.RevokedCerts(ctx, s.now())
	if err != nil {
		return nil, err
	}
	revoke(t, certs)
	return t, nil
}

func revoke(t *agenttls.State, certs []store.Cert) {
	for _, c := range certs {
		if !c.Revoked.IsZero() {
			t.Revoke(c.Serial, c.Node)
		}
	}
}

var errRevoked = errors.New("certificate revoked")

// checkNotRevoked says whether id's certificate was revoked, and counts
// the refusal if so. The caller holds certMu when the answer must stay
// true until it has acted on it.
func (s *Service) checkNotRevoked(id identity) error {
	return s.checkSerialNotRevoked(id.node, pki.Serial(id.cert))
}

// checkSerialNotRevoked is checkNotRevoked for a certificate's serial
// (pki.Serial) already known: a stream's heartbeats check it every time,
// and formatting the serial was most of what a heartbeat cost.
func (s *Service) checkSerialNotRevoked(node, serial string) error {
	if s.tls.IsRevoked(serial) {
		s.m.refused.WithLabelValues("revoked").Inc()
		return fmt.Errorf("%w: certificate of node %q (serial %s) was revoked", errRevoked, node, serial)
	}
	return nil
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
	chain := info.State.PeerCertificates
	node, err := s.tls.VerifyChain(chain)
	id := identity{node: node, cert: chain[0]}
	if err == nil {
		err = s.checkNotRevoked(id)
	}
	if err != nil {
		s.refusals.Warn(p.Addr, "agent RPC refused", zap.Stringer("remote", p.Addr), zap.Error(err))
		code := codes.Unauthenticated
		if errors.Is(err, errRevoked) {
			code = codes.PermissionDenied
		}
		return identity{}, status.Error(code, err.Error())
	}
	return id, nil
}
