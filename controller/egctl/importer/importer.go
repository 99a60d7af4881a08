// Package importer translates Kubernetes NetworkPolicy objects
// (networking.k8s.io/v1) into Eastguard policies offline: no cluster, no
// controller (egctl import networkpolicy). It owns the mapping and the
// warnings for every place where the two semantics differ; docs/POLICY.md
// ("Importing Kubernetes NetworkPolicies") documents both.
//
// The translation is deterministic: policies in name order, warnings
// sorted. Its output must parse with internal/policy: Import checks that
// itself before returning it.
//
// It must not import agent/... nor any other controller package.
package importer

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/eastguard/eastguard/internal/policy"
)

// Labels Eastguard's Kubernetes integration puts on pods: the namespace
// name, and each label of the namespace under a prefix.
const (
	LabelNamespace       = "k8s:namespace"
	NamespaceLabelPrefix = "k8s:ns."
)

// maxAlternatives bounds the equality selectors one label selector may
// expand into (matchExpressions In with several values multiply).
const maxAlternatives = 64

// ErrInput is the sentinel of every error about the input.
var ErrInput = errors.New("bad input")

// InputError is bad input at a position: the file, the line where the
// document starts, and the path of the field inside it when known.
type InputError struct {
	File string
	Line int
	Path string
	Msg  string
}

func (e *InputError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Path, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

func (e *InputError) Is(target error) bool { return target == ErrInput }

// Input is one named file's content.
type Input struct {
	Name string
	Data []byte
}

// Options are the translation's inputs besides the objects.
type Options struct {
	// NamedPorts maps a container port name to its numbers (--named-ports);
	// ports of Pods in the input are added to it.
	NamedPorts map[string][]int32
}

// Warning is a place where the output does not mean what the input meant.
type Warning struct {
	// Object is "namespace/name", or "file:line" for an object skipped
	// before it has one.
	Object  string
	Path    string
	Message string
}

func (w Warning) String() string {
	if w.Path == "" {
		return fmt.Sprintf("%s: warning: %s", w.Object, w.Message)
	}
	return fmt.Sprintf("%s: %s: warning: %s", w.Object, w.Path, w.Message)
}

// Result is the translation.
type Result struct {
	// YAML holds the Eastguard policies, one document per NetworkPolicy,
	// in name order; empty when there were none.
	YAML     []byte
	Policies int
	Warnings []Warning
}

type source struct {
	file string
	line int
	np   netv1.NetworkPolicy
}

// Import translates every NetworkPolicy in the inputs. Bad input (YAML
// that does not parse, an invalid NetworkPolicy) is an error wrapping
// ErrInput that says where; objects of other kinds are skipped with a
// warning (Pods only feed named ports).
func Import(inputs []Input, opts Options) (*Result, error) {
	named := make(map[string][]int32)
	for k, v := range opts.NamedPorts {
		named[k] = append(named[k], v...)
	}
	var srcs []source
	var warns []Warning
	for _, in := range inputs {
		for _, d := range policy.SplitDocumentLines(in.Data) {
			if err := decodeObject(in.Name, d.Line, "", d.Text, &srcs, named, &warns); err != nil {
				return nil, err
			}
		}
	}
	for k, v := range named {
		slices.Sort(v)
		named[k] = slices.Compact(v)
	}
	t := &translator{named: named}
	var docs []outDoc
	seen := make(map[string]source)
	for _, s := range srcs {
		name := s.np.Namespace + "." + s.np.Name
		if first, dup := seen[name]; dup {
			return nil, &InputError{File: s.file, Line: s.line, Msg: fmt.Sprintf("NetworkPolicy %s/%s given twice (first at %s:%d)", s.np.Namespace, s.np.Name, first.file, first.line)}
		}
		seen[name] = s
		doc, err := t.policy(s)
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, *doc)
		}
	}
	warns = append(warns, t.warns...)
	slices.SortStableFunc(warns, func(a, b Warning) int {
		return cmp.Or(cmp.Compare(a.Object, b.Object), cmp.Compare(a.Path, b.Path), cmp.Compare(a.Message, b.Message))
	})
	warns = slices.Compact(warns)
	slices.SortFunc(docs, func(a, b outDoc) int { return cmp.Compare(a.Metadata.Name, b.Metadata.Name) })
	var buf bytes.Buffer
	for i, d := range docs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		fmt.Fprintf(&buf, "# from NetworkPolicy %s\n", d.object)
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(d); err != nil {
			return nil, fmt.Errorf("encode policy %s: %w", d.Metadata.Name, err)
		}
		if err := enc.Close(); err != nil {
			return nil, fmt.Errorf("encode policy %s: %w", d.Metadata.Name, err)
		}
	}
	// The output must be what Eastguard reads: a label or name the
	// language refuses is reported here, not at apply time.
	if buf.Len() > 0 {
		if _, diags := policy.ParseAndValidate("<import>", buf.Bytes()); diags.HasErrors() {
			return nil, fmt.Errorf("%w: the translation is not a valid Eastguard policy: %v", ErrInput, diags.Errors().Err())
		}
	}
	return &Result{YAML: buf.Bytes(), Policies: len(docs), Warnings: warns}, nil
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// decodeObject decodes one object (a document or a List item, at path)
// into srcs or named.
func decodeObject(file string, line int, path string, data []byte, srcs *[]source, named map[string][]int32, warns *[]Warning) error {
	bad := func(format string, args ...any) error {
		return &InputError{File: file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)}
	}
	var tm typeMeta
	if err := sigsyaml.Unmarshal(data, &tm); err != nil {
		return bad("%v", err)
	}
	where := fmt.Sprintf("%s:%d", file, line)
	if path != "" {
		where += ": " + path
	}
	switch {
	case tm.Kind == "":
		return bad("no kind")
	case strings.HasSuffix(tm.Kind, "List") && (tm.APIVersion == "v1" || tm.APIVersion == "networking.k8s.io/v1"):
		var list struct {
			Items []runtime.RawExtension `json:"items"`
		}
		if err := sigsyaml.Unmarshal(data, &list); err != nil {
			return bad("%v", err)
		}
		for i, item := range list.Items {
			if err := decodeObject(file, line, fmt.Sprintf("%sitems[%d]", prefix(path), i), item.Raw, srcs, named, warns); err != nil {
				return err
			}
		}
		return nil
	case tm.Kind == "NetworkPolicy" && tm.APIVersion == "networking.k8s.io/v1":
		var np netv1.NetworkPolicy
		// Strict: a misspelt field must not silently widen or narrow
		// what the policy allows.
		if err := sigsyaml.UnmarshalStrict(data, &np); err != nil {
			return bad("NetworkPolicy %s: %v", tm.Metadata.Name, err)
		}
		if np.Name == "" {
			return bad("NetworkPolicy without metadata.name")
		}
		if np.Namespace == "" {
			np.Namespace = "default"
			*warns = append(*warns, Warning{Object: "default/" + np.Name, Path: "metadata.namespace",
				Message: "no namespace: taken as \"default\" (kubectl would use the current context's)"})
		}
		*srcs = append(*srcs, source{file: file, line: line, np: np})
		return nil
	case tm.Kind == "Pod" && tm.APIVersion == "v1":
		var pod corev1.Pod
		if err := sigsyaml.Unmarshal(data, &pod); err != nil {
			return bad("Pod %s: %v", tm.Metadata.Name, err)
		}
		for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
			for _, p := range c.Ports {
				if p.Name != "" {
					named[p.Name] = append(named[p.Name], p.ContainerPort)
				}
			}
		}
		return nil
	default:
		*warns = append(*warns, Warning{Object: where, Message: fmt.Sprintf("%s %s (%s) skipped: only networking.k8s.io/v1 NetworkPolicy is imported (and v1 Pods read for named ports)",
			tm.Kind, tm.Metadata.Name, tm.APIVersion)})
		return nil
	}
}

func prefix(path string) string {
	if path == "" {
		return ""
	}
	return path + "."
}
