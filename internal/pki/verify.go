package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of certificate checks, for callers that log or count
// refusals by kind.
var (
	ErrNoCertificate = errors.New("no client certificate")
	ErrCertExpired   = errors.New("certificate expired")
	ErrCertNotYet    = errors.New("certificate not valid yet")
	ErrUnknownCA     = errors.New("certificate not signed by this controller's CA")
	ErrCAPin         = errors.New("controller CA does not match the join token's CA fingerprint")
)

// VerifyNode verifies a client certificate chain (leaf first, as a TLS
// handshake presents it) against the CA at time now and returns the node
// the leaf speaks for. Errors name the certificate and say what is wrong.
func (ca *CA) VerifyNode(chain []*x509.Certificate, now time.Time) (string, error) {
	if len(chain) == 0 {
		return "", ErrNoCertificate
	}
	leaf := chain[0]
	who := fmt.Sprintf("certificate %q (serial %s)", leaf.Subject.CommonName, Serial(leaf))
	if now.After(leaf.NotAfter) {
		return "", fmt.Errorf("%w: %s expired at %s", ErrCertExpired, who, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return "", fmt.Errorf("%w: %s is valid from %s", ErrCertNotYet, who, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: ca.Pool(), Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrUnknownCA, who, err)
	}
	node, err := NodeOf(leaf)
	if err != nil {
		return "", fmt.Errorf("%s: %w", who, err)
	}
	return node, nil
}

// VerifyPinned returns a tls.Config.VerifyConnection for an agent's first
// contact, when it trusts nothing but the CA fingerprint of its join
// token: the server's chain must hold a CA certificate with that
// fingerprint, and the leaf must be a serving certificate that CA signed
// for the name dialled. The configuration must set InsecureSkipVerify
// (this function replaces the default verification, it does not relax it).
func VerifyPinned(fingerprint string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("controller presented no certificate")
		}
		var ca *x509.Certificate
		for _, c := range cs.PeerCertificates {
			if c.IsCA && Fingerprint(c) == fingerprint {
				ca = c
				break
			}
		}
		if ca == nil {
			return fmt.Errorf("%w (token pins %.16s..., the controller's chain has none such)", ErrCAPin, fingerprint)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots: roots, DNSName: cs.ServerName,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("controller certificate: %w", err)
		}
		return nil
	}
}

// NewNodeKey creates an agent's private key (ECDSA P-256) and returns it
// with its PEM. The key never leaves the agent: only CSRs do.
func NewNodeKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	pemKey, err := EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pemKey, nil
}

// NewCSR returns a DER certificate signing request for node, signed by key.
func NewCSR(key crypto.Signer, node string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: node},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate signing request: %w", err)
	}
	return der, nil
}

// CheckIssued checks what a controller returned for a CSR: a certificate
// for node, for key's public key, signed by ca, valid now. Agents run it
// before they save anything.
func CheckIssued(certPEM []byte, key crypto.Signer, node string, ca *x509.Certificate, now time.Time) (*x509.Certificate, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("issued certificate is not for this agent's key")
	}
	got, err := NodeOf(cert)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if got != node {
		return nil, fmt.Errorf("issued certificate is for node %q, this agent is %q", got, node)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	return cert, nil
}
