package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/fsutil"
	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Files in the state directory. node.pem holds the certificate and its key
// together, so that one atomic write replaces both.
const (
	credsFile = "node.pem"
	caFile    = "ca.crt"
	metaFile  = "node.json"
)

// identity is the agent's certificate and key, the CA it
// trusts the controller through, and where they came from.
type identity struct {
	cert *tls.Certificate // Leaf set
	ca   *x509.Certificate
	meta credMeta
}

// credMeta records how the credentials were obtained.
type credMeta struct {
	Node string `json:"node"`
	// TokenID is the join token the node joined with: a different token
	// on the command line means "join again".
	TokenID string `json:"tokenId"`
	// Received is when the certificate arrived: renewal is due at two
	// thirds of the time from then to its expiry.
	Received time.Time `json:"received"`
}

// renewAt is when the certificate is due for renewal.
func (c *identity) renewAt() time.Time {
	from := c.meta.Received
	if from.IsZero() || from.After(c.cert.Leaf.NotAfter) {
		from = c.cert.Leaf.NotBefore
	}
	return from.Add(2 * c.cert.Leaf.NotAfter.Sub(from) / 3)
}

func (c *identity) expiry() time.Time { return c.cert.Leaf.NotAfter }

// ErrNoCredentials is returned by loadCredentials when the state directory
// holds none.
var ErrNoCredentials = errors.New("no credentials in the state directory")

// loadCredentials reads the saved credentials of node.
func loadCredentials(dir *state.Dir, node string) (*identity, error) {
	path := func(f string) string { return filepath.Join(dir.Path(), f) }
	pemData, err := os.ReadFile(path(credsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCredentials
	}
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(pemData, pemData)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path(credsFile), err)
	}
	caPEM, err := os.ReadFile(path(caFile))
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := pki.ParseCertificatePEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path(caFile), err)
	}
	var meta credMeta
	if b, err := os.ReadFile(path(metaFile)); err == nil {
		if err := json.Unmarshal(b, &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", path(metaFile), err)
		}
	}
	certNode, err := pki.NodeOf(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path(credsFile), err)
	}
	if certNode != node {
		return nil, fmt.Errorf("%s: the saved certificate is for node %q, this agent is %q", path(credsFile), certNode, node)
	}
	return &identity{cert: &cert, ca: ca, meta: meta}, nil
}

// save writes the credentials: the CA first, then certificate and key in
// one atomic write, then the metadata. A crash in between leaves a
// consistent certificate and key.
func (c *identity) save(dir *state.Dir, key crypto.Signer) error {
	path := func(f string) string { return filepath.Join(dir.Path(), f) }
	if err := fsutil.WriteFileAtomic(path(caFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.ca.Raw}), 0o600); err != nil {
		return fmt.Errorf("save CA certificate: %w", err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	var creds []byte
	for _, der := range c.cert.Certificate {
		creds = append(creds, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	creds = append(creds, keyPEM...)
	if err := fsutil.WriteFileAtomic(path(credsFile), creds, 0o600); err != nil {
		return fmt.Errorf("save node certificate: %w", err)
	}
	meta, err := json.Marshal(c.meta)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path(metaFile), meta, 0o600)
}

// issued turns a controller's answer to a CSR into credentials, after
// checking it: the certificate is for this node and key, signed by the CA,
// and the CA is the one expected (the pinned fingerprint, or the saved CA).
func issued(certPEM, caPEM []byte, key crypto.Signer, node, wantCA string, meta credMeta, now time.Time) (*identity, error) {
	ca, err := pki.ParseCertificatePEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("controller's CA certificate: %w", err)
	}
	if got := pki.Fingerprint(ca); got != wantCA {
		return nil, fmt.Errorf("%w: it sent CA %.16s..., want %.16s...", pki.ErrCAPin, got, wantCA)
	}
	leaf, err := pki.CheckIssued(certPEM, key, node, ca, now)
	if err != nil {
		return nil, err
	}
	meta.Node, meta.Received = node, now
	return &identity{
		cert: &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		ca:   ca,
		meta: meta,
	}, nil
}

// errWaiting marks a join attempt that could not start: a file it needs
// is missing or unreadable (retried: it may come later).
var errWaiting = errors.New("waiting")

// finalError is a join attempt's error that retrying cannot mend.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }

// joinRequest reads what this attempt joins with: the join token or the
// ServiceAccount token file, and the CA to pin (the join token's
// fingerprint, or the CA file's).
func (c *Client) joinRequest() (*pb.JoinRequest, string, error) {
	req := &pb.JoinRequest{Node: c.cfg.Node}
	var pin string
	if c.token != nil {
		req.TokenId, req.TokenSecret, pin = c.token.ID, c.token.Secret, c.token.CAFingerprint
	}
	if c.cfg.CAFile != "" {
		b, err := os.ReadFile(c.cfg.CAFile)
		if err != nil {
			return nil, "", fmt.Errorf("%w for the controller's CA certificate (--ca-file): %w", errWaiting, err)
		}
		ca, err := pki.ParseCertificatePEM(b)
		if err != nil {
			return nil, "", fmt.Errorf("%w for a valid CA certificate in --ca-file %s: %w", errWaiting, c.cfg.CAFile, err)
		}
		fp := pki.Fingerprint(ca)
		if pin != "" && fp != pin {
			return nil, "", &finalError{fmt.Errorf("%w: --ca-file %s holds CA %.16s..., the join token pins %.16s...: give the controller's CA or drop --ca-file",
				pki.ErrCAPin, c.cfg.CAFile, fp, pin)}
		}
		pin = fp
	}
	if c.cfg.ServiceAccountTokenFile != "" {
		b, err := os.ReadFile(c.cfg.ServiceAccountTokenFile)
		if err == nil && len(bytes.TrimSpace(b)) == 0 {
			err = errors.New("empty")
		}
		if err != nil {
			return nil, "", fmt.Errorf("%w for the ServiceAccount token (--join-service-account-token-file): %w", errWaiting, err)
		}
		req.ServiceAccountToken = string(bytes.TrimSpace(b))
	}
	return req, pin, nil
}

// joinOnce trades the token and a CSR for credentials, trusting the
// controller only if its chain holds the pinned CA. It returns the pinned
// CA's fingerprint.
func (c *Client) joinOnce(ctx context.Context) (target, *identity, string, error) {
	req, pin, err := c.joinRequest()
	if err != nil {
		return target{}, nil, "", err
	}
	key, csr, err := c.newKey()
	if err != nil {
		return target{}, nil, "", err
	}
	req.Csr = csr
	tg, conn, err := c.dial(ctx, &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Replaced, not relaxed: VerifyPinned checks the chain against the
		// pinned CA's fingerprint and the leaf against the name dialled.
		InsecureSkipVerify: true,
		VerifyConnection:   pki.VerifyPinned(pin),
	})
	if err != nil {
		return tg, nil, "", err
	}
	defer conn.Close()
	resp, err := pb.NewControlClient(conn).Join(ctx, req)
	if err != nil {
		return tg, nil, "", err
	}
	creds, err := issued(resp.GetCertificate(), resp.GetCa(), key, c.cfg.Node, pin, credMeta{TokenID: req.GetTokenId()}, c.now())
	if err != nil {
		return tg, nil, "", err
	}
	if err := creds.save(c.cfg.State, key); err != nil {
		return tg, nil, "", err
	}
	return tg, creds, pin, nil
}

// renew asks for a new certificate for a new key over a fresh mutual-TLS
// connection; the stream keeps running on its own connection meanwhile.
func (c *Client) renew(ctx context.Context) (target, *identity, error) {
	old := c.creds.Load()
	key, csr, err := c.newKey()
	if err != nil {
		return target{}, nil, err
	}
	tg, conn, err := c.dial(ctx, c.mutualTLS())
	if err != nil {
		return tg, nil, err
	}
	defer conn.Close()
	resp, err := pb.NewControlClient(conn).Renew(ctx, &pb.RenewRequest{Csr: csr})
	if err != nil {
		return tg, nil, err
	}
	creds, err := issued(resp.GetCertificate(), resp.GetCa(), key, c.cfg.Node, pki.Fingerprint(old.ca), old.meta, c.now())
	if err != nil {
		return tg, nil, err
	}
	if err := creds.save(c.cfg.State, key); err != nil {
		return tg, nil, err
	}
	return tg, creds, nil
}

// newKey makes a fresh key (each certificate gets its own) and the CSR
// that asks for it.
func (c *Client) newKey() (crypto.Signer, []byte, error) {
	key, _, err := pki.NewNodeKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.NewCSR(key, c.cfg.Node)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// mutualTLS is the TLS configuration of every connection after the join:
// the saved CA only, and the current certificate, read at each handshake
// so a renewed one is used from the next connection on.
func (c *Client) mutualTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(c.creds.Load().ca)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.creds.Load().cert, nil
		},
	}
}
