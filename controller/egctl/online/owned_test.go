package online

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// Resources that Kubernetes owns (a pod's workload, a Policy custom
// resource) are listed with their source, and egctl may not change them:
// it says where they come from and changes nothing.
func TestOwnedResources(t *testing.T) {
	conf, h := controllerWithStore(t)
	t.Setenv(envConfig, conf)
	objs := []policyrepo.SourceObject{
		{Key: store.ResourceKey{Kind: policy.KindWorkload, Name: "shop/web-1"}, File: "Pod shop/web-1", Doc: []byte(`apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: shop/web-1, labels: {app: web, "k8s:namespace": shop}}
spec: {node: node-a, interface: auto, addresses: [10.250.1.5]}
`)},
		{Key: store.ResourceKey{Kind: policy.KindPolicy, Name: "web"}, File: "Policy.eastguard.dev web", Doc: []byte(`apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: web}
spec: {rules: []}
`)},
	}
	if _, err := h.Srv.Policy.Sync(context.Background(), store.SourceKubernetes, []string{policy.KindWorkload, policy.KindPolicy}, objs); err != nil {
		t.Fatal(err)
	}

	code, out, _ := egctl(t, "get", "workloads")
	if code != exitOK || !strings.Contains(out, "SOURCE") || !strings.Contains(out, "shop/web-1") || !strings.Contains(out, "kubernetes") {
		t.Errorf("get workloads: exit %d\n%s", code, out)
	}

	p := filepath.Join(t.TempDir(), "web.yaml")
	writeFile(t, p, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: web}\nspec:\n  rules: [{name: all, from: [{world: true}], to: [{selector: {}}]}]\n")
	code, _, errs := egctl(t, "apply", "-f", p)
	if code != exitBadInput || !strings.Contains(errs, "Policy/web: comes from Kubernetes (Policy.eastguard.dev web, kubectl edit policy web)") {
		t.Errorf("apply over a custom resource: exit %d\n%s", code, errs)
	}
	code, _, errs = egctl(t, "delete", "workload", "shop/web-1")
	if code != exitBadInput || !strings.Contains(errs, "Workload/shop/web-1: comes from Kubernetes (Pod shop/web-1)") {
		t.Errorf("delete of a pod's workload: exit %d\n%s", code, errs)
	}
	docs := h.Srv.Policy.Documents(policy.KindPolicy)
	if len(docs) != 1 || len(docs[0].Set.Policies[0].Rules) != 0 || docs[0].Source != store.SourceKubernetes {
		t.Errorf("the custom resource's Policy changed: %+v", docs)
	}
}
