package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, _, err := NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func signedNode(t *testing.T, ca *CA, node string, ttl time.Duration, now time.Time) []*x509.Certificate {
	t.Helper()
	key, _, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(key, "whatever-the-csr-says")
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.SignNode(csr, node, ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{cert}
}

func TestSignAndVerifyNode(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	chain := signedNode(t, ca, "node-a", time.Hour, now)
	if cn := chain[0].Subject.CommonName; cn != "node-a" {
		t.Errorf("common name %q: the node, not what the CSR asked", cn)
	}
	node, err := ca.VerifyNode(chain, now)
	if err != nil || node != "node-a" {
		t.Fatalf("VerifyNode: %q, %v", node, err)
	}
	other := newTestCA(t)
	cases := []struct {
		name  string
		chain []*x509.Certificate
		at    time.Time
		want  error
	}{
		{"expired", chain, now.Add(2 * time.Hour), ErrCertExpired},
		{"not yet valid", chain, now.Add(-time.Hour), ErrCertNotYet},
		{"other CA", signedNode(t, other, "node-a", time.Hour, now), now, ErrUnknownCA},
		{"none", nil, now, ErrNoCertificate},
	}
	for _, c := range cases {
		if _, err := ca.VerifyNode(c.chain, c.at); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	// The serving certificate cannot be used as a node's.
	srv, err := ca.IssueServer([]string{"localhost"}, nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.VerifyNode([]*x509.Certificate{srv.Leaf}, now); !errors.Is(err, ErrUnknownCA) {
		t.Errorf("serving certificate as a client: %v", err)
	}
}

func TestSignNodeRefusals(t *testing.T) {
	ca := newTestCA(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n"}}, rsaKey)
	if _, _, err := ca.SignNode(rsaCSR, "node-a", time.Hour, time.Now()); err == nil || !strings.Contains(err.Error(), "want ECDSA P-256 or Ed25519") {
		t.Errorf("RSA CSR: %v", err)
	}
	if _, _, err := ca.SignNode([]byte("junk"), "node-a", time.Hour, time.Now()); err == nil {
		t.Error("junk CSR accepted")
	}
	key, _, _ := NewNodeKey()
	csr, _ := NewCSR(key, "n")
	for _, bad := range []string{"", "-a", "a/b", "a b", strings.Repeat("a", 254)} {
		if _, _, err := ca.SignNode(csr, bad, time.Hour, time.Now()); err == nil {
			t.Errorf("node name %q accepted", bad)
		}
	}
	for _, good := range []string{"node-a", "Node_1.example", "7"} {
		if err := ValidNodeName(good); err != nil {
			t.Errorf("node name %q refused: %v", good, err)
		}
	}
}

func TestLoadCA(t *testing.T) {
	ca, keyPEM, err := NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadCA(ca.CertPEM, keyPEM)
	if err != nil || again.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("reload: %v", err)
	}
	_, otherKey, _ := NewCA(time.Now())
	if _, err := LoadCA(ca.CertPEM, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("mismatched key: %v", err)
	}
	srv, _ := ca.IssueServer([]string{"x"}, nil, time.Hour, time.Now())
	leafKey, _ := EncodeKey(srv.PrivateKey.(*ecdsa.PrivateKey))
	if _, err := LoadCA(pemCert(srv.Leaf.Raw), leafKey); err == nil || !strings.Contains(err.Error(), "is not a CA") {
		t.Errorf("leaf as CA: %v", err)
	}
}

func TestTokens(t *testing.T) {
	tok, err := NewJoinToken(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseJoinToken(tok.String())
	if err != nil || back != tok {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{"", "eg1.a.b.c", "eg2." + tok.ID + "." + tok.Secret + "." + tok.CAFingerprint,
		strings.ToUpper(tok.String()), "eg1." + tok.ID + "." + tok.Secret} {
		if _, err := ParseJoinToken(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		} else if strings.Contains(err.Error(), tok.Secret) {
			t.Errorf("error echoes the secret: %v", err)
		}
	}
	if h := HashSecret(tok.Secret); !SecretMatches(h, tok.Secret) || SecretMatches(h, tok.Secret+"0") {
		t.Error("SecretMatches")
	}
	adm, _ := NewAdminToken()
	if back, err := ParseAdminToken(adm.String()); err != nil || back != adm {
		t.Errorf("admin token round trip: %v", err)
	}
}

func TestVerifyPinned(t *testing.T) {
	ca := newTestCA(t)
	srv, err := ca.IssueServer([]string{"ctl.example"}, []net.IP{net.ParseIP("10.250.240.1")}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{srv.Leaf, ca.Cert}
	state := func(name string) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: chain, ServerName: name}
	}
	if err := VerifyPinned(ca.Fingerprint())(state("10.250.240.1")); err != nil {
		t.Errorf("right pin: %v", err)
	}
	if err := VerifyPinned(ca.Fingerprint())(state("other.example")); err == nil {
		t.Error("wrong name accepted")
	}
	if err := VerifyPinned(newTestCA(t).Fingerprint())(state("ctl.example")); !errors.Is(err, ErrCAPin) {
		t.Errorf("wrong pin: %v", err)
	}
	// A chain that carries the pinned CA but a leaf signed by another.
	other := newTestCA(t)
	forged, _ := other.IssueServer([]string{"ctl.example"}, nil, time.Hour, time.Now())
	fs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{forged.Leaf, ca.Cert}, ServerName: "ctl.example"}
	if err := VerifyPinned(ca.Fingerprint())(fs); err == nil {
		t.Error("leaf from another CA accepted")
	}
}

func TestCheckIssued(t *testing.T) {
	ca := newTestCA(t)
	key, _, _ := NewNodeKey()
	csr, _ := NewCSR(key, "node-a")
	_, certPEM, err := ca.SignNode(csr, "node-a", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CheckIssued(certPEM, key, "node-a", ca.Cert, time.Now()); err != nil {
		t.Errorf("good certificate: %v", err)
	}
	if _, err := CheckIssued(certPEM, key, "node-b", ca.Cert, time.Now()); err == nil {
		t.Error("certificate for another node accepted")
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := CheckIssued(certPEM, otherKey, "node-a", ca.Cert, time.Now()); err == nil {
		t.Error("certificate for another key accepted")
	}
}
