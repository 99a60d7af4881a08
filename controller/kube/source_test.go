package kube_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/controller/kube"
	"github.com/eastguard/eastguard/controller/kube/crdv1"
	"github.com/eastguard/eastguard/controller/kube/kubefake"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// events records the Events the source makes.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) Event(u *unstructured.Unstructured, typ, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, fmt.Sprintf("%s %s/%s %s: %s", typ, u.GetKind(), u.GetName(), reason, msg))
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

// countingRepo counts the syncs that changed something.
type countingRepo struct {
	repo    *policyrepo.Repo
	mu      sync.Mutex
	changes int
}

func (c *countingRepo) Sync(ctx context.Context, source string, kinds []string, objs []policyrepo.SourceObject) (*policyrepo.SyncResult, error) {
	res, err := c.repo.Sync(ctx, source, kinds, objs)
	if err == nil && res.Change != nil {
		c.mu.Lock()
		c.changes++
		c.mu.Unlock()
	}
	return res, err
}

func (c *countingRepo) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changes
}

type harness struct {
	t      *testing.T
	ctl    *controllertest.Controller
	client *kubefake.Client
	dyn    *dynamicfake.FakeDynamicClient
	repo   *countingRepo
	events *events
	src    *kube.Source
	logs   *observer.ObservedLogs
	reg    *prometheus.Registry
}

// start runs a source against fake clients; crds says whether the
// custom resource definitions are installed.
func start(t *testing.T, crds bool, objs ...runtime.Object) *harness {
	t.Helper()
	return startWith(t, crds, nil, objs...)
}

// startWith is start with setup run on the fake clients before the
// source starts (reactors that inject failures).
func startWith(t *testing.T, crds bool, setup func(*harness), objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{t: t, ctl: controllertest.New(t), client: kubefake.New(objs...), events: &events{}}
	listKinds := make(map[schema.GroupVersionResource]string)
	var resources []metav1.APIResource
	for kind, gvr := range crdv1.Resources {
		listKinds[gvr] = kind + "List"
		resources = append(resources, metav1.APIResource{Name: gvr.Resource, Kind: kind})
	}
	h.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds)
	if crds {
		h.client.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
			{GroupVersion: crdv1.SchemeGroupVersion.String(), APIResources: resources}}
	}
	h.repo = &countingRepo{repo: h.ctl.Srv.Policy}
	core, logs := observer.New(zap.InfoLevel)
	h.logs = logs
	h.reg = prometheus.NewRegistry()
	h.src = kube.New(kube.Config{Client: h.client, Dynamic: h.dyn, Repo: h.repo, Registry: h.reg, Log: zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())),
		Quiet: 50 * time.Millisecond, MaxDelay: 300 * time.Millisecond, Events: h.events})
	if setup != nil {
		setup(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("source: %v", err)
		}
	})
	until(t, 10*time.Second, "first sync", h.src.Synced)
	return h
}

func (h *harness) workload(name string) *apiclient.WorkloadView {
	for _, d := range h.ctl.Srv.Policy.Documents(policy.KindWorkload) {
		if d.Key.Name == name && len(d.Set.Workloads) == 1 {
			w := d.Set.Workloads[0]
			return &apiclient.WorkloadView{Name: w.Name, Node: w.Node, Interface: w.Interface, Addresses: w.Addresses,
				Labels: w.Labels, Source: d.Source}
		}
	}
	return nil
}

func (h *harness) waitWorkload(name string, ok func(*apiclient.WorkloadView) bool) *apiclient.WorkloadView {
	h.t.Helper()
	var w *apiclient.WorkloadView
	until(h.t, 10*time.Second, "workload "+name, func() bool {
		w = h.workload(name)
		return ok(w)
	})
	return w
}

func pod(ns, name, node string, labels map[string]string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "app"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func TestPodsBecomeWorkloads(t *testing.T) {
	h := start(t, false,
		namespace("shop", map[string]string{"team": "payments"}),
		pod("shop", "web-1", "node-a", map[string]string{"app": "web", "pod-template-hash": "5d8f"}, "10.250.1.5", "fd0e::1:5"),
		pod("shop", "db-1", "node-b", map[string]string{"app": "db"}, "10.250.2.7"),
	)
	w := h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	want := map[string]string{"app": "web", "k8s:namespace": "shop", "k8s:sa": "app", "k8s:ns.team": "payments"}
	if fmt.Sprint(w.Labels) != fmt.Sprint(want) {
		t.Errorf("labels %v, want %v (pod-template-hash left out)", w.Labels, want)
	}
	if w.Node != "node-a" || w.Interface != ruleset.InterfaceAuto || w.Source != store.SourceKubernetes {
		t.Errorf("workload %+v: want node-a, interface auto, source kubernetes", w)
	}
	if fmt.Sprint(w.Addresses) != "[10.250.1.5 fd0e::1:5]" {
		t.Errorf("addresses %v, want both families", w.Addresses)
	}
	if n := metric(t, h.reg, "eastguard_controller_kubernetes_objects", "Workload"); n != 2 {
		t.Errorf("objects gauge for Workload %v, want 2", n)
	}
	if n := metric(t, h.reg, "eastguard_controller_kubernetes_syncs_total", "changed"); n < 1 {
		t.Errorf("changed syncs %v, want at least 1", n)
	}
	if db := h.workload("shop/db-1"); db == nil || db.Node != "node-b" {
		t.Errorf("pod on node-b: %+v", db)
	}
	// Both nodes have rule sets with their own pod as an endpoint.
	for node, name := range map[string]string{"node-a": "shop/web-1", "node-b": "shop/db-1"} {
		v := h.ctl.Srv.Nodes.Latest(node)
		if v == nil || len(v.RuleSet.Endpoints) != 1 || v.RuleSet.Endpoints[0].Workload != name {
			t.Errorf("%s rule set: %+v", node, v)
		}
	}
}

func TestPodsThatAreNotWorkloads(t *testing.T) {
	hostNet := pod("kube-system", "proxy", "node-a", nil, "10.250.0.1")
	hostNet.Spec.HostNetwork = true
	done := pod("batch", "job-1", "node-a", nil, "10.250.1.9")
	done.Status.Phase = corev1.PodSucceeded
	h := start(t, false,
		hostNet, done,
		pod("shop", "pending", "", nil),                   // not scheduled
		pod("shop", "starting", "node-a", nil),            // no IP yet
		pod("shop", "web-1", "node-a", nil, "10.250.1.5"), // the one that is
	)
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	var names []string
	for _, d := range h.ctl.Srv.Policy.Documents(policy.KindWorkload) {
		names = append(names, d.Key.Name)
	}
	if fmt.Sprint(names) != "[shop/web-1]" {
		t.Errorf("workloads %v, want only shop/web-1 (host network, finished, unscheduled and address-less pods are none)", names)
	}
}

func TestPodChangesFollow(t *testing.T) {
	ctx := context.Background()
	h := start(t, false, namespace("shop", nil), pod("shop", "web-1", "node-a", map[string]string{"app": "web"}, "10.250.1.5"))
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	v1 := h.ctl.Srv.Nodes.Latest("node-a")
	pods := h.client.CoreV1().Pods("shop")

	// Relabel: the workload's labels follow.
	p, _ := pods.Get(ctx, "web-1", metav1.GetOptions{})
	p.Labels = map[string]string{"app": "api"}
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil && w.Labels["app"] == "api" })

	// New IP (a restarted sandbox).
	p, _ = pods.Get(ctx, "web-1", metav1.GetOptions{})
	p.Status.PodIP, p.Status.PodIPs = "10.250.1.6", []corev1.PodIP{{IP: "10.250.1.6"}}
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool {
		return w != nil && fmt.Sprint(w.Addresses) == "[10.250.1.6]"
	})

	// Namespace labels come in as k8s:ns.<key>.
	ns, _ := h.client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	ns.Labels = map[string]string{"env": "prod"}
	if _, err := h.client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil && w.Labels["k8s:ns.env"] == "prod" })

	// A pod on another node that no rule of node-a names leaves node-a's
	// rule set as it was (its ipcache holds what its policy names).
	before := h.ctl.Srv.Nodes.Latest("node-a")
	if _, err := pods.Create(ctx, pod("shop", "stranger", "node-b", map[string]string{"app": "stranger"}, "10.250.2.8"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/stranger", func(w *apiclient.WorkloadView) bool { return w != nil })
	if after := h.ctl.Srv.Nodes.Latest("node-a"); after.Num != before.Num {
		t.Errorf("a pod on node-b no rule names moved node-a from version %d to %d: %+v", before.Num, after.Num, ruleset.Diff(before.RuleSet, after.RuleSet))
	}
	// One that a rule of node-a names changes node-a's rule set only
	// where it must: its address in the ipcache.
	if _, err := h.ctl.Srv.Policy.Apply(ctx, []apiclient.File{{Name: "p.yaml", Content: `apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: other-to-api}
spec:
  rules:
    - {name: http, from: [{selector: {app: other}}], to: [{selector: {app: api}}], ports: [{port: 80}]}
`}}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, pod("shop", "other-1", "node-b", map[string]string{"app": "other"}, "10.250.2.7"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/other-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	until(t, 10*time.Second, "node-a's ipcache holds other-1", func() bool {
		return h.ctl.Srv.Nodes.Latest("node-a").RuleSet.Resolve(netip.MustParseAddr("10.250.2.7")) != ruleset.IdentityWorld
	})
	before = h.ctl.Srv.Nodes.Latest("node-a")
	if _, err := pods.Create(ctx, pod("shop", "other", "node-b", map[string]string{"app": "other"}, "10.250.2.9"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/other", func(w *apiclient.WorkloadView) bool { return w != nil })
	after := h.ctl.Srv.Nodes.Latest("node-a")
	d := ruleset.Diff(before.RuleSet, after.RuleSet)
	if len(d.PutEndpoints)+len(d.DeleteEndpoints)+len(d.AddEntries)+len(d.DeleteEntries) != 0 {
		t.Errorf("a pod on node-b changed node-a's endpoints or entries: %+v", d)
	}
	if len(d.PutIPCache) != 1 || d.PutIPCache[0].Prefix != netip.MustParsePrefix("10.250.2.9/32") {
		t.Errorf("node-a's ipcache change %+v, want the new pod's address alone", d.PutIPCache)
	}

	// Delete: the workload and its endpoint go.
	if err := pods.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w == nil })
	if v := h.ctl.Srv.Nodes.Latest("node-a"); v.Num <= v1.Num || len(v.RuleSet.Endpoints) != 0 {
		t.Errorf("node-a after the delete: version %d (was %d), endpoints %v", v.Num, v1.Num, v.RuleSet.Endpoints)
	}
}

func TestIdentitiesStable(t *testing.T) {
	ctx := context.Background()
	h := start(t, false, pod("shop", "web-1", "node-a", map[string]string{"app": "web"}, "10.250.1.5"))
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	idOf := func(addr string) ruleset.Identity {
		for _, e := range h.ctl.Srv.Nodes.Latest("node-a").RuleSet.IPCache {
			if e.Prefix == netip.MustParsePrefix(addr) {
				return e.Identity
			}
		}
		return 0
	}
	id := idOf("10.250.1.5/32")
	// A second replica with the same labels shares the identity, and the
	// first keeps it.
	if _, err := h.client.CoreV1().Pods("shop").Create(ctx, pod("shop", "web-2", "node-a", map[string]string{"app": "web"}, "10.250.1.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitWorkload("shop/web-2", func(w *apiclient.WorkloadView) bool { return w != nil })
	if id == 0 || idOf("10.250.1.5/32") != id || idOf("10.250.1.6/32") != id {
		t.Errorf("identities: web-1 %d then %d, web-2 %d", id, idOf("10.250.1.5/32"), idOf("10.250.1.6/32"))
	}
}

func TestBurstCoalesced(t *testing.T) {
	ctx := context.Background()
	h := start(t, false, namespace("load", nil))
	before := h.repo.count()
	const n = 1000
	pods := h.client.CoreV1().Pods("load")
	for i := range n {
		p := pod("load", fmt.Sprintf("p-%d", i), fmt.Sprintf("node-%d", i%4), map[string]string{"app": fmt.Sprint("a", i%10)},
			fmt.Sprintf("10.250.%d.%d", 10+i/250, 1+i%250))
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	until(t, 30*time.Second, "all pods mirrored", func() bool {
		return len(h.ctl.Srv.Policy.Documents(policy.KindWorkload)) == n
	})
	changes := h.repo.count() - before
	t.Logf("%d pod creations became %d policy changes", n, changes)
	// The loop above takes well under a second on a quiet machine; on a
	// slow one the MaxDelay (300 ms here) cuts it into a few more. A
	// change per pod, or anything near it, is the failure.
	if changes < 1 || changes > 50 {
		t.Errorf("%d pod creations became %d policy changes, want a handful", n, changes)
	}
	if v := h.ctl.Srv.Nodes.Latest("node-0"); v == nil || v.Num > uint64(changes)+1 {
		t.Errorf("node-0 version %v after %d changes", v, changes)
	}
}

// policyObject is a Policy custom resource.
func policyObject(name string, gen int64, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": crdv1.SchemeGroupVersion.String(), "kind": policy.KindPolicy,
		"metadata": map[string]any{"name": name},
		"spec":     spec,
	}}
	u.SetGeneration(gen)
	return u
}

func webToDB(port int64) map[string]any {
	return map[string]any{"rules": []any{map[string]any{
		"name":  "web-to-db",
		"from":  []any{map[string]any{"selector": map[string]any{"app": "web"}}},
		"to":    []any{map[string]any{"selector": map[string]any{"app": "db"}}},
		"ports": []any{map[string]any{"protocol": "TCP", "port": port}},
	}}}
}

func (h *harness) condition(name string) (status, reason, msg string, gen int64) {
	u, err := h.dyn.Resource(crdv1.PolicyResource).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return "", "", err.Error(), 0
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m := c.(map[string]any)
		if m["type"] == kube.ConditionValid {
			g, _ := m["observedGeneration"].(int64)
			return fmt.Sprint(m["status"]), fmt.Sprint(m["reason"]), fmt.Sprint(m["message"]), g
		}
	}
	return "", "", "", 0
}

func TestPolicyCustomResources(t *testing.T) {
	ctx := context.Background()
	h := start(t, true,
		pod("shop", "web-1", "node-a", map[string]string{"app": "web"}, "10.250.1.5"),
		pod("shop", "db-1", "node-b", map[string]string{"app": "db"}, "10.250.2.7"))
	policies := h.dyn.Resource(crdv1.PolicyResource)
	if _, err := policies.Create(ctx, policyObject("shop", 1, webToDB(5432)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "policy in force", func() bool {
		docs := h.ctl.Srv.Policy.Documents(policy.KindPolicy)
		return len(docs) == 1 && docs[0].Source == store.SourceKubernetes
	})
	until(t, 10*time.Second, "Valid=True", func() bool {
		st, reason, _, gen := h.condition("shop")
		return st == "True" && reason == kube.ReasonAccepted && gen == 1
	})
	good := h.ctl.Srv.Nodes.Latest("node-b")

	// An invalid update: a condition with the validator's words, an
	// Event, and the last valid version stays in force.
	bad := policyObject("shop", 2, webToDB(70000))
	if _, err := policies.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var msg string
	until(t, 10*time.Second, "Valid=False", func() bool {
		var st, reason string
		var gen int64
		st, reason, msg, gen = h.condition("shop")
		return st == "False" && reason == kube.ReasonInvalid && gen == 2
	})
	if !strings.Contains(msg, "rules[0].ports[0].port: 70000 is out of range") {
		t.Errorf("condition message %q, want the field path and the validator's message", msg)
	}
	if v := h.ctl.Srv.Nodes.Latest("node-b"); v.Hash != good.Hash {
		t.Errorf("an invalid Policy changed node-b's rule set")
	}
	until(t, 5*time.Second, "warning event", func() bool {
		return slices.ContainsFunc(h.events.all(), func(e string) bool {
			return strings.HasPrefix(e, "Warning Policy/shop Invalid: rules[0].ports[0].port")
		})
	})

	// egctl (the API) may neither change nor delete it.
	_, err := h.ctl.Srv.Policy.Apply(ctx, []apiclient.File{{Name: "p.yaml", Content: `apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec: {rules: []}
`}}, false)
	var owned *policyrepo.OwnedError
	if !errors.As(err, &owned) || !strings.Contains(err.Error(), "Policy/shop: comes from Kubernetes") {
		t.Errorf("apply over a custom resource: %v, want refused with where it comes from", err)
	}
	_, err = h.ctl.Srv.Policy.Delete(ctx, []store.ResourceKey{{Kind: policy.KindPolicy, Name: "shop"}}, false)
	if !errors.As(err, &owned) {
		t.Errorf("delete of a custom resource: %v, want refused", err)
	}
	_, err = h.ctl.Srv.Policy.Delete(ctx, []store.ResourceKey{{Kind: policy.KindWorkload, Name: "shop/web-1"}}, false)
	if !errors.As(err, &owned) || !strings.Contains(err.Error(), "Pod shop/web-1") {
		t.Errorf("delete of a pod's workload: %v, want refused naming the pod", err)
	}

	// Fixed: accepted again; deleted: gone from the policy.
	if _, err := policies.Update(ctx, policyObject("shop", 3, webToDB(5433)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "Valid=True again", func() bool {
		st, _, _, gen := h.condition("shop")
		return st == "True" && gen == 3
	})
	if err := policies.Delete(ctx, "shop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "policy gone", func() bool {
		return len(h.ctl.Srv.Policy.Documents(policy.KindPolicy)) == 0
	})
}

func TestCustomResourceCannotTakeOverAPIResource(t *testing.T) {
	ctx := context.Background()
	h := start(t, true)
	h.ctl.Apply(`apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec: {rules: []}
`)
	if _, err := h.dyn.Resource(crdv1.PolicyResource).Create(ctx, policyObject("shop", 1, webToDB(80)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "Valid=False", func() bool {
		st, reason, msg, _ := h.condition("shop")
		return st == "False" && reason == kube.ReasonInvalid && strings.Contains(msg, "applied through the API")
	})
	docs := h.ctl.Srv.Policy.Documents(policy.KindPolicy)
	if len(docs) != 1 || docs[0].Source != "" || len(docs[0].Set.Policies[0].Rules) != 0 {
		t.Errorf("the API's Policy changed: %+v", docs)
	}
}

func TestBrokenReferenceKeepsDeletedWebhook(t *testing.T) {
	ctx := context.Background()
	h := start(t, true)
	hooks := h.dyn.Resource(crdv1.WebhookResource)
	wh := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": crdv1.SchemeGroupVersion.String(), "kind": policy.KindWebhook,
		"metadata": map[string]any{"name": "sec", "generation": int64(1)},
		"spec":     map[string]any{"url": "https://hooks.example.com/x"},
	}}
	if _, err := hooks.Create(ctx, wh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "webhook in force", func() bool {
		return len(h.ctl.Srv.Policy.Documents(policy.KindWebhook)) == 1
	})
	// An API AlertRule refers to it; deleting the custom resource would
	// break that reference, so the Webhook stays until it is mended.
	h.ctl.Apply(`apiVersion: eastguard.dev/v1
kind: AlertRule
metadata: {name: ssh}
spec:
  severity: critical
  match: {protocol: TCP, ports: [22]}
  notify: [sec]
`)
	if err := hooks.Delete(ctx, "sec", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "warning logged", func() bool {
		return len(h.ctl.Logged("stay in force")) > 0
	})
	if len(h.ctl.Srv.Policy.Documents(policy.KindWebhook)) != 1 {
		t.Errorf("a Webhook that an AlertRule still names was deleted")
	}
}

// until is testutil.Eventually for a condition without an error to tell.
func until(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

// metric is the value of a gauge or counter child by its one label value.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == name && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}

// TestUnreadableCustomResourceDoesNotStallPods: the controller may not
// list one CRD's objects (RBAC forgot it); pods are mirrored all the same,
// and the readable custom resources are too.
func TestUnreadableCustomResourceDoesNotStallPods(t *testing.T) {
	ctx := context.Background()
	h := startWith(t, true, func(h *harness) {
		h.dyn.PrependReactor("list", "policies", func(clienttesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(crdv1.PolicyResource.GroupResource(), "", errors.New("RBAC: not allowed"))
		})
	}, pod("shop", "web-1", "node-a", map[string]string{"app": "web"}, "10.250.1.5"))
	h.waitWorkload("shop/web-1", func(w *apiclient.WorkloadView) bool { return w != nil })
	wh := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": crdv1.SchemeGroupVersion.String(), "kind": policy.KindWebhook,
		"metadata": map[string]any{"name": "sec"},
		"spec":     map[string]any{"url": "https://hooks.example.com/x"},
	}}
	if _, err := h.dyn.Resource(crdv1.WebhookResource).Create(ctx, wh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 20*time.Second, "the Webhook mirrored while Policies cannot be read", func() bool {
		return len(h.ctl.Srv.Policy.Documents(policy.KindWebhook)) == 1
	})
}
