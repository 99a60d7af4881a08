package deploy

import (
	"bytes"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// rendered is `kubectl kustomize deploy/kubernetes`, decoded.
type rendered struct {
	kinds        map[string][]string // kind -> names
	namespaces   []corev1.Namespace
	sas          map[string]corev1.ServiceAccount
	clusterRoles []rbacv1.ClusterRole
	roles        []rbacv1.Role
	statefulSets []appsv1.StatefulSet
	daemonSets   []appsv1.DaemonSet
	pdbs         []policyv1.PodDisruptionBudget
}

// render runs kubectl kustomize deploy/kubernetes; without kubectl the
// test cannot check what is applied and says so.
func render(t *testing.T) rendered {
	t.Helper()
	r, _ := renderDir(t, "kubernetes")
	return r
}

// renderDir renders deploy/DIR, decoded and as text.
func renderDir(t *testing.T, dir string) (rendered, string) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed: cannot render deploy/" + dir + " with kubectl kustomize")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", "../../deploy/"+dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/%s: %v\n%s", dir, err, stderr.Bytes())
	}
	r := rendered{kinds: map[string][]string{}, sas: map[string]corev1.ServiceAccount{}}
	for _, doc := range policy.SplitDocuments(out) {
		var head struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := sigsyaml.Unmarshal(doc, &head); err != nil {
			t.Fatal(err)
		}
		if head.Kind == "" {
			continue
		}
		r.kinds[head.Kind] = append(r.kinds[head.Kind], head.Metadata.Name)
		switch head.Kind {
		case "Namespace":
			r.namespaces = append(r.namespaces, decodeStrict[corev1.Namespace](t, head.Kind, doc))
		case "ServiceAccount":
			r.sas[head.Metadata.Name] = decodeStrict[corev1.ServiceAccount](t, head.Kind, doc)
		case "ClusterRole":
			r.clusterRoles = append(r.clusterRoles, decodeStrict[rbacv1.ClusterRole](t, head.Kind, doc))
		case "Role":
			r.roles = append(r.roles, decodeStrict[rbacv1.Role](t, head.Kind, doc))
		case "StatefulSet":
			r.statefulSets = append(r.statefulSets, decodeStrict[appsv1.StatefulSet](t, head.Kind, doc))
		case "DaemonSet":
			r.daemonSets = append(r.daemonSets, decodeStrict[appsv1.DaemonSet](t, head.Kind, doc))
		case "PodDisruptionBudget":
			r.pdbs = append(r.pdbs, decodeStrict[policyv1.PodDisruptionBudget](t, head.Kind, doc))
		case "Deployment":
			t.Errorf("Deployment %s: the controller is a StatefulSet (its volume holds the SQLite store)", head.Metadata.Name)
		}
	}
	return r, string(out)
}

// decodeStrict decodes one rendered object; a field the API type does not
// have (a typo the apiserver would drop or refuse) fails.
func decodeStrict[T any](t *testing.T, kind string, doc []byte) T {
	t.Helper()
	var o T
	if err := sigsyaml.UnmarshalStrict(doc, &o); err != nil {
		t.Fatalf("%s: %v\n%s", kind, err, doc)
	}
	return o
}

// TestKustomizeRenders checks the invariants of what `kubectl apply -k
// deploy/kubernetes` creates: the objects, Pod Security, the controller's
// restricted profile, the agent's minimal privileges and token, least
// privilege RBAC, probes everywhere.
func TestKustomizeRenders(t *testing.T) {
	r := render(t)
	for kind, want := range map[string][]string{
		"Namespace":                {"eastguard"},
		"CustomResourceDefinition": {"alertrules.eastguard.dev", "policies.eastguard.dev", "webhooks.eastguard.dev"},
		"ServiceAccount":           {"eastguard-agent", "eastguard-controller"},
		"ClusterRole":              {"eastguard-controller"},
		"ClusterRoleBinding":       {"eastguard-controller"},
		"Role":                     {"eastguard-controller"},
		"RoleBinding":              {"eastguard-controller"},
		"StatefulSet":              {"eastguard-controller"},
		"DaemonSet":                {"eastguard-agent"},
		"Service":                  {"eastguard-controller"},
		"NetworkPolicy":            {"eastguard-controller"},
	} {
		got := slices.Sorted(slices.Values(r.kinds[kind]))
		if !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", kind, got, want)
		}
	}
	if len(r.namespaces) == 1 {
		labels := r.namespaces[0].Labels
		for k, v := range map[string]string{
			"pod-security.kubernetes.io/enforce": "privileged",
			"pod-security.kubernetes.io/warn":    "restricted",
			"pod-security.kubernetes.io/audit":   "restricted",
		} {
			if labels[k] != v {
				t.Errorf("namespace label %s=%q, want %q", k, labels[k], v)
			}
		}
	}
	for _, ss := range r.statefulSets {
		checkController(t, ss)
	}
	for _, ds := range r.daemonSets {
		checkAgent(t, ds, r.sas)
	}
	for _, cr := range r.clusterRoles {
		for _, p := range ruleProblems("ClusterRole "+cr.Name, cr.Rules, controllerClusterRules) {
			t.Error(p)
		}
	}
	for _, role := range r.roles {
		for _, p := range ruleProblems("Role "+role.Name, role.Rules, controllerRoleRules) {
			t.Error(p)
		}
	}
}

// checkController: every container of the controller satisfies the
// restricted Pod Security profile, and runs in Kubernetes mode.
func checkController(t *testing.T, ss appsv1.StatefulSet) {
	t.Helper()
	pod := ss.Spec.Template.Spec
	if pod.ServiceAccountName != "eastguard-controller" {
		t.Errorf("controller serviceAccountName %q", pod.ServiceAccountName)
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Error("controller shares a host namespace")
	}
	psc := pod.SecurityContext
	for _, c := range append(pod.InitContainers, pod.Containers...) {
		where := "controller container " + c.Name
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", where)
			continue
		}
		nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot || sc.RunAsNonRoot == nil && psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
		if !nonRoot {
			t.Errorf("%s: runAsNonRoot is not true", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation is not false", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem is not true", where)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", where)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: capabilities %+v, want drop [ALL] and nothing added", where, sc.Capabilities)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil && psc != nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", where, seccomp)
		}
		checkProbes(t, where, c)
		for _, want := range []string{"--kubernetes", "--kubernetes-agent-service-account=eastguard/eastguard-agent"} {
			if !slices.Contains(c.Args, want) {
				t.Errorf("%s: args %q lack %s", where, c.Args, want)
			}
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
		}) {
			t.Errorf("%s: no POD_NAMESPACE from the downward API", where)
		}
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("controller volume %s is a hostPath", v.Name)
		}
	}
	checkScrape(t, "controller", ss.Spec.Template.Annotations, "true")
}

// agentCapabilities is all the agent gets: load and attach eBPF, read its
// ring buffer. No SYS_ADMIN (the host mounts bpffs).
var agentCapabilities = []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON"}

// checkAgent: no API token, the projected join token, no Secret, the
// minimal capabilities, probes, a rolling update one node at a time.
func checkAgent(t *testing.T, ds appsv1.DaemonSet, sas map[string]corev1.ServiceAccount) {
	t.Helper()
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != "eastguard-agent" {
		t.Errorf("agent serviceAccountName %q", pod.ServiceAccountName)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the agent pod automounts an API token")
	}
	if sa := sas["eastguard-agent"]; sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the eastguard-agent ServiceAccount automounts its token")
	}
	projected := ""
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			t.Errorf("agent volume %s is a Secret: agents join with their ServiceAccount token", v.Name)
		}
		if v.HostPath != nil && !slices.Contains([]string{"/sys/fs/bpf", "/var/lib/eastguard"}, v.HostPath.Path) {
			t.Errorf("agent volume %s mounts host path %s", v.Name, v.HostPath.Path)
		}
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.Secret != nil {
				t.Errorf("agent volume %s projects a Secret", v.Name)
			}
			if tok := s.ServiceAccountToken; tok != nil {
				if tok.Audience != "eastguard" || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds > 3600 || tok.Path != "token" {
					t.Errorf("agent token %+v, want audience eastguard, at most 3600 s, path token", tok)
				}
				projected = v.Name
			}
		}
	}
	if projected == "" {
		t.Error("the agent has no projected ServiceAccount token")
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("agent update strategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	for _, c := range append(pod.InitContainers, pod.Containers...) {
		where := "agent container " + c.Name
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Errorf("%s: no capabilities", where)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation is not false", where)
		}
		if add := slices.Sorted(slices.Values(sc.Capabilities.Add)); !slices.Equal(add, agentCapabilities) || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: capabilities add %q drop %q, want add %q drop [ALL]", where, add, sc.Capabilities.Drop, agentCapabilities)
		}
		for _, m := range c.VolumeMounts {
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
				t.Errorf("%s: mount %s is Bidirectional, which only privileged containers may have", where, m.Name)
			}
			if m.Name == projected && m.MountPath != "/var/run/secrets/eastguard" {
				t.Errorf("%s: the token is mounted at %s", where, m.MountPath)
			}
		}
		for _, want := range []string{"--join-service-account-token-file=/var/run/secrets/eastguard/token", "--ca-file=/etc/eastguard/ca/ca.crt",
			"--guard-interfaces=cali*,lxc*,veth*,cni*"} { // a new pod is denied until its workload arrives
			if !slices.Contains(c.Args, want) {
				t.Errorf("%s: args %q lack %s", where, c.Args, want)
			}
		}
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--join-token-file") }) {
			t.Errorf("%s: still reads a join-token file", where)
		}
		checkProbes(t, where, c)
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Host != "127.0.0.1" {
				t.Errorf("%s: probe host %q: the agent listens on 127.0.0.1", where, p.HTTPGet.Host)
			}
		}
	}
	checkScrape(t, "agent", ds.Spec.Template.Annotations, "")
}

// checkProbes: readiness and liveness, on /healthz.
func checkProbes(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: no %s probe on /healthz: %+v", where, name, p)
		}
	}
}

// checkScrape: the pod template names its metrics port for Prometheus
// (scrape "" means either value: the agent's listener is loopback).
func checkScrape(t *testing.T, where string, ann map[string]string, scrape string) {
	t.Helper()
	for _, k := range []string{"prometheus.io/scrape", "prometheus.io/port", "prometheus.io/scheme"} {
		if ann[k] == "" {
			t.Errorf("%s pod template lacks annotation %s", where, k)
		}
	}
	if scrape != "" && ann["prometheus.io/scrape"] != scrape {
		t.Errorf("%s: prometheus.io/scrape %q, want %q", where, ann["prometheus.io/scrape"], scrape)
	}
}

// allowedRule is one (group, resource) and the verbs it may have, with
// the resource names it is limited to (nil: not limited).
type allowedRule struct {
	group, resource string
	verbs           []string
	names           []string
}

var controllerClusterRules = []allowedRule{
	{group: "", resource: "pods", verbs: []string{"get", "list", "watch"}},
	{group: "", resource: "namespaces", verbs: []string{"get", "list", "watch"}},
	{group: "eastguard.dev", resource: "policies", verbs: []string{"get", "list", "watch"}},
	{group: "eastguard.dev", resource: "alertrules", verbs: []string{"get", "list", "watch"}},
	{group: "eastguard.dev", resource: "webhooks", verbs: []string{"get", "list", "watch"}},
	{group: "eastguard.dev", resource: "policies/status", verbs: []string{"update", "patch"}},
	{group: "eastguard.dev", resource: "alertrules/status", verbs: []string{"update", "patch"}},
	{group: "eastguard.dev", resource: "webhooks/status", verbs: []string{"update", "patch"}},
	{group: "authentication.k8s.io", resource: "tokenreviews", verbs: []string{"create"}},
	{group: "", resource: "events", verbs: []string{"create", "patch"}},
	{group: "events.k8s.io", resource: "events", verbs: []string{"create", "patch"}},
}

var controllerRoleRules = []allowedRule{
	{group: "", resource: "configmaps", verbs: []string{"create"}},
	{group: "", resource: "configmaps", verbs: []string{"get", "update"}, names: []string{"eastguard-ca"}},
}

// ruleProblems: no wildcard, no non-resource URL, and every verb on every
// resource is in allowed (with the same resource-name limit).
func ruleProblems(where string, rules []rbacv1.PolicyRule, allowed []allowedRule) []string {
	var out []string
	errorf := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if len(rules) == 0 {
		errorf("%s has no rules", where)
	}
	for i, r := range rules {
		if len(r.NonResourceURLs) > 0 {
			errorf("%s rule %d: nonResourceURLs %q", where, i, r.NonResourceURLs)
		}
		for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames} {
			if slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, "*") }) {
				errorf("%s rule %d: a wildcard in %q", where, i, list)
			}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if !slices.ContainsFunc(allowed, func(a allowedRule) bool {
						return a.group == g && a.resource == res && slices.Contains(a.verbs, v) && slices.Equal(a.names, r.ResourceNames)
					}) {
						errorf("%s rule %d: %s on %q in group %q (names %q) is not needed", where, i, v, res, g, r.ResourceNames)
					}
				}
			}
		}
	}
	return out
}

// TestRBACCheckRefusesMore guards ruleProblems: a wildcard or an extra verb
// must be reported.
func TestRBACCheckRefusesMore(t *testing.T) {
	for _, bad := range []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"*"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}},
		{APIGroups: []string{"eastguard.dev"}, Resources: []string{"policies"}, Verbs: []string{"update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"update"}},
	} {
		if len(ruleProblems("bad", []rbacv1.PolicyRule{bad}, append(controllerClusterRules, controllerRoleRules...))) == 0 {
			t.Errorf("checkRules accepts %+v", bad)
		}
	}
}

// TestKustomizeFailoverOverlay: deploy/kubernetes-ha (the controller on
// PostgreSQL, highly available) renders everything of deploy/kubernetes
// with the same invariants, plus two controller replicas, a
// PodDisruptionBudget keeping one, and the store's URL, password and
// CA-sealing key from the Secret eastguard-store (never in the manifest),
// with flags the controller accepts.
func TestKustomizeFailoverOverlay(t *testing.T) {
	r, text := renderDir(t, "kubernetes-ha")
	base := render(t)
	for kind, names := range base.kinds {
		if !slices.Equal(slices.Sorted(slices.Values(r.kinds[kind])), slices.Sorted(slices.Values(names))) {
			t.Errorf("%s: %q in the overlay, %q in deploy/kubernetes", kind, r.kinds[kind], names)
		}
	}
	if got := r.kinds["PodDisruptionBudget"]; !slices.Equal(got, []string{"eastguard-controller"}) {
		t.Errorf("PodDisruptionBudgets %q", got)
	}
	if len(r.statefulSets) != 1 || len(r.pdbs) != 1 {
		t.Fatalf("%d StatefulSets, %d PodDisruptionBudgets", len(r.statefulSets), len(r.pdbs))
	}
	ss, pdb := r.statefulSets[0], r.pdbs[0]
	checkController(t, ss)
	for _, ds := range r.daemonSets {
		checkAgent(t, ds, r.sas)
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 2 {
		t.Errorf("controller replicas %v, want 2", ss.Spec.Replicas)
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.Selector == nil ||
		!maps.Equal(pdb.Spec.Selector.MatchLabels, ss.Spec.Template.Labels) {
		t.Errorf("PodDisruptionBudget %+v: want minAvailable 1 over the controller's pods %v", pdb.Spec, ss.Spec.Template.Labels)
	}
	c := ss.Spec.Template.Spec.Containers[0]
	for _, want := range []string{"--store=$(EASTGUARD_STORE)", "--store-password-file=/etc/eastguard/store/password",
		"--ca-key-encryption-key-file=/etc/eastguard/store/ca-key.key", "--advertise-grpc=[$(POD_IP)]:7443"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("controller args %q lack %s", c.Args, want)
		}
	}
	fromSecret := slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "EASTGUARD_STORE" && e.Value == "" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
			e.ValueFrom.SecretKeyRef.Name == "eastguard-store" && e.ValueFrom.SecretKeyRef.Key == "url"
	})
	podIP := slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	})
	if !fromSecret || !podIP {
		t.Errorf("controller env %+v: want EASTGUARD_STORE from the Secret eastguard-store and POD_IP from the pod", c.Env)
	}
	var secretVol bool
	for _, v := range ss.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "eastguard-store" && v.Secret.DefaultMode != nil && *v.Secret.DefaultMode == 0o400 {
			secretVol = slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
				return m.Name == v.Name && m.MountPath == "/etc/eastguard/store" && m.ReadOnly
			})
		}
	}
	if !secretVol {
		t.Error("the Secret eastguard-store is not mounted read-only, mode 0400, at /etc/eastguard/store")
	}
	if strings.Contains(text, "postgres://") {
		t.Error("a database URL is in the manifests: it belongs in the Secret")
	}
	controller := acceptedFlags(t, topo.BuildBinary(t, "controller/cmd/eastguard-controller", t.TempDir()))
	checkFlags(t, "deploy/kubernetes-ha controller args", strings.Join(c.Args, " "), controller)
}
