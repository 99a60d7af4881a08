// Package deploy checks the deployment files under deploy/: the
// Kubernetes manifests parse, and every flag they and the systemd units
// give the binaries is one the binaries accept; what `kubectl kustomize
// deploy/kubernetes` renders keeps its security invariants (Pod Security,
// least-privilege RBAC, the agent's minimal capabilities and projected
// token, probes); and that `make build` stamps the binaries with their
// version.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/testutil/topo"
)

var flagRE = regexp.MustCompile(`(?:^|\s|")--([a-z][a-z0-9-]*)`)

// acceptedFlags returns the flags a binary's --help lists.
func acceptedFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("%s --help lists %d flags:\n%s", bin, len(flags), out)
	}
	return flags
}

func checkFlags(t *testing.T, where, text string, accepted map[string]bool) {
	t.Helper()
	for _, m := range flagRE.FindAllStringSubmatch(text, -1) {
		if !accepted[m[1]] {
			t.Errorf("%s: --%s is not a flag of the binary", where, m[1])
		}
	}
}

func TestDeployFiles(t *testing.T) {
	dir := t.TempDir()
	agent := acceptedFlags(t, topo.BuildBinary(t, "agent/cmd/eastguard-agent", dir))
	controller := acceptedFlags(t, topo.BuildBinary(t, "controller/cmd/eastguard-controller", dir))
	root := filepath.Join("..", "..", "deploy")

	for unit, flags := range map[string]map[string]bool{"eastguard-agent.service": agent, "eastguard-controller.service": controller} {
		b, err := os.ReadFile(filepath.Join(root, "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		exec := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(string(b))
		if exec == nil {
			t.Fatalf("%s has no ExecStart", unit)
		}
		checkFlags(t, unit, exec[1], flags)
		// The env file example's arguments too.
		for _, m := range regexp.MustCompile(`(?m)^#\s+EASTGUARD_ARGS=(.*)$`).FindAllStringSubmatch(string(b), -1) {
			checkFlags(t, unit+" (example)", m[1], flags)
		}
	}

	// The controller's unit reads an environment file (webhook secrets in
	// EASTGUARD_... variables, extra flags) that may be absent, and gives
	// the controller a secrets directory for secretFrom.file.
	b, err := os.ReadFile(filepath.Join(root, "systemd", "eastguard-controller.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^EnvironmentFile=-/etc/eastguard/controller\.env$`),
		regexp.MustCompile(`(?m)^ExecStart=.* --secrets-dir \$\{CREDENTIALS_DIRECTORY\} .*\$EASTGUARD_ARGS$`),
		regexp.MustCompile(`(?m)^#\s*LoadCredential=[a-z-]+:/etc/eastguard/secrets/[a-z-]+$`),
		regexp.MustCompile(`(?m)^#\s+EASTGUARD_WEBHOOK_SECRET=`),
	} {
		if !want.MatchString(unit) {
			t.Errorf("eastguard-controller.service has no line matching %s", want)
		}
	}

	kinds := map[string]bool{}
	var netpols []netpol
	var controllerArgs []string
	var controllerProbe string
	files, _ := filepath.Glob(filepath.Join(root, "kubernetes", "*.yaml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var node yaml.Node
			err := dec.Decode(&node)
			if errors.Is(err, io.EOF) {
				break
			}
			var doc struct {
				Kind      string   `yaml:"kind"`
				Resources []string `yaml:"resources"`
				Spec      struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Image          string   `yaml:"image"`
								Args           []string `yaml:"args"`
								ReadinessProbe struct {
									HTTPGet struct {
										Scheme string `yaml:"scheme"`
									} `yaml:"httpGet"`
								} `yaml:"readinessProbe"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			}
			if err == nil {
				err = node.Decode(&doc)
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			kinds[doc.Kind] = true
			switch doc.Kind {
			case "Kustomization":
				// Every manifest is deployed.
				for _, other := range files {
					if name := filepath.Base(other); name != "kustomization.yaml" && !slices.Contains(doc.Resources, name) {
						t.Errorf("kustomization.yaml does not list %s", name)
					}
				}
			case "NetworkPolicy":
				var np netpol
				if err := node.Decode(&np); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				netpols = append(netpols, np)
			}
			for _, c := range doc.Spec.Template.Spec.Containers {
				flags := agent
				if strings.Contains(c.Image, "controller") {
					flags = controller
					controllerArgs = c.Args
					controllerProbe = c.ReadinessProbe.HTTPGet.Scheme
				}
				checkFlags(t, filepath.Base(f)+" "+c.Image, strings.Join(c.Args, " "), flags)
			}
		}
	}
	for _, k := range []string{"Kustomization", "Namespace", "StatefulSet", "Service", "DaemonSet", "NetworkPolicy"} {
		if !kinds[k] {
			t.Errorf("no %s in deploy/kubernetes", k)
		}
	}
	checkControllerTLS(t, controllerArgs, controllerProbe)
	checkControllerNetworkPolicy(t, netpols)
}

// checkControllerTLS: the manifest's controller serves its HTTP listener
// over TLS (the admin token must not cross the pod network in clear), and
// its readiness probe speaks HTTPS.
func checkControllerTLS(t *testing.T, args []string, probeScheme string) {
	t.Helper()
	has := func(flag string) bool {
		return slices.ContainsFunc(args, func(a string) bool { return a == flag || strings.HasPrefix(a, flag+"=") })
	}
	if !has("--http-tls-from-ca") && !(has("--http-tls-cert") && has("--http-tls-key")) {
		t.Errorf("the controller in deploy/kubernetes serves HTTP in clear: args %q lack --http-tls-from-ca (or --http-tls-cert and --http-tls-key)", args)
	}
	if probeScheme != "HTTPS" {
		t.Errorf("the controller's readiness probe scheme is %q, want HTTPS", probeScheme)
	}
}

// netpol is what the test reads of a NetworkPolicy.
type netpol struct {
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		PodSelector labelSelector `yaml:"podSelector"`
		PolicyTypes []string      `yaml:"policyTypes"`
		Ingress     []struct {
			Ports []struct {
				Port any `yaml:"port"`
			} `yaml:"ports"`
			From []struct {
				PodSelector       *labelSelector `yaml:"podSelector"`
				NamespaceSelector *labelSelector `yaml:"namespaceSelector"`
				IPBlock           any            `yaml:"ipBlock"`
			} `yaml:"from"`
		} `yaml:"ingress"`
	} `yaml:"spec"`
}

type labelSelector struct {
	MatchLabels      map[string]string `yaml:"matchLabels"`
	MatchExpressions []any             `yaml:"matchExpressions"`
}

func (s *labelSelector) empty() bool {
	return s == nil || len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

// checkControllerNetworkPolicy: a NetworkPolicy selects the controller's
// pods for ingress; the agents reach gRPC; HTTP (admin API, /metrics) is
// reachable only from this namespace or from labelled pods, never from
// every pod or address.
func checkControllerNetworkPolicy(t *testing.T, nps []netpol) {
	t.Helper()
	for _, np := range nps {
		if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != "eastguard-controller" {
			continue
		}
		if !slices.Contains(np.Spec.PolicyTypes, "Ingress") {
			t.Errorf("NetworkPolicy %s does not restrict ingress", np.Metadata.Name)
		}
		var grpc, http bool
		for i, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 {
				t.Errorf("NetworkPolicy %s: ingress rule %d allows every port", np.Metadata.Name, i)
			}
			for _, p := range rule.Ports {
				switch fmt.Sprint(p.Port) {
				case "grpc", "7443":
					grpc = true
				case "http", "8080":
					http = true
					if len(rule.From) == 0 {
						t.Errorf("NetworkPolicy %s: the HTTP port is open to every source", np.Metadata.Name)
					}
					for j, peer := range rule.From {
						switch {
						case peer.IPBlock != nil:
							t.Errorf("NetworkPolicy %s: HTTP peer %d is an address block", np.Metadata.Name, j)
						case peer.NamespaceSelector != nil && peer.PodSelector.empty():
							t.Errorf("NetworkPolicy %s: HTTP peer %d admits every pod of the namespaces it selects", np.Metadata.Name, j)
						case peer.NamespaceSelector == nil && peer.PodSelector == nil:
							t.Errorf("NetworkPolicy %s: HTTP peer %d selects nothing in particular", np.Metadata.Name, j)
						}
					}
				default:
					t.Errorf("NetworkPolicy %s: port %v is not one of the controller's", np.Metadata.Name, p.Port)
				}
			}
		}
		if !grpc || !http {
			t.Errorf("NetworkPolicy %s: agents reach gRPC: %v; someone reaches HTTP: %v", np.Metadata.Name, grpc, http)
		}
		return
	}
	t.Error("no NetworkPolicy in deploy/kubernetes selects the controller's pods (app.kubernetes.io/name: eastguard-controller)")
}

// TestMakeBuildStampsVersion: `make build` stamps every binary with `git
// describe --tags --always --dirty`, which --version prints.
func TestMakeBuildStampsVersion(t *testing.T) {
	for _, tool := range []string{"make", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	desc, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatalf("git describe: %v", err)
	}
	want := strings.TrimSpace(string(desc))
	bin := t.TempDir()
	if out, err := exec.Command("make", "-C", root, "build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	for _, name := range []string{"eastguard-agent", "eastguard-controller", "egctl"} {
		out, err := exec.Command(filepath.Join(bin, name), "--version").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != name+" "+want {
			t.Errorf("%s --version: %v, %q; want %q", name, err, out, name+" "+want)
		}
	}
}
