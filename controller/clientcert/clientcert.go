// Package clientcert decides which TLS client certificates may log in to
// the dashboard on the HTTP listener: those issued by the operator's
// certificate authorities (--http-client-ca), for client authentication,
// naming a person or service in their subject's common name, not expired
// and not revoked by their issuer's CRL (--http-client-crl, read again
// whenever the file changes).
//
// Invariants:
//   - The controller's own CA is never trusted here. It issues every
//     agent's certificate: trusting it would make any node's key (a
//     compromised node's) an administrator's. Load refuses a bundle that
//     holds it.
//   - Revocation fails closed: when a CRL is configured but cannot be read
//     or verified, no certificate is accepted until it can, and the error
//     says why. A CRL is only believed when one of the trusted CAs signed
//     it.
//   - A login certificate is checked again at every request of its
//     session (Identify): a session ends with its certificate's validity,
//     and its revocation takes effect at the next request.
//
// It must not import anything outside internal/ (restapi and the
// controller's main use it).
package clientcert

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
)

// Sentinel errors of Identify.
var (
	// ErrNoCertificate: the connection presented no certificate (or none
	// that the TLS handshake verified against the trusted CAs).
	ErrNoCertificate = errors.New("no verified client certificate on this connection")
	// ErrRefused wraps every refusal of a presented certificate (expired,
	// revoked, no usable name, CRL unavailable): errors.Is(err, ErrRefused).
	ErrRefused = errors.New("client certificate refused")
)

// maxName bounds a certificate's common name, as admin tokens' names are.
const maxName = 64

// Config says which certificates to trust.
type Config struct {
	// CAFile is a PEM bundle of the CA certificates whose client
	// certificates may log in.
	CAFile string
	// CRLFile, optional, is a PEM or DER certificate revocation list
	// signed by one of those CAs.
	CRLFile string
	// OwnCA is the controller's CA, refused in CAFile.
	OwnCA *x509.Certificate
	Log   *zap.Logger
	Now   func() time.Time
}

// Identity is who a verified certificate names.
type Identity struct {
	// Name is the subject's common name.
	Name string
	// Fingerprint is the SHA-256 of the certificate: a session is bound
	// to it.
	Fingerprint [sha256.Size]byte
	NotAfter    time.Time
}

// ID is a short stable id of the certificate, for logs and records
// ("cert:" and 16 hex digits of its fingerprint).
func (id Identity) ID() string { return "cert:" + hex.EncodeToString(id.Fingerprint[:8]) }

// Verifier checks client certificates. It is safe for concurrent use.
type Verifier struct {
	cfg  Config
	pool *x509.CertPool
	cas  []*x509.Certificate

	mu sync.Mutex // guards the CRL's state below
	// crlStamp is the CRL file's size and modification time when it was
	// last read; revoked maps issuer subject + serial to revoked; crlErr
	// is why the last read failed (every certificate is refused while it
	// is set).
	crlStamp string
	revoked  map[string]bool
	crlErr   error
}

// Load reads the CA bundle (and the CRL, if any) and returns a Verifier,
// or what is wrong, naming the file.
func Load(cfg Config) (*Verifier, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	data, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--http-client-ca: %w", err)
	}
	cas, err := parseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("--http-client-ca %s: %w", cfg.CAFile, err)
	}
	v := &Verifier{cfg: cfg, pool: x509.NewCertPool(), cas: cas}
	for i, c := range cas {
		if cfg.OwnCA != nil && bytes.Equal(c.Raw, cfg.OwnCA.Raw) || cfg.OwnCA != nil && bytes.Equal(c.RawSubjectPublicKeyInfo, cfg.OwnCA.RawSubjectPublicKeyInfo) {
			return nil, fmt.Errorf("--http-client-ca %s: certificate %d is the controller's own CA, which issues every agent's certificate; "+
				"give the CA of your administrators' certificates instead", cfg.CAFile, i+1)
		}
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("--http-client-ca %s: certificate %d (%s) is not a CA certificate", cfg.CAFile, i+1, c.Subject)
		}
		v.pool.AddCert(c)
	}
	if cfg.CRLFile != "" {
		v.mu.Lock()
		v.reloadLocked()
		err := v.crlErr
		v.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return v, nil
}

// parseCerts returns the certificates of a PEM bundle; anything else in
// it is an error.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", n, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data that is not PEM")
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in it")
	}
	return out, nil
}

// Configure makes a server's TLS configuration ask for a client
// certificate and verify one that is given (none is still fine: the
// admin token logs in too).
func (v *Verifier) Configure(c *tls.Config) {
	c.ClientAuth = tls.VerifyClientCertIfGiven
	c.ClientCAs = v.pool
}

// Identify returns who the connection's client certificate names, or why
// it is refused (ErrNoCertificate, or an error wrapping ErrRefused).
func (v *Verifier) Identify(cs *tls.ConnectionState) (Identity, error) {
	// The handshake verified the chain (Configure); a connection without
	// verified chains presented nothing usable.
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoCertificate
	}
	leaf := cs.VerifiedChains[0][0]
	refuse := func(format string, args ...any) (Identity, error) {
		return Identity{}, fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
	}
	// A keep-alive connection outlives its handshake: check the time now.
	now := v.cfg.Now()
	if now.After(leaf.NotAfter) {
		return refuse("certificate of %q expired at %s", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	name := leaf.Subject.CommonName
	if name == "" || len(name) > maxName || !utf8.ValidString(name) || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return refuse("the certificate's subject common name %q must name its holder (printable, 1 to %d bytes)", name, maxName)
	}
	if v.cfg.CRLFile != "" {
		if err := v.checkRevoked(cs.VerifiedChains); err != nil {
			return Identity{}, err
		}
	}
	return Identity{Name: name, Fingerprint: sha256.Sum256(leaf.Raw), NotAfter: leaf.NotAfter}, nil
}

// checkRevoked refuses a certificate whose issuer's CRL lists it, and
// every certificate while the CRL cannot be read.
func (v *Verifier) checkRevoked(chains [][]*x509.Certificate) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reloadLocked()
	if v.crlErr != nil {
		return fmt.Errorf("%w: revocation cannot be checked: %v", ErrRefused, v.crlErr)
	}
	// Every certificate of every verified chain but the root: an
	// intermediate CA revoked by the root revokes what it issued.
	for _, chain := range chains {
		for i := 0; i+1 < len(chain); i++ {
			if v.revoked[revocationKey(chain[i].RawIssuer, chain[i].SerialNumber.String())] {
				return fmt.Errorf("%w: certificate serial %s (%q) is revoked by its issuer's CRL", ErrRefused,
					chain[i].SerialNumber, chain[i].Subject.CommonName)
			}
		}
	}
	return nil
}

func revocationKey(rawIssuer []byte, serial string) string {
	return string(rawIssuer) + "\x00" + serial
}

// reloadLocked reads the CRL file again when its size or modification
// time changed. A file that cannot be read or verified sets crlErr (and
// is retried at the next call); a good one clears it.
func (v *Verifier) reloadLocked() {
	fi, err := os.Stat(v.cfg.CRLFile)
	if err != nil {
		v.setCRLErrLocked(fmt.Errorf("--http-client-crl: %w", err))
		return
	}
	stamp := fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	if stamp == v.crlStamp && v.crlErr == nil {
		return
	}
	revoked, next, err := v.readCRL()
	if err != nil {
		v.setCRLErrLocked(fmt.Errorf("--http-client-crl %s: %w", v.cfg.CRLFile, err))
		return
	}
	if !next.IsZero() && v.cfg.Now().After(next) {
		// A stale CRL is still the best list there is: use it, and say
		// that it should be refreshed.
		v.cfg.Log.Warn("client certificate CRL is past its next update; publish a new one", zap.String("file", v.cfg.CRLFile),
			zap.Time("next-update", next))
	}
	if v.crlErr != nil {
		v.cfg.Log.Info("client certificate CRL readable again", zap.String("file", v.cfg.CRLFile))
	}
	v.crlStamp, v.revoked, v.crlErr = stamp, revoked, nil
	v.cfg.Log.Info("client certificate CRL loaded", zap.String("file", v.cfg.CRLFile), zap.Int("revoked", len(revoked)))
}

func (v *Verifier) setCRLErrLocked(err error) {
	if v.crlErr == nil || v.crlErr.Error() != err.Error() {
		v.cfg.Log.Error("client certificate logins refused: the CRL cannot be used", zap.Error(err))
	}
	v.crlErr, v.crlStamp = err, ""
}

// readCRL parses the CRL file (PEM "X509 CRL" or DER) and checks that a
// trusted CA signed it.
func (v *Verifier) readCRL() (map[string]bool, time.Time, error) {
	data, err := os.ReadFile(v.cfg.CRLFile)
	if err != nil {
		return nil, time.Time{}, err
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, time.Time{}, fmt.Errorf("PEM block is %q, want X509 CRL", b.Type)
		}
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, time.Time{}, err
	}
	var signedBy bool
	for _, ca := range v.cas {
		if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
			signedBy = true
			break
		}
	}
	if !signedBy {
		return nil, time.Time{}, fmt.Errorf("not signed by any CA of --http-client-ca (issuer %s)", crl.Issuer)
	}
	revoked := make(map[string]bool, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		revoked[revocationKey(crl.RawIssuer, e.SerialNumber.String())] = true
	}
	return revoked, crl.NextUpdate, nil
}
