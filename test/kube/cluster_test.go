// Package kube_test holds the tests that run against a real
// kube-apiserver (test/kube/cluster); this file checks the harness
// itself.
package kube_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/test/kube/cluster"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestMain(m *testing.M) { cluster.Main(m) }

// TestPrivilegedKubeAPIServerPodBoundToken: a token requested for a pod
// bound to a node authenticates, through TokenReview with the audience
// it was issued for, as the pod's ServiceAccount, and the review names
// the pod (and the node); a token for another audience does not.
func TestPrivilegedKubeAPIServerPodBoundToken(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.Namespace(t)
	c.CreateServiceAccount(t, ns, "agent")
	pod := c.CreatePod(t, ns, "web-1", "node-a", map[string]string{"app": "web"}, "agent", []string{"10.250.1.5", "fd0e::1:5"})
	if pod.Spec.NodeName != "node-a" || pod.Status.PodIP != "10.250.1.5" || len(pod.Status.PodIPs) != 2 || pod.Status.Phase != "Running" {
		t.Fatalf("pod as stored: node %q, phase %q, podIP %q, podIPs %v", pod.Spec.NodeName, pod.Status.Phase, pod.Status.PodIP, pod.Status.PodIPs)
	}

	token := c.TokenFor(t, ns, "agent", pod.Name, string(pod.UID), "eastguard")
	review := func(token string, audiences ...string) *authenticationv1.TokenReview {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences}}
		tr, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		return tr
	}

	tr := review(token, "eastguard")
	if !tr.Status.Authenticated {
		t.Fatalf("pod-bound token not authenticated: %q", tr.Status.Error)
	}
	if want := "system:serviceaccount:" + ns + ":agent"; tr.Status.User.Username != want {
		t.Errorf("username %q, want %q", tr.Status.User.Username, want)
	}
	if !slices.Equal(tr.Status.Audiences, []string{"eastguard"}) {
		t.Errorf("audiences %v, want [eastguard]", tr.Status.Audiences)
	}
	extra := tr.Status.User.Extra
	t.Logf("TokenReview user.extra: %v", extra)
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name": pod.Name,
		"authentication.kubernetes.io/pod-uid":  string(pod.UID),
		// Present since ServiceAccountTokenPodNodeInfo (GA): the node
		// the pod was bound to when the token was issued, even though no
		// Node object exists here.
		"authentication.kubernetes.io/node-name": "node-a",
	} {
		if got := extra[key]; !slices.Equal(got, authenticationv1.ExtraValue{want}) {
			t.Errorf("user.extra[%s] = %v, want [%s]", key, got, want)
		}
	}

	// The audience is checked: the same token for another audience, and
	// the apiserver's own, is refused.
	if tr := review(token, "someone-else"); tr.Status.Authenticated {
		t.Errorf("token for audience eastguard authenticated for audience someone-else")
	}
	if tr := review(token); tr.Status.Authenticated {
		t.Errorf("token for audience eastguard authenticated for the apiserver's audience %s", cluster.Issuer)
	}
}

// TestPrivilegedKubeAPIServerRBACEnforced: a ServiceAccount with no role
// binding may not list pods, and may once a RoleBinding (applied with
// Apply) grants it.
func TestPrivilegedKubeAPIServerRBACEnforced(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.Namespace(t)
	c.CreateServiceAccount(t, ns, "reader")
	pod := c.CreatePod(t, ns, "p", "node-a", nil, "reader", []string{"10.250.1.6"})
	token := c.TokenFor(t, ns, "reader", pod.Name, string(pod.UID), cluster.Issuer)
	client, err := kubernetes.NewForConfig(c.TokenConfig(token))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("listing pods without a role binding: %v, want forbidden", err)
	}
	c.Apply(t, []byte(`
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: `+ns+`}
rules: [{apiGroups: [""], resources: [pods], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pod-reader, namespace: `+ns+`}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: `+ns+`}]
`))
	// RBAC reads bindings from the apiserver's informer cache: poll.
	testutil.Eventually(t, 30*time.Second, "listing pods with a role binding", func() error {
		_, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err
	})
}

// TestPrivilegedKubeAPIServerApplyDryRun: a server-side dry-run apply,
// by the installed kubectl and by ApplyDryRun, validates an object and
// stores nothing; an invalid object is refused; Apply stores it.
func TestPrivilegedKubeAPIServerApplyDryRun(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.Namespace(t)
	cm := []byte(`apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: ` + ns + `
data:
  mode: enforce
`)
	file := t.TempDir() + "/cm.yaml"
	if err := os.WriteFile(file, cm, 0o600); err != nil {
		t.Fatal(err)
	}
	out := c.Kubectl(t, "apply", "--server-side", "--dry-run=server", "-f", file)
	if !strings.Contains(out, "configmap/settings serverside-applied (server dry run)") {
		t.Errorf("kubectl apply --server-side --dry-run=server said %q", out)
	}
	objs := c.ApplyDryRun(t, cm)
	if len(objs) != 1 || objs[0].GetName() != "settings" || objs[0].GetNamespace() != ns {
		t.Fatalf("ApplyDryRun returned %v", objs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "settings", metav1.GetOptions{}); err == nil {
		t.Fatal("a dry-run apply stored the ConfigMap")
	}

	bad := []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_A_Name, namespace: " + ns + "}\n")
	if _, err := c.ServerSideApply(bad, true); err == nil || !strings.Contains(err.Error(), "Invalid") {
		t.Errorf("dry-run apply of an invalid name: %v, want Invalid", err)
	}

	c.Apply(t, cm)
	got, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "settings", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Data["mode"] != "enforce" || !slices.ContainsFunc(got.ManagedFields, func(f metav1.ManagedFieldsEntry) bool { return f.Manager == cluster.FieldManager }) {
		t.Errorf("applied ConfigMap: data %v, managers %v", got.Data, got.ManagedFields)
	}
}
