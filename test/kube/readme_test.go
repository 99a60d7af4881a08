package kube_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/readme"
	"github.com/eastguard/eastguard/test/kube/cluster"
)

// readmeKubectl runs the README's one command that starts with prefix
// (with its here-document) in bash from the repository's top, kubectl
// talking to c as admin, and returns its output; it fails t if the
// README shows no such command, or several, or the command fails.
func readmeKubectl(t *testing.T, c *cluster.Cluster, prefix string) string {
	t.Helper()
	cmds := readme.WithPrefix(readme.Commands(t), prefix)
	if len(cmds) != 1 {
		t.Fatalf("README.md shows %d commands starting %q, want one: %v", len(cmds), prefix, cmds)
	}
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatalf("kubectl is not installed: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), "bash", "-e", "-o", "pipefail", "-c", cmds[0].Script())
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmds[0], err, out)
	}
	return string(out)
}

// TestPrivilegedKubeReadmeLabelScraper runs the README's line that lets
// a monitoring namespace's scrapers reach /metrics: the namespace gets
// the label the manifests' NetworkPolicy admits.
func TestPrivilegedKubeReadmeLabelScraper(t *testing.T) {
	testutil.RequirePrivileged(t)
	c := cluster.Shared(t)
	c.CreateNamespace(t, "monitoring")
	readmeKubectl(t, c, "kubectl label namespace monitoring ")
	ns, err := c.Client.CoreV1().Namespaces().Get(t.Context(), "monitoring", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Labels["eastguard.dev/metrics-scraper"] != "true" {
		t.Errorf("namespace monitoring labels %v, want eastguard.dev/metrics-scraper=true", ns.Labels)
	}
	if !strings.Contains(string(only(kustomize(t), "NetworkPolicy")), "eastguard.dev/metrics-scraper") {
		t.Error("the manifests' NetworkPolicy does not select eastguard.dev/metrics-scraper")
	}
}
