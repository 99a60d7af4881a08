package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// Lifetimes.
const (
	// DefaultNodeCertTTL is how long a node certificate is valid.
	DefaultNodeCertTTL = time.Hour
	// DefaultServerCertTTL is how long the controller's serving
	// certificate is valid; it is rotated at two thirds of that.
	DefaultServerCertTTL = 24 * time.Hour
	// CALifetime is the built-in CA's validity.
	CALifetime = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore, so that a peer whose clock is a
	// little behind accepts a fresh certificate.
	clockSkew = time.Minute
)

// CA is a certificate authority: the controller's built-in one or one the
// operator supplied.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
}

// NewCA creates a self-signed ECDSA P-256 CA. It returns the CA and its
// private key, PEM (PKCS#8), for the caller to store.
func NewCA(now time.Time) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Eastguard"}, CommonName: "Eastguard CA " + serial.Text(16)[:8]},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-sign CA: %w", err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := LoadCA(pemCert(der), keyPEM)
	if err != nil {
		return nil, nil, err
	}
	return ca, keyPEM, nil
}

// LoadCA parses a CA certificate and its private key (PEM: PKCS#8, SEC 1
// EC or PKCS#1 RSA) and checks that they belong together and that the
// certificate may sign certificates.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("CA certificate %q is not a CA (basic constraints CA:TRUE missing)", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %q may not sign certificates (key usage lacks certSign)", cert.Subject)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("CA key does not belong to the CA certificate")
	}
	return &CA{Cert: cert, CertPEM: pemCert(cert.Raw), key: key}, nil
}

// Fingerprint is what a join token carries to pin this CA: the SHA-256 of
// its SubjectPublicKeyInfo, hexadecimal (as kubeadm's discovery hash).
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint returns the SHA-256 of cert's SubjectPublicKeyInfo, hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// SignNode checks a node's CSR (DER) and signs a client certificate for
// node valid for ttl from now: CheckCSR, then IssueNode.
func (ca *CA) SignNode(csrDER []byte, node string, ttl time.Duration, now time.Time) (*x509.Certificate, []byte, error) {
	csr, err := CheckCSR(csrDER)
	if err != nil {
		return nil, nil, err
	}
	return ca.IssueNode(csr, node, ttl, now)
}

// IssueNode signs a client certificate for node, valid for ttl from now,
// for the key of csr, which CheckCSR returned (callers check the CSR
// before they take any lock, and issue under it). Whatever names the CSR
// asks for are ignored: the certificate names the node the caller vouches
// for. It returns the certificate and its PEM.
func (ca *CA) IssueNode(csr *x509.CertificateRequest, node string, ttl time.Duration, now time.Time) (*x509.Certificate, []byte, error) {
	if err := ValidNodeName(node); err != nil {
		return nil, nil, err
	}
	if err := acceptableKey(csr.PublicKey); err != nil { // cheap: no signature check
		return nil, nil, fmt.Errorf("certificate signing request: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Eastguard nodes"}, CommonName: node},
		URIs:         []*url.URL{NodeURI(node)},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     ca.capLifetime(now.Add(ttl)),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.sign(tmpl, csr.PublicKey)
}

// MaxCSRSize bounds a CSR (DER). An ECDSA P-256 or Ed25519 CSR is a few
// hundred bytes.
const MaxCSRSize = 4 << 10

// CheckCSR parses a DER certificate signing request and checks its key
// type and its signature (the requester holds the key). It runs on
// unauthenticated input (Join), so what it costs is bounded before
// anything expensive: the size first, then the key type and size (a huge
// RSA modulus would make the signature check take minutes), and only then
// the signature.
func CheckCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("certificate signing request: empty")
	}
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("certificate signing request of %d bytes: at most %d (an ECDSA P-256 or Ed25519 CSR is a few hundred)", len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("certificate signing request: %w", err)
	}
	if err := acceptableKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("certificate signing request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate signing request: signature: %w", err)
	}
	return csr, nil
}

// IssueServer creates a key and a serving certificate for the controller,
// valid for ttl, for the given DNS names and IP addresses. The returned
// tls.Certificate carries the CA certificate after the leaf, so that an
// agent joining with a pinned CA fingerprint finds the CA in the handshake.
func (ca *CA) IssueServer(dnsNames []string, ips []net.IP, ttl time.Duration, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Eastguard"}, CommonName: "eastguard-controller"},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     ca.capLifetime(now.Add(ttl)),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leaf, _, err := ca.sign(tmpl, key.Public())
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func (ca *CA) capLifetime(notAfter time.Time) time.Time {
	if notAfter.After(ca.Cert.NotAfter) {
		return ca.Cert.NotAfter
	}
	return notAfter
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, []byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pemCert(der), nil
}

// acceptableKey admits the key types Eastguard issues certificates for.
func acceptableKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA key on curve %s: want P-256 or P-384", k.Curve.Params().Name)
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("%T key: want ECDSA P-256 or Ed25519", pub)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // positive, never 0
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseCertificatePEM returns the first certificate of a PEM bundle.
func ParseCertificatePEM(b []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCertificatesPEM returns every certificate of a PEM bundle, at least
// one.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// EncodeKey returns a private key as PEM (PKCS#8).
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads a PEM private key: PKCS#8, SEC 1 EC or PKCS#1 RSA.
func ParseKey(b []byte) (crypto.Signer, error) {
	var block *pem.Block
	for rest := b; ; {
		block, rest = pem.Decode(rest)
		if block == nil || strings.HasSuffix(block.Type, "PRIVATE KEY") {
			break
		}
	}
	if block == nil {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("unsupported private key type %T", key)
}
