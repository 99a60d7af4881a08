package controller_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller"
	"github.com/eastguard/eastguard/controller/clientcert/clientcerttest"
	"github.com/eastguard/eastguard/internal/pki"
	"go.uber.org/zap"
)

// certClient is a browser holding a client certificate (none when cert
// is nil) and whatever session cookie it was given.
type certClient struct {
	t      *testing.T
	base   string
	roots  *x509.CertPool
	cert   *tls.Certificate
	cookie *http.Cookie
}

// do sends a request on a new connection (so that each one presents the
// client's certificate afresh) and returns the status and body.
func (c *certClient) do(method, path string, header map[string]string) (int, string) {
	c.t.Helper()
	conf := &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12}
	if c.cert != nil {
		cert := *c.cert
		// Sent whatever CAs the server names: a hostile client does.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	tr := &http.Transport{TLSClientConfig: conf, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if c.cookie != nil {
		req.AddCookie(c.cookie)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, ck := range resp.Cookies() {
		if ck.Name == "eg_session" && ck.MaxAge > 0 {
			c.cookie = ck
		}
	}
	return resp.StatusCode, string(b)
}

// TestDashboardCertificateLogin: with --http-client-ca on a TLS listener,
// a certificate of the administrators' CA logs in to the dashboard; its
// session works only over connections presenting that certificate, and
// ends when the CRL revokes it. The agents' CA (the controller's own)
// cannot be configured, and an agent's certificate is refused.
func TestDashboardCertificateLogin(t *testing.T) {
	dir := t.TempDir()
	admins := clientcerttest.NewCA(t, "administrators")
	caFile, crlFile := filepath.Join(dir, "admins.pem"), filepath.Join(dir, "admins.crl")
	clientcerttest.WriteFile(t, caFile, admins.PEM())
	admins.WriteCRL(t, crlFile, admins)
	// The controller's own CA, given, so that the test can issue an
	// agent's certificate from it.
	ctl, ctlKey, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctlCAFile, ctlKeyFile := filepath.Join(dir, "ctl-ca.pem"), filepath.Join(dir, "ctl-ca.key")
	clientcerttest.WriteFile(t, ctlCAFile, ctl.CertPEM)
	clientcerttest.WriteFile(t, ctlKeyFile, ctlKey)
	// Refused as the administrators' CA: it issues every agent's
	// certificate.
	o := testOptions(filepath.Join(dir, "refused"))
	o.GRPCListen, o.HTTPListen = freeAddr(t), "127.0.0.1:0"
	o.CACert, o.CAKey, o.HTTPTLSFromCA, o.HTTPClientCA = ctlCAFile, ctlKeyFile, true, ctlCAFile
	if err := controller.Run(t.Context(), o, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "the controller's own CA") {
		t.Errorf("--http-client-ca naming the controller's CA: %v, want refused", err)
	}

	cfg, _, _ := startWith(t, filepath.Join(dir, "ctl"), func(o *controller.Options) {
		o.CACert, o.CAKey = ctlCAFile, ctlKeyFile
		o.HTTPTLSFromCA, o.HTTPClientCA, o.HTTPClientCRL = true, caFile, crlFile
	})
	ctlCA, err := pki.ParseCertificatePEM([]byte(cfg.CACert))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ctlCA)
	alice, aliceLeaf := admins.Issue(t, "alice", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	bob, _ := admins.Issue(t, "bob", time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	client := func(cert *tls.Certificate) *certClient {
		return &certClient{t: t, base: cfg.Server, roots: roots, cert: cert}
	}
	login := map[string]string{"X-Eastguard-Login": "certificate"}

	if code, body := client(nil).do("GET", "/api/v1/login/methods", nil); code != 200 || !strings.Contains(strings.Join(strings.Fields(body), ""), `"certificate":true`) {
		t.Errorf("login methods: %d %s, want certificate true", code, body)
	}
	if code, body := client(nil).do("POST", "/api/v1/login/certificate", login); code != 401 || !strings.Contains(body, "no verified client certificate") {
		t.Errorf("certificate login without a certificate: %d %s, want 401", code, body)
	}
	// Another site's page cannot add the header (no CORS preflight is ever
	// granted): without it, no session.
	if code, body := client(&alice).do("POST", "/api/v1/login/certificate", nil); code != 403 || !strings.Contains(body, "X-Eastguard-Login") {
		t.Errorf("certificate login without the header: %d %s, want 403", code, body)
	}

	a := client(&alice)
	code, body := a.do("POST", "/api/v1/login/certificate", login)
	var sess struct {
		Name, CSRFToken string
		Expires         time.Time
	}
	if code != 200 || json.Unmarshal([]byte(body), &sess) != nil || sess.Name != "alice" || sess.CSRFToken == "" || a.cookie == nil {
		t.Fatalf("certificate login: %d %s, want a session for alice", code, body)
	}
	if !a.cookie.Secure || !a.cookie.HttpOnly || a.cookie.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie %+v: want Secure, HttpOnly, SameSite=Strict", a.cookie)
	}
	if code, body := a.do("GET", "/api/v1/agents", nil); code != 200 {
		t.Errorf("alice's session with her certificate: %d %s", code, body)
	}
	// A state change still needs the CSRF token.
	if code, _ := a.do("POST", "/api/v1/alerts/1/ack", nil); code != 403 {
		t.Errorf("ack without the CSRF token: %d, want 403", code)
	}

	// The cookie alone, or with another certificate, is refused: a stolen
	// cookie is worthless without alice's key.
	for name, other := range map[string]*certClient{"no certificate": client(nil), "bob's certificate": client(&bob)} {
		other.cookie = a.cookie
		if code, body := other.do("GET", "/api/v1/agents", nil); code != 401 {
			t.Errorf("alice's cookie with %s: %d %s, want 401", name, code, body)
		}
	}
	if code, _ := a.do("GET", "/api/v1/agents", nil); code != 200 {
		t.Errorf("alice's session after others tried her cookie: %d, want it still working", code)
	}

	// An agent's certificate (issued by the controller's CA) is no
	// administrator: its handshake fails.
	agent := nodeCert(t, ctl, "node-a")
	if code, body := client(&agent).do("POST", "/api/v1/login/certificate", login); code != 0 {
		t.Errorf("an agent's certificate: %d %s, want the handshake refused", code, body)
	}

	// Revoked: alice's session ends at its next request.
	admins.WriteCRL(t, crlFile, admins, aliceLeaf)
	if code, body := a.do("GET", "/api/v1/agents", nil); code != 401 || !strings.Contains(body, "revoked") {
		t.Errorf("after revocation: %d %s, want 401 saying revoked", code, body)
	}
	if code, _ := a.do("POST", "/api/v1/login/certificate", login); code != 401 {
		t.Errorf("login with a revoked certificate: %d, want 401", code)
	}
}

// nodeCert is a node's client certificate from ca, as agents get theirs.
func nodeCert(t *testing.T, ca *pki.CA, node string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.SignNode(csr, node, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// TestClientCAFlags: --http-client-ca needs TLS, and the controller's own
// CA is refused at start.
func TestClientCAFlags(t *testing.T) {
	o := testOptions(t.TempDir())
	o.HTTPClientCA = "x.pem"
	if err := o.Check(); err == nil || !strings.Contains(err.Error(), "needs TLS") {
		t.Errorf("--http-client-ca without TLS: %v", err)
	}
}
