package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
)

// TestCheckCSRHugeKey: a CSR carrying an RSA key with a 64 KiB modulus
// (and a signature as long, so that verifying it would cost seconds) is
// refused at once, and says why.
func TestCheckCSRHugeKey(t *testing.T) {
	huge := testutil.HugeRSACSR(64 << 10)
	start := time.Now()
	_, err := CheckCSR(huge)
	took := time.Since(start)
	t.Logf("CSR of %d bytes refused in %v", len(huge), took)
	if err == nil || !strings.Contains(err.Error(), "at most 4096") {
		t.Errorf("huge CSR: %v, want a refusal for its size", err)
	}
	if took > 2*time.Second {
		t.Errorf("refusing the huge CSR took %v (target 100ms)", took)
	}
}

// TestCheckCSRKeyBeforeSignature: the key is checked before the signature,
// so an unacceptable key never costs a verification (this CSR's signature
// is not even valid).
func TestCheckCSRKeyBeforeSignature(t *testing.T) {
	_, err := CheckCSR(testutil.HugeRSACSR(512))
	if err == nil || !strings.Contains(err.Error(), "want ECDSA P-256 or Ed25519") || strings.Contains(err.Error(), "signature") {
		t.Errorf("RSA CSR with a bad signature: %v, want a refusal of the key type", err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n"}}, p224)
	if _, err := CheckCSR(csr); err == nil || !strings.Contains(err.Error(), "P-224") {
		t.Errorf("P-224 CSR: %v", err)
	}
	if _, err := CheckCSR(nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty CSR: %v", err)
	}
}

// FuzzCheckCSR: whatever the bytes, CheckCSR neither panics nor takes
// long, and what it accepts is a CSR for an acceptable key whose signature
// holds.
func FuzzCheckCSR(f *testing.F) {
	p256, _, _ := NewNodeKey()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	for _, key := range []any{p256, ed, rsaKey} {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node-a"}}, key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add(testutil.HugeRSACSR(512))
	f.Add(testutil.HugeRSACSR(MaxCSRSize))
	f.Add([]byte{})
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, der []byte) {
		start := time.Now()
		csr, err := CheckCSR(der)
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("CheckCSR of %d bytes took %v", len(der), took)
		}
		if err != nil {
			return
		}
		if len(der) > MaxCSRSize {
			t.Fatalf("CSR of %d bytes accepted", len(der))
		}
		if err := acceptableKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted a CSR whose key is not acceptable: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not hold: %v", err)
		}
	})
}
