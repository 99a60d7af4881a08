package importer

import (
	"errors"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
)

type importCase struct {
	name  string
	in    string
	named map[string][]int32
	want  string
	warns []string
}

const header = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"

// importCases have the shapes of the upstream NetworkPolicy examples
// (kubernetes.io/docs/concepts/services-networking/network-policies).
var importCases = []importCase{
	{
		name: "deny all ingress",
		want: `# from NetworkPolicy prod/default-deny-ingress
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: prod.default-deny-ingress
spec:
  rules: []
`,
		warns: []string{
			"prod/default-deny-ingress: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"prod/default-deny-ingress: spec.policyTypes: warning: no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows",
		},
		in: header + "metadata: {name: default-deny-ingress, namespace: prod}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
	},
	{
		name: "allow from pods with a label",
		want: `# from NetworkPolicy prod/db-from-web
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: prod.db-from-web
spec:
  rules:
    - name: ingress-0
      from:
        - selector:
            k8s:namespace: prod
            role: frontend
            tier: api
        - selector:
            k8s:namespace: prod
            role: frontend
            tier: web
      to:
        - selector:
            k8s:namespace: prod
            role: db
      ports:
        - protocol: TCP
          port: 6379
`,
		warns: []string{
			"prod/db-from-web: spec.ingress[0].from: warning: an Eastguard rule is an edge enforced at both ends: it also allows this traffic at the selected pods' own end, which NetworkPolicy leaves to the policies selecting them",
			"prod/db-from-web: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"prod/db-from-web: spec.policyTypes: warning: no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows",
		},
		in: header + `metadata: {name: db-from-web, namespace: prod}
spec:
  podSelector:
    matchLabels: {role: db}
  ingress:
    - from:
        - podSelector:
            matchLabels: {role: frontend}
            matchExpressions: [{key: tier, operator: In, values: [web, api]}]
      ports: [{protocol: TCP, port: 6379}]
`,
	},
	{
		name: "allow from a namespace",
		want: `# from NetworkPolicy prod/from-ops
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: prod.from-ops
spec:
  rules:
    - name: ingress-0
      from:
        - selector:
            k8s:ns.team: ops
        - selector:
            k8s:ns.team: dev
            role: client
      to:
        - selector:
            app: api
            k8s:namespace: prod
`,
		warns: []string{
			"prod/from-ops: spec.ingress[0].from: warning: an Eastguard rule is an edge enforced at both ends: it also allows this traffic at the selected pods' own end, which NetworkPolicy leaves to the policies selecting them",
			"prod/from-ops: spec.ingress[0].from[2].podSelector: warning: matchExpressions[0]: operator Exists cannot be expressed (Eastguard selectors are label equality): the peer is dropped (the output allows less than the NetworkPolicy)",
			"prod/from-ops: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"prod/from-ops: spec.policyTypes: warning: no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows",
		},
		in: header + `metadata: {name: from-ops, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: ops}}
        - namespaceSelector: {matchLabels: {team: dev}}
          podSelector: {matchLabels: {role: client}}
        - podSelector: {matchExpressions: [{key: role, operator: Exists}]}
`,
	},
	{
		name: "ipBlock with except",
		want: `# from NetworkPolicy prod/from-corp
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: prod.from-corp
spec:
  rules:
    - name: ingress-0
      from:
        - cidr: 172.17.0.0/16
          except: [172.17.1.0/24]
      to:
        - selector:
            app: api
            k8s:namespace: prod
`,
		warns: []string{
			"prod/from-corp: spec.ingress[0].from[0].ipBlock: warning: an Eastguard cidr also matches managed workloads whose addresses lie inside it; NetworkPolicy leaves pod addresses in an ipBlock to the implementation",
			"prod/from-corp: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"prod/from-corp: spec.policyTypes: warning: no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows",
		},
		in: header + `metadata: {name: from-corp, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
    - from:
        - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
`,
	},
	{
		name: "egress to a CIDR on a port range",
		want: `# from NetworkPolicy prod/to-backup
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: prod.to-backup
spec:
  rules:
    - name: egress-0
      from:
        - selector:
            app: db
            k8s:namespace: prod
      to:
        - cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
`,
		warns: []string{
			"prod/to-backup: spec.egress[0].ports[1].protocol: warning: SCTP: Eastguard has no SCTP; the port is skipped (SCTP stays denied)",
			"prod/to-backup: spec.egress[0].to[0].ipBlock: warning: an Eastguard cidr also matches managed workloads whose addresses lie inside it; NetworkPolicy leaves pod addresses in an ipBlock to the implementation",
			"prod/to-backup: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"prod/to-backup: spec.policyTypes: warning: no Ingress: NetworkPolicy leaves the selected pods' ingress open, Eastguard denies what no rule allows",
		},
		in: header + `metadata: {name: to-backup, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
      ports: [{protocol: TCP, port: 32000, endPort: 32768}, {protocol: SCTP, port: 5}]
`,
	},
	{
		name: "named port unresolved",
		want: `# from NetworkPolicy shop/web
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: shop.web
spec:
  rules:
    - name: ingress-1
      from:
        - selector: {}
        - world: true
        - host: true
      to:
        - selector:
            app: web
            k8s:namespace: shop
      ports:
        - protocol: TCP
          port: 9090
`,
		warns: []string{
			"shop/web: spec.ingress[0].from: warning: empty: every peer, which in Eastguard includes every managed workload; an Eastguard rule is an edge enforced at both ends, so this also allows the traffic at their own end, which NetworkPolicy leaves to the policies selecting them",
			"shop/web: spec.ingress[0].ports: warning: no port could be translated: the rule is dropped",
			"shop/web: spec.ingress[0].ports[0].port: warning: named port \"http\" cannot be resolved (give --named-ports or the Pods): the port is skipped",
			"shop/web: spec.ingress[1].from: warning: empty: every peer, which in Eastguard includes every managed workload; an Eastguard rule is an edge enforced at both ends, so this also allows the traffic at their own end, which NetworkPolicy leaves to the policies selecting them",
			"shop/web: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
			"shop/web: spec.policyTypes: warning: no Egress: NetworkPolicy leaves the selected pods' egress open, Eastguard denies what no rule allows",
		},
		in: header + `metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - ports: [{port: http}]
    - ports: [{port: metrics}]
`,
		named: map[string][]int32{"metrics": {9090}},
	},
	{
		name: "both types, empty to",
		want: `# from NetworkPolicy shop/both
apiVersion: eastguard.dev/v1
kind: Policy
metadata:
  name: shop.both
spec:
  rules:
    - name: ingress-0
      from:
        - selector:
            k8s:namespace: shop
      to:
        - selector:
            app: web
            k8s:namespace: shop
    - name: egress-0
      from:
        - selector:
            app: web
            k8s:namespace: shop
      to:
        - selector: {}
        - world: true
        - host: true
      ports:
        - protocol: UDP
          port: 53
`,
		warns: []string{
			"shop/both: spec.egress[0].to: warning: empty: every peer, which in Eastguard includes every managed workload; an Eastguard rule is an edge enforced at both ends, so this also allows the traffic at their own end, which NetworkPolicy leaves to the policies selecting them",
			"shop/both: spec.ingress[0].from: warning: an Eastguard rule is an edge enforced at both ends: it also allows this traffic at the selected pods' own end, which NetworkPolicy leaves to the policies selecting them",
			"shop/both: spec.podSelector: warning: Eastguard denies by default all traffic of every managed workload, NetworkPolicy only that of the pods a policy selects: applying the output denies the traffic of pods no policy selects, unless a rule allows it",
		},
		in: header + `metadata: {name: both, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {}}]
  egress:
    - ports: [{protocol: UDP, port: 53}]
`,
	},
}

func TestImportCases(t *testing.T) {
	for _, c := range importCases {
		t.Run(c.name, func(t *testing.T) {
			res, err := Import([]Input{{Name: "np.yaml", Data: []byte(c.in)}}, Options{NamedPorts: c.named})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(res.YAML); got != c.want {
				t.Errorf("output:\n%s\nwant:\n%s", got, c.want)
			}
			var got []string
			for _, w := range res.Warnings {
				got = append(got, w.String())
			}
			if strings.Join(got, "\n") != strings.Join(c.warns, "\n") {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.warns, "\n"))
			}
			// What is printed is what Eastguard reads.
			set, diags := policy.ParseAndValidate("out.yaml", res.YAML)
			if diags.HasErrors() || set == nil || len(set.Policies) != 1 {
				t.Fatalf("output does not parse as one policy: %v", diags)
			}
		})
	}
}

// A List, Pods that name ports, a kind that is not imported, and a target
// selector Eastguard cannot express: the policies come out in name order,
// the named port resolves from the Pods, the rest are warnings.
func TestImportListPodsAndSkips(t *testing.T) {
	in := `apiVersion: v1
kind: List
items:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: z-web, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress: [{ports: [{port: http}]}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: not-db, namespace: shop}
    spec:
      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec:
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
---
# a comment
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-first, namespace: shop}
spec: {podSelector: {}}
`
	res, err := Import([]Input{{Name: "in.yaml", Data: []byte(in)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.YAML)
	if res.Policies != 2 || strings.Index(out, "name: shop.a-first") > strings.Index(out, "name: shop.z-web") || !strings.Contains(out, "port: 8080") {
		t.Errorf("%d policies, output:\n%s", res.Policies, out)
	}
	var warns []string
	for _, w := range res.Warnings {
		warns = append(warns, w.String())
	}
	all := strings.Join(warns, "\n")
	for _, want := range []string{
		"in.yaml:23: warning: Deployment web (apps/v1) skipped",
		"shop/not-db: spec.podSelector: warning: matchExpressions[0]: operator NotIn cannot be expressed (Eastguard selectors are label equality): the policy is not imported",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings lack %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, `named port "http"`) {
		t.Errorf("the named port should resolve from the Pod:\n%s", all)
	}
	if _, diags := policy.ParseAndValidate("out.yaml", res.YAML); diags.HasErrors() {
		t.Errorf("output does not parse: %v", diags)
	}
}

// Bad input is an error that says where, wraps ErrInput, and yields no
// output.
func TestImportBadInput(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"unknown field", "---\n" + header + "metadata: {name: x, namespace: ns}\nspec: {podSelector: {}, ingres: []}\n", `in.yaml:2: NetworkPolicy x: `},
		{"no kind", "a: 1\n", "in.yaml:1: no kind"},
		{"bad cidr", header + "metadata: {name: x, namespace: ns}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}\n",
			"in.yaml:1: spec.ingress[0].from[0].ipBlock.except[0]: NetworkPolicy ns/x: 11.0.0.0/16 is not strictly inside 10.0.0.0/8"},
		{"bad protocol", header + "metadata: {name: x, namespace: ns}\nspec: {podSelector: {}, egress: [{ports: [{protocol: ICMP}]}], policyTypes: [Egress]}\n",
			`in.yaml:1: spec.egress[0].ports[0].protocol: NetworkPolicy ns/x: unknown protocol "ICMP"`},
		{"twice", header + "metadata: {name: x, namespace: ns}\nspec: {podSelector: {}}\n---\n" + header + "metadata: {name: x, namespace: ns}\nspec: {podSelector: {}}\n",
			"in.yaml:6: NetworkPolicy ns/x given twice (first at in.yaml:1)"},
		{"yaml", header + "metadata: [\n", "in.yaml:1: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := Import([]Input{{Name: "in.yaml", Data: []byte(c.in)}}, Options{})
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) || res != nil {
				t.Errorf("got %v (result %v), want an ErrInput holding %q", err, res, c.want)
			}
		})
	}
}

// Egress rules under policyTypes without Egress are not translated, and
// say so: NetworkPolicy ignores them too, but the author may not know.
func TestImportIgnoredDirection(t *testing.T) {
	in := header + "metadata: {name: x, namespace: ns}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{}]\n"
	res, err := Import([]Input{{Name: "in.yaml", Data: []byte(in)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, w := range res.Warnings {
		found = found || w.String() == "ns/x: spec.egress: warning: ignored: policyTypes has no Egress"
	}
	if !found || strings.Contains(string(res.YAML), "egress-0") {
		t.Errorf("warnings %v\noutput:\n%s", res.Warnings, res.YAML)
	}
}
