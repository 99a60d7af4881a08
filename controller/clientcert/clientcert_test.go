package clientcert

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/clientcert/clientcerttest"
)

// serve starts an HTTPS server whose handler answers Identify's verdict
// on the request's connection: "ok <name>" or "err <error>".
func serve(t *testing.T, v *Verifier) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := v.Identify(r.TLS)
		if err != nil {
			_, _ = io.WriteString(w, "err "+err.Error())
			return
		}
		_, _ = io.WriteString(w, "ok "+id.Name+" "+id.ID())
	}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	v.Configure(srv.TLS)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// get calls srv presenting cert (none when nil) on a new connection and
// returns the handler's answer, or the transport's error.
func get(t *testing.T, srv *httptest.Server, cert *tls.Certificate) string {
	t.Helper()
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = nil
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(srv.URL)
	if err != nil {
		return "transport: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestIdentify(t *testing.T) {
	dir := t.TempDir()
	admins, other := clientcerttest.NewCA(t, "admins"), clientcerttest.NewCA(t, "someone else")
	caFile := filepath.Join(dir, "ca.pem")
	clientcerttest.WriteFile(t, caFile, admins.PEM())
	v, err := Load(Config{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, v)
	alice, _ := admins.Issue(t, "alice", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	noName, _ := admins.Issue(t, "", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	hostile, _ := admins.Issue(t, "bob\x1b[31m", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	serverOnly, _ := admins.Issue(t, "web", time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	foreign, _ := other.Issue(t, "mallory", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)

	// A client that sends the other CA's certificate anyway fails the
	// handshake.
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }
	if resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(srv.URL); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Errorf("a certificate of another CA sent anyway: answered %q, want a failed handshake", b)
	}
	tr.CloseIdleConnections()

	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want string
	}{
		{"trusted client certificate", &alice, "ok alice cert:"},
		{"no certificate", nil, "err " + ErrNoCertificate.Error()},
		{"no common name", &noName, "err client certificate refused: the certificate's subject common name"},
		{"control characters in the name", &hostile, "err client certificate refused: the certificate's subject common name"},
		// The handshake itself refuses a certificate not for client
		// authentication; one from another CA is not even sent (the
		// server names the CAs it accepts).
		{"server certificate", &serverOnly, "transport: "},
		{"other CA", &foreign, "err " + ErrNoCertificate.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(t, srv, tc.cert); !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want prefix %q", got, tc.want)
			}
		})
	}
}

// TestExpiredOnLiveConnection: a certificate valid at the handshake is
// refused once it expires, on the same connection.
func TestExpiredOnLiveConnection(t *testing.T) {
	dir := t.TempDir()
	ca := clientcerttest.NewCA(t, "admins")
	caFile := filepath.Join(dir, "ca.pem")
	clientcerttest.WriteFile(t, caFile, ca.PEM())
	now := time.Now()
	v, err := Load(Config{CAFile: caFile, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	_, leaf := ca.Issue(t, "alice", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	cs := &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, ca.Cert}}}
	if _, err := v.Identify(cs); err != nil {
		t.Fatalf("fresh certificate: %v", err)
	}
	now = leaf.NotAfter.Add(time.Second)
	if _, err := v.Identify(cs); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate: got %v, want a refusal saying expired", err)
	}
}

func TestRevocation(t *testing.T) {
	dir := t.TempDir()
	ca, other := clientcerttest.NewCA(t, "admins"), clientcerttest.NewCA(t, "someone else")
	caFile, crlFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.crl")
	clientcerttest.WriteFile(t, caFile, ca.PEM())
	ca.WriteCRL(t, crlFile, ca)
	v, err := Load(Config{CAFile: caFile, CRLFile: crlFile})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, v)
	alice, aliceLeaf := ca.Issue(t, "alice", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	carol, _ := ca.Issue(t, "carol", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	if got := get(t, srv, &alice); !strings.HasPrefix(got, "ok alice") {
		t.Fatalf("before revocation: %q", got)
	}

	// Revoked: refused at the next request; others unaffected.
	ca.WriteCRL(t, crlFile, ca, aliceLeaf)
	if got := get(t, srv, &alice); !strings.Contains(got, "revoked") {
		t.Errorf("after revocation: %q, want refused as revoked", got)
	}
	if got := get(t, srv, &carol); !strings.HasPrefix(got, "ok carol") {
		t.Errorf("another certificate after alice's revocation: %q", got)
	}

	// A CRL in the CA's name signed by someone else is not believed, and
	// the controller fails closed: nobody logs in with a certificate until
	// it is fixed.
	ca.WriteCRL(t, crlFile, other)
	if got := get(t, srv, &carol); !strings.Contains(got, "revocation cannot be checked") || !strings.Contains(got, "not signed by any CA") {
		t.Errorf("forged CRL: %q, want refused, saying the CRL is not signed by a trusted CA", got)
	}
	clientcerttest.WriteFile(t, crlFile, []byte("garbage"))
	if got := get(t, srv, &carol); !strings.Contains(got, "revocation cannot be checked") {
		t.Errorf("unreadable CRL: %q, want refused", got)
	}
	ca.WriteCRL(t, crlFile, ca, aliceLeaf)
	if got := get(t, srv, &carol); !strings.HasPrefix(got, "ok carol") {
		t.Errorf("good CRL again: %q", got)
	}
}

func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	own, admins := clientcerttest.NewCA(t, "eastguard controller CA"), clientcerttest.NewCA(t, "admins")
	_, leaf := admins.Issue(t, "alice", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	file := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		clientcerttest.WriteFile(t, p, b)
		return p
	}
	good := file("good.pem", admins.PEM())
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"own CA", Config{CAFile: file("own.pem", append(admins.PEM(), own.PEM()...)), OwnCA: own.Cert}, "certificate 2 is the controller's own CA"},
		{"missing file", Config{CAFile: filepath.Join(dir, "nope.pem")}, "--http-client-ca: open"},
		{"not PEM", Config{CAFile: file("junk.pem", []byte("junk"))}, "trailing data that is not PEM"},
		{"empty", Config{CAFile: file("empty.pem", nil)}, "no certificate in it"},
		{"a key", Config{CAFile: file("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}))}, `PEM block 1 is "PRIVATE KEY"`},
		{"leaf, not CA", Config{CAFile: file("leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}))}, "is not a CA certificate"},
		{"bad CRL", Config{CAFile: good, CRLFile: file("bad.crl", []byte("x"))}, "--http-client-crl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
