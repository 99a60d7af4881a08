package crdv1

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// ErrKind is returned for a kind that is not one of the custom resources'.
var ErrKind = errors.New("not an eastguard.dev/v1 custom resource kind")

// Document renders a custom resource of the given kind, as the dynamic
// client returns it, as the Eastguard policy document internal/policy
// parses: apiVersion eastguard.dev/v1, the kind, metadata with only the
// name and the labels, and the spec exactly as stored, whatever it holds.
// Nothing of the spec is dropped, defaulted or fixed up here, so the
// parser judges what the user wrote (an unknown field or a wrong shape
// that slipped past the schema is the parser's diagnostic, with the same
// path as in egctl validate), and a resource is valid exactly when the
// same document is in a file.
//
// It refuses (ErrKind) a kind other than Policy, AlertRule and Webhook,
// and an object whose own apiVersion or kind say it is something else.
func Document(kind string, obj *unstructured.Unstructured) ([]byte, error) {
	if _, ok := Resources[kind]; !ok {
		return nil, fmt.Errorf("render %q: %w", kind, ErrKind)
	}
	if obj == nil {
		return nil, fmt.Errorf("render %s: no object", kind)
	}
	// The dynamic client fills in apiVersion and kind; an object built by
	// hand may leave them empty, but may not contradict the kind asked for.
	if gv := obj.GetAPIVersion(); gv != "" && gv != SchemeGroupVersion.String() {
		return nil, fmt.Errorf("render %s %q: apiVersion %q is not %s: %w", kind, obj.GetName(), gv, SchemeGroupVersion, ErrKind)
	}
	if k := obj.GetKind(); k != "" && k != kind {
		return nil, fmt.Errorf("render %s %q: the object is a %s: %w", kind, obj.GetName(), k, ErrKind)
	}
	// An absent spec stays absent: the parser reports the missing field.
	spec, ok := obj.Object["spec"]
	return Render(kind, obj.GetName(), obj.GetLabels(), spec, ok)
}

// Render writes an Eastguard policy document: apiVersion eastguard.dev/v1,
// the kind, metadata with the name and the labels (left out when there
// are none), and spec as given (left out unless hasSpec). Keys come out
// sorted, so equal input renders equal bytes: an unchanged object changes
// nothing in the store. Kubernetes mode renders pods' Workloads with it too.
func Render(kind, name string, labels map[string]string, spec any, hasSpec bool) ([]byte, error) {
	meta := map[string]any{"name": name}
	if len(labels) > 0 {
		meta["labels"] = labels
	}
	doc := map[string]any{
		"apiVersion": SchemeGroupVersion.String(),
		"kind":       kind,
		"metadata":   meta,
	}
	if hasSpec {
		doc["spec"] = spec
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("render %s %q: %w", kind, name, err)
	}
	return out, nil
}
