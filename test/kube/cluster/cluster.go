// Package cluster starts a real kube-apiserver, backed by etcd, on
// loopback for the tests under test/kube: the binaries are built from the
// versions test/kube/go.mod pins (k8s.io/kubernetes, etcd) and cached
// outside the repository (see CacheRoot). No kubelet, scheduler or
// controller-manager runs: tests create the objects those would
// (ServiceAccounts, pods bound to a node with their status set), and RBAC
// is enforced as in a real cluster.
//
// A test starts its own cluster with Start, or shares one per package:
//
//	func TestMain(m *testing.M) { cluster.Main(m) }
//
//	func TestX(t *testing.T) { c := cluster.Shared(t); ... }
//
// Each test on a shared cluster works in its own namespace (Namespace).
// Starting takes about 5 s once the binaries are cached; the first build
// takes tens of minutes, longer than go test's default -timeout: `make
// kube-apiserver` (or `go run ./cmd/kube-binaries` in test/kube) builds
// them first, as `make test` does.
//
// It is test code: nothing outside test/kube imports it, and it imports
// only internal/testutil of the main module.
package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// AdminUser is the admin client certificate's user (group
	// system:masters), the identity of Config, Client and Kubectl.
	AdminUser = "eastguard-test-admin"
	// Issuer is --service-account-issuer, also the default audience of
	// ServiceAccount tokens (--api-audiences is not set).
	Issuer = "https://kubernetes.default.svc"
	// ServiceCIDR is --service-cluster-ip-range; serviceIP is its first
	// address, the kubernetes Service's.
	ServiceCIDR = "10.96.0.0/24"
	serviceIP   = "10.96.0.1"

	// readyTimeout bounds etcd and kube-apiserver becoming ready.
	readyTimeout = 3 * time.Minute
)

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Kubeconfig is an admin kubeconfig file (client certificate,
	// system:masters).
	Kubeconfig string
	// URL is the apiserver's https://127.0.0.1:PORT.
	URL string
	// Config is the admin rest.Config; copy it (rest.CopyConfig) before
	// changing it.
	Config *rest.Config
	// Client and Dynamic are admin clients.
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// CAPEM is the CA that signed the apiserver's serving certificate.
	CAPEM []byte

	dir    string
	procs  []*process // started order; stopped in reverse
	mapper *mapper
}

// process is a child the cluster started; it is stopped by its PID.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when Wait returns
	err  error         // Wait's result, set before done is closed
}

// Start starts a cluster for t alone and stops it, removing every file,
// in t.Cleanup (also when t fails; the tail of etcd's and the apiserver's
// logs is then printed). It skips t unless running as root, and fails t
// if the cluster does not come up.
func Start(t testing.TB) *Cluster {
	t.Helper()
	requireRoot(t)
	c, err := start(t.Logf)
	if c != nil {
		t.Cleanup(func() {
			if t.Failed() {
				c.logTails(t.Logf)
			}
			c.stop()
		})
	}
	if err != nil {
		t.Fatalf("starting kube-apiserver: %v", err)
	}
	return c
}

// shared is the package's one cluster, started by the first Shared call
// and stopped by Main after every test has run.
var shared struct {
	once sync.Once
	c    *Cluster
	err  error
	used bool // Shared was called: Main must stop the cluster
}

// mainRunning is set by Main before m.Run, so every test sees it.
var mainRunning bool

// Shared returns the package's shared cluster, starting it on the first
// call. The package's TestMain must be cluster.Main(m), which stops it
// after the tests: Shared fails t otherwise (a cluster nobody stops
// outlives the test binary). A test that fails prints the logs' tails.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	requireRoot(t)
	if !mainRunning {
		t.Fatal("cluster.Shared needs the package's TestMain to be cluster.Main(m), which stops the shared cluster")
	}
	shared.once.Do(func() {
		shared.c, shared.err = start(t.Logf)
		shared.used = true
	})
	if shared.err != nil {
		if shared.c != nil {
			shared.c.logTails(t.Logf)
		}
		t.Fatalf("starting the shared kube-apiserver: %v", shared.err)
	}
	c := shared.c
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails(t.Logf)
		}
	})
	return c
}

// Main runs the package's tests (m.Run), stops the shared cluster if one
// was started, and exits with the tests' code. Use it as the package's
// TestMain: func TestMain(m *testing.M) { cluster.Main(m) }.
func Main(m *testing.M) {
	mainRunning = true
	code := m.Run()
	if shared.used && shared.c != nil {
		shared.c.stop()
	}
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("skipped: needs root to run kube-apiserver and etcd as a test cluster (euid %d). Run the tests as root (CI does).", os.Geteuid())
	}
}

// start builds (or finds) the binaries and starts etcd and the
// apiserver. On error the returned cluster, if not nil, holds what was
// started: the caller stops it.
func start(logf func(string, ...any)) (*Cluster, error) {
	begin := time.Now()
	bins, err := EnsureBinaries(logf)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "eastguard-kube-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	pki, err := newPKI(dir)
	if err != nil {
		return c, err
	}
	c.CAPEM = pki.caPEM

	etcdURL, err := c.startEtcd(bins.Etcd)
	if err != nil {
		return c, err
	}
	if err := c.startAPIServer(bins.APIServer, etcdURL, pki); err != nil {
		return c, err
	}
	if err := c.clients(pki); err != nil {
		return c, err
	}
	logf("kube-apiserver %s ready at %s in %v (binaries in %s; logs in %s)", bins.Version, c.URL, time.Since(begin).Round(time.Millisecond), bins.Dir, dir)
	return c, nil
}

// startEtcd starts a one-member etcd on two free loopback ports and
// waits until it serves. A port taken between choosing and binding makes
// etcd exit: it is retried with new ports.
func (c *Cluster) startEtcd(bin string) (string, error) {
	var lastErr error
	for attempt := range 3 {
		ports, err := freePorts(2)
		if err != nil {
			return "", err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		p, err := c.spawn("etcd", bin, nil,
			"--name=eastguard-test",
			"--data-dir="+filepath.Join(c.dir, "etcd-data-"+strconv.Itoa(attempt)),
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=eastguard-test="+peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync", // a throwaway store: durability buys nothing
			"--log-level=warn",
		)
		if err != nil {
			return "", err
		}
		err = waitReady(p, readyTimeout, func() error {
			resp, err := http.Get(client + "/health")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("etcd /health: %s", resp.Status)
			}
			return nil
		})
		if err == nil {
			return client, nil
		}
		lastErr = err
		p.stop()
	}
	return "", lastErr
}

// startAPIServer starts kube-apiserver on a free loopback port and waits
// for /readyz.
func (c *Cluster) startAPIServer(bin, etcdURL string, pki *pkiFiles) error {
	cert, err := tls.X509KeyPair(pki.adminCert, pki.adminKey)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.caPEM)
	httpc := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}
	defer httpc.CloseIdleConnections()

	var lastErr error
	for range 3 {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		url := "https://127.0.0.1:" + strconv.Itoa(ports[0])
		p, err := c.spawn("kube-apiserver", bin, nil,
			"--etcd-servers="+etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			// The endpoint reconciler publishes the advertise address as
			// the kubernetes Service's endpoint and refuses a loopback
			// one; nothing here reaches the apiserver through the Service.
			"--endpoint-reconciler-type=none",
			"--secure-port="+strconv.Itoa(ports[0]),
			"--cert-dir="+filepath.Join(c.dir, "apiserver-certs"),
			"--tls-cert-file="+pki.servingCrt,
			"--tls-private-key-file="+pki.servingKey,
			"--client-ca-file="+pki.caCert,
			"--service-account-key-file="+pki.saPub,
			"--service-account-signing-key-file="+pki.saKey,
			"--service-account-issuer="+Issuer,
			"--service-cluster-ip-range="+ServiceCIDR,
			// RBAC is enforced: tests check the manifests' roles with it.
			"--authorization-mode=Node,RBAC",
			// NodeRestriction on top of the defaults (NamespaceLifecycle,
			// ServiceAccount, ...), as a real cluster has. ServiceAccount
			// admission needs a pod's ServiceAccount to exist: without a
			// controller-manager, tests create them.
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--profiling=false",
			"--v=1",
		)
		if err != nil {
			return err
		}
		err = waitReady(p, readyTimeout, func() error {
			resp, err := httpc.Get(url + "/readyz")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var body bytes.Buffer
			body.ReadFrom(resp.Body) //nolint:errcheck // only for the error message
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("/readyz: %s: %s", resp.Status, lastLines(body.String(), 5))
			}
			return nil
		})
		if err == nil {
			c.URL = url
			return nil
		}
		lastErr = err
		if !p.exited() {
			return err // up but never ready: not a port clash
		}
		p.stop()
	}
	return lastErr
}

// clients writes the admin kubeconfig and builds the clients from it, so
// the file is known to work.
func (c *Cluster) clients(pki *pkiFiles) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["eastguard-test"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: pki.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: pki.adminCert, ClientKeyData: pki.adminKey}
	cfg.Contexts["admin"] = &clientcmdapi.Context{Cluster: "eastguard-test", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "admin"
	c.Kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.Kubeconfig); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("reading back the kubeconfig: %w", err)
	}
	// Tests create objects in bursts; the client-side default (5 QPS)
	// would only slow them down.
	rc.QPS, rc.Burst = 200, 400
	c.Config = rc
	if c.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	if c.Dynamic, err = dynamic.NewForConfig(rc); err != nil {
		return err
	}
	c.mapper = newMapper(c.Client)
	return nil
}

// TokenConfig is a rest.Config that authenticates with a bearer token
// (a ServiceAccount token from TokenFor) instead of the admin
// certificate: requests are then authorised by RBAC as that account.
func (c *Cluster) TokenConfig(token string) *rest.Config {
	rc := rest.AnonymousClientConfig(c.Config)
	rc.BearerToken = token
	return rc
}

// spawn starts a child whose output goes to dir/name.log. The child is
// killed if the test binary dies (Pdeathsig), so a crashed or timed-out
// test leaves no apiserver behind.
func (c *Cluster) spawn(name, bin string, env []string, args ...string) (*process, error) {
	logPath := filepath.Join(c.dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process by its PID: SIGTERM, then SIGKILL after 15 s.
func (p *process) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have just exited
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill() //nolint:errcheck // as above
		<-p.done
	}
}

// stop stops every process, the apiserver before etcd, and removes the
// cluster's directory.
func (c *Cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	os.RemoveAll(c.dir)
}

// waitReady polls ready until it succeeds, p exits, or timeout passes.
func waitReady(p *process, timeout time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready (its log's tail follows)", p.name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", p.name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logTails logs the end of every child's log.
func (c *Cluster) logTails(logf func(string, ...any)) {
	for _, p := range c.procs {
		logf("--- %s log (%s), last lines:\n%s", p.name, p.log, tail(p.log, 40))
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return lastLines(string(data), n)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePorts returns n loopback TCP ports that were free a moment ago.
// All are held open until every one is chosen, so they differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("choosing a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ctx is the context of one helper call: generous, so a slow machine
// fails on a real hang only.
func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}
