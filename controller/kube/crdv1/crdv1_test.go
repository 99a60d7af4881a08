package crdv1_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/eastguard/eastguard/controller/kube/crdv1"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/testutil"
)

// allFields uses every field of the three kinds in every shape the parser
// accepts, so that the round trip below proves the types cover the format
// and not just the fixtures' subset of it.
const allFields = `
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: every-field, labels: {team: net, tier: "1.10"}}
spec:
  mode: monitor
  rules:
    - name: r1
      action: deny
      from: [{selector: {}}, {selector: {a: b, c: "d/e:f"}}, {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}]
      to: [{world: true}, {host: true}, {cidr: "fd00::/8"}]
      ports:
        - {protocol: tcp, port: 80, endPort: 90}
        - {protocol: UDP}
        - {protocol: ICMP, type: 0}
        - {protocol: icmpv6, type: 128, code: 0}
        - {protocol: ANY, port: 53}
        - {protocol: ANY}
        - {port: 22}
    - name: r2
      from: [{selector: {role: x}}]
      to: [{selector: {role: dst}}]
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: no-rules}
spec: {}
---
apiVersion: eastguard.dev/v1
kind: AlertRule
metadata: {name: every-field}
spec:
  severity: warning
  match:
    protocol: udp
    ports: [53, 5353]
    verdicts: [allowed, denied, would-deny]
    from: [{cidr: 192.0.2.0/24}]
    to: [{selector: {}}, {host: true}]
  except:
    - from: [{world: true}]
    - to: [{selector: {role: dns}}]
    - {from: [{host: true}], to: [{cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}]}
  window: 1h30m
  notify: [a, b]
---
apiVersion: eastguard.dev/v1
kind: AlertRule
metadata: {name: minimal}
spec: {severity: info}
---
apiVersion: eastguard.dev/v1
kind: Webhook
metadata: {name: file-secret}
spec: {url: "http://hooks.example.com:8080/x?y=z", format: alertmanager, secretFrom: {file: sub/secret}}
---
apiVersion: eastguard.dev/v1
kind: Webhook
metadata: {name: slack}
spec: {url: "https://hooks.slack.example/T0/B0", format: slack}
`

// document is one resource of the corpus.
type document struct {
	name string // where it comes from, for failures
	kind string
	data []byte
}

// corpus returns every Policy, AlertRule and Webhook document of the test
// fixtures, of docs/POLICY.md's examples and of allFields.
func corpus(t *testing.T) []document {
	t.Helper()
	inputs := map[string][]byte{
		"allFields":   []byte(allFields),
		"lab":         []byte(testutil.LabPolicy(testutil.Lab{Full: true, Workloads: []testutil.LabWorkload{{Name: "web", Node: "n1", Interface: "veth0", Addrs: []string{"10.250.0.2"}}}}) + testutil.LabExtraPolicy()),
		"ssh-alert":   []byte(testutil.SSHAlertPolicy("https://hooks.example.com/eastguard", "")),
		"ssh-alert-f": []byte(testutil.SSHAlertPolicy("https://hooks.example.com/eastguard", "webhook/secret")),
	}
	for _, p := range append(testutil.PolicyFixtures(t), testutil.PolicyFixture("lab-extra.yaml")) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		inputs[filepath.Base(p)] = data
	}
	md, err := os.ReadFile("../../../docs/POLICY.md")
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(md, -1) {
		inputs["POLICY.md block "+string(rune('a'+i))] = m[1]
	}

	var docs []document
	kinds := map[string]int{}
	for name, data := range inputs {
		for i, d := range policy.SplitDocuments(data) {
			var head struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(d, &head); err != nil || head.APIVersion != policy.APIVersion {
				continue // a fragment of a block, not a document
			}
			if _, ok := crdv1.Resources[head.Kind]; !ok {
				continue // Workloads have no custom resource
			}
			kinds[head.Kind]++
			docs = append(docs, document{name: name + " #" + string(rune('0'+i)), kind: head.Kind, data: d})
		}
	}
	for _, k := range []string{crdv1.KindPolicy, crdv1.KindAlertRule, crdv1.KindWebhook} {
		if kinds[k] < 3 {
			t.Fatalf("corpus has %d %s documents; the fixtures moved?", kinds[k], k)
		}
	}
	return docs
}

// typed returns a new typed object of the kind.
func typed(t *testing.T, kind string) any {
	switch kind {
	case crdv1.KindPolicy:
		return &crdv1.Policy{}
	case crdv1.KindAlertRule:
		return &crdv1.AlertRule{}
	case crdv1.KindWebhook:
		return &crdv1.Webhook{}
	}
	t.Fatalf("kind %q", kind)
	return nil
}

// parse parses one document and fails on any error.
func parse(t *testing.T, name string, data []byte) *policy.Set {
	t.Helper()
	set, diags := policy.Parse(name, data)
	if diags.HasErrors() {
		t.Fatalf("%s: %v\n%s", name, diags, data)
	}
	stripPositions(reflect.ValueOf(set).Elem())
	return set
}

var posType = reflect.TypeFor[policy.Pos]()

// stripPositions zeroes every policy.Pos: a rendered document has other
// lines and columns than the original, and nothing else may differ.
func stripPositions(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == posType {
			v.SetZero()
			return
		}
		for i := range v.NumField() {
			stripPositions(v.Field(i))
		}
	case reflect.Slice:
		for i := range v.Len() {
			stripPositions(v.Index(i))
		}
	case reflect.Pointer:
		if !v.IsNil() {
			stripPositions(v.Elem())
		}
	}
}

// toUnstructured is what the dynamic client hands the controller: the
// object as JSON, decoded into maps.
func toUnstructured(t *testing.T, obj any) *unstructured.Unstructured {
	t.Helper()
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestTypesCoverTheFormat decodes every document strictly (an unknown
// field fails) into the Go types, renders it back with Document and
// requires the parser to read the same resource as from the original.
func TestTypesCoverTheFormat(t *testing.T) {
	for _, doc := range corpus(t) {
		t.Run(doc.name, func(t *testing.T) {
			want := parse(t, doc.name, doc.data)
			obj := typed(t, doc.kind)
			if err := yaml.UnmarshalStrict(doc.data, obj); err != nil {
				t.Fatalf("strict decode into %T: %v\n%s", obj, err, doc.data)
			}
			rendered, err := crdv1.Document(doc.kind, toUnstructured(t, obj))
			if err != nil {
				t.Fatal(err)
			}
			got := parse(t, "rendered", rendered)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("the rendered document parses differently\noriginal:\n%s\nrendered:\n%s\ngot  %+v\nwant %+v", doc.data, rendered, got, want)
			}
		})
	}
}

// TestStrictDecodeRefusesUnknownFields guards the test above: a strict
// decode that let unknown fields through would prove nothing.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	doc := "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {rules: [{name: r, from: [{selector: {}}], to: [{selector: {}}], prots: []}]}\n"
	if err := yaml.UnmarshalStrict([]byte(doc), &crdv1.Policy{}); err == nil || !strings.Contains(err.Error(), "prots") {
		t.Fatalf("strict decode of an unknown field: %v", err)
	}
}

// TestDocumentKeepsTheSpecAsIs: what the schema let through, right or
// wrong, reaches the parser unchanged, and its diagnostics carry the paths
// egctl validate prints.
func TestDocumentKeepsTheSpecAsIs(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "eastguard.dev/v1",
		"kind":       "Policy",
		"metadata":   map[string]any{"name": "p", "labels": map[string]any{"team": "net"}, "uid": "x", "resourceVersion": "7"},
		"spec": map[string]any{"rules": []any{map[string]any{
			"name": "r", "from": []any{map[string]any{"selector": map[string]any{}}},
			"to":    []any{map[string]any{"cidr": "10.0.0.1/8"}},
			"ports": []any{map[string]any{"port": int64(70000)}, map[string]any{"prots": int64(1)}},
		}}},
		"status": map[string]any{"observedGeneration": int64(3)},
	}}
	data, err := crdv1.Document(crdv1.KindPolicy, u)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "uid") || strings.Contains(string(data), "status") {
		t.Errorf("document carries more than name, labels and spec:\n%s", data)
	}
	_, diags := policy.Parse("p", data)
	var paths []string
	for _, d := range diags {
		paths = append(paths, d.Path)
	}
	slices.Sort(paths) // the rendered document's keys are sorted, not the user's order
	want := []string{"rules[0].ports[0].port", "rules[0].ports[1].prots", "rules[0].to[0].cidr"}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("diagnostic paths %q, want %q\n%v", paths, want, diags)
	}
}

func TestDocumentRefusesOtherKinds(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "w"}, "spec": map[string]any{}}}
	for _, kind := range []string{"Workload", "policy", ""} {
		if _, err := crdv1.Document(kind, u); !errors.Is(err, crdv1.ErrKind) {
			t.Errorf("Document(%q): %v, want ErrKind", kind, err)
		}
	}
	u.SetKind("AlertRule")
	if _, err := crdv1.Document(crdv1.KindPolicy, u); !errors.Is(err, crdv1.ErrKind) {
		t.Errorf("an AlertRule rendered as a Policy: %v", err)
	}
	u.SetKind("Policy")
	u.SetAPIVersion("example.com/v1")
	if _, err := crdv1.Document(crdv1.KindPolicy, u); !errors.Is(err, crdv1.ErrKind) {
		t.Errorf("another group's Policy rendered: %v", err)
	}
}

// crdSchema is one generated CRD's schema as the apiserver checks objects
// against it: OpenAPI, list types and CEL rules.
type crdSchema struct {
	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

// loadCRDs reads the generated CRDs, requires the apiserver's own CRD
// validation to accept each (structural, CEL rules compile within their
// cost budget) and returns their schemas by kind.
func loadCRDs(t *testing.T) map[string]crdSchema {
	t.Helper()
	out := map[string]crdSchema{}
	for kind, file := range map[string]string{
		crdv1.KindPolicy:    "eastguard.dev_policies.yaml",
		crdv1.KindAlertRule: "eastguard.dev_alertrules.yaml",
		crdv1.KindWebhook:   "eastguard.dev_webhooks.yaml",
	} {
		data, err := os.ReadFile(filepath.Join("../../../deploy/kubernetes/crds", file))
		if err != nil {
			t.Fatal(err)
		}
		var v1 apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &v1); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(&v1)
		var crd apiextensions.CustomResourceDefinition
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1, &crd, nil); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &crd); len(errs) > 0 {
			t.Fatalf("%s: the apiserver would refuse the CRD: %v", file, errs.ToAggregate())
		}
		// The internal form holds a schema and subresources that every
		// version shares at the top.
		if crd.Spec.Names.Kind != kind || crd.Spec.Scope != apiextensions.ClusterScoped || len(crd.Spec.Versions) != 1 ||
			crd.Spec.Versions[0].Name != "v1" || crd.Spec.Subresources == nil || crd.Spec.Subresources.Status == nil || crd.Spec.Validation == nil {
			t.Fatalf("%s: want kind %s, cluster-scoped, version v1 with a schema and a status subresource: %+v", file, kind, crd.Spec)
		}
		props := crd.Spec.Validation.OpenAPIV3Schema
		sv, _, err := validation.NewSchemaValidator(props)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		st, err := structuralschema.NewStructural(props)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out[kind] = crdSchema{schema: sv, structural: st, cel: cel.NewValidator(st, true, celconfig.PerCallLimit)}
	}
	return out
}

// validate returns every error the apiserver's schema checks find in obj.
func (s crdSchema) validate(obj map[string]any) field.ErrorList {
	errs := validation.ValidateCustomResource(nil, obj, s.schema)
	errs = append(errs, listtype.ValidateListSetsAndMaps(nil, s.structural, obj)...)
	celErrs, _ := s.cel.Validate(context.Background(), nil, s.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

// yamlObject decodes a document as kubectl sends it.
func yamlObject(t *testing.T, data []byte) map[string]any {
	t.Helper()
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return u.Object
}

// TestSchemasAcceptTheCorpus: every document egctl validate accepts, the
// apiserver accepts as a custom resource.
func TestSchemasAcceptTheCorpus(t *testing.T) {
	schemas := loadCRDs(t)
	for _, doc := range corpus(t) {
		if errs := schemas[doc.kind].validate(yamlObject(t, doc.data)); len(errs) > 0 {
			t.Errorf("%s: the schema refuses a valid %s: %v\n%s", doc.name, doc.kind, errs.ToAggregate(), doc.data)
		}
	}
}

// TestSchemasRefuseInvalidSpecs: mistakes the schema can express are
// refused by it, and every one of them is an error of the parser too (the
// schema is never the stricter of the two on these).
func TestSchemasRefuseInvalidSpecs(t *testing.T) {
	schemas := loadCRDs(t)
	const peers = "from: [{selector: {}}], to: [{selector: {}}]"
	for _, tc := range []struct {
		name, kind, spec, want string
	}{
		{name: "port 0", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{port: 0}]}]}", want: "ports[0].port"},
		{name: "port 65536", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{port: 65536}]}]}", want: "ports[0].port"},
		{name: "port as text", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{port: '443'}]}]}", want: "ports[0].port"},
		{name: "endPort too big", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{port: 1, endPort: 70000}]}]}", want: "endPort"},
		{name: "ICMP type 256", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{protocol: ICMP, type: 256}]}]}", want: "type"},
		{name: "unknown mode", kind: crdv1.KindPolicy, spec: "{mode: strict}", want: "spec.mode"},
		{name: "unknown action", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, action: reject, " + peers + "}]}", want: "action"},
		{name: "unknown protocol", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: [{protocol: SCTP}]}]}", want: "protocol"},
		{name: "empty ports", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + ", ports: []}]}", want: "ports"},
		{name: "empty from", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [], to: [{selector: {}}]}]}", want: "from"},
		{name: "missing to", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{selector: {}}]}]}", want: "to"},
		{name: "missing rule name", kind: crdv1.KindPolicy, spec: "{rules: [{" + peers + "}]}", want: "name"},
		{name: "rule name with a slash", kind: crdv1.KindPolicy, spec: "{rules: [{name: a/b, " + peers + "}]}", want: "name"},
		{name: "duplicate rule name", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, " + peers + "}, {name: r, " + peers + "}]}", want: "Duplicate"},
		{name: "two kinds of peer", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{selector: {}, cidr: 10.0.0.0/8}], to: [{selector: {}}]}]}", want: "exactly one"},
		{name: "no kind of peer", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{except: [10.0.0.0/8]}], to: [{selector: {}}]}]}", want: "exactly one"},
		{name: "except without cidr", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{world: true, except: [10.0.0.0/8]}], to: [{selector: {}}]}]}", want: "except is only valid with cidr"},
		{name: "world false", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{world: false}], to: [{selector: {}}]}]}", want: "world"},
		{name: "label value with a comma", kind: crdv1.KindPolicy, spec: "{rules: [{name: r, from: [{selector: {a: 'b,c'}}], to: [{selector: {}}]}]}", want: "selector.a"},
		{name: "unknown severity", kind: crdv1.KindAlertRule, spec: "{severity: urgent}", want: "severity"},
		{name: "missing severity", kind: crdv1.KindAlertRule, spec: "{window: 5m}", want: "severity"},
		{name: "alert port 0", kind: crdv1.KindAlertRule, spec: "{severity: info, match: {ports: [0]}}", want: "ports[0]"},
		{name: "unknown verdict", kind: crdv1.KindAlertRule, spec: "{severity: info, match: {verdicts: [maybe]}}", want: "verdicts[0]"},
		{name: "empty verdicts", kind: crdv1.KindAlertRule, spec: "{severity: info, match: {verdicts: []}}", want: "verdicts"},
		{name: "empty except", kind: crdv1.KindAlertRule, spec: "{severity: info, except: [{}]}", want: "except[0]"},
		{name: "window not a duration", kind: crdv1.KindAlertRule, spec: "{severity: info, window: 5 minutes}", want: "window"},
		{name: "unknown format", kind: crdv1.KindWebhook, spec: "{url: 'https://h.example/x', format: xml}", want: "format"},
		{name: "missing url", kind: crdv1.KindWebhook, spec: "{format: json}", want: "url"},
		{name: "ftp url", kind: crdv1.KindWebhook, spec: "{url: 'ftp://h.example/x'}", want: "url"},
		{name: "secret from HOME", kind: crdv1.KindWebhook, spec: "{url: 'https://h.example/x', secretFrom: {env: HOME}}", want: "env"},
		{name: "secret from env and file", kind: crdv1.KindWebhook, spec: "{url: 'https://h.example/x', secretFrom: {env: EASTGUARD_X, file: x}}", want: "exactly one"},
		{name: "secret from nothing", kind: crdv1.KindWebhook, spec: "{url: 'https://h.example/x', secretFrom: {}}", want: "exactly one"},
		{name: "absolute secret file", kind: crdv1.KindWebhook, spec: "{url: 'https://h.example/x', secretFrom: {file: /etc/shadow}}", want: "file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := []byte("apiVersion: eastguard.dev/v1\nkind: " + tc.kind + "\nmetadata: {name: bad}\nspec: " + tc.spec + "\n")
			errs := schemas[tc.kind].validate(yamlObject(t, doc))
			if len(errs) == 0 {
				t.Fatalf("the schema accepts %s", doc)
			}
			if msg := errs.ToAggregate().Error(); !strings.Contains(msg, tc.want) {
				t.Errorf("schema errors %q do not mention %q", msg, tc.want)
			}
			if _, diags := policy.Parse("bad", doc); !diags.HasErrors() {
				t.Errorf("the schema refuses what egctl validate accepts:\n%s", doc)
			}
		})
	}
}

// TestCRDsDescribeTheStatus: the status the controller writes, and the
// printer column that shows it, are in every CRD.
func TestCRDsDescribeTheStatus(t *testing.T) {
	for _, file := range []string{"eastguard.dev_policies.yaml", "eastguard.dev_alertrules.yaml", "eastguard.dev_webhooks.yaml"} {
		data, err := os.ReadFile(filepath.Join("../../../deploy/kubernetes/crds", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"observedGeneration", "x-kubernetes-list-type: map", `.status.conditions[?(@.type=="Valid")].status`} {
			if !bytes.Contains(data, []byte(want)) {
				t.Errorf("%s lacks %q", file, want)
			}
		}
	}
}
