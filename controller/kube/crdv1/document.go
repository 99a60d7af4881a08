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
	meta := map[string]any{"name": obj.GetName()}
	if labels := obj.GetLabels(); len(labels) > 0 {
		meta["labels"] = labels
	}
	doc := map[string]any{
		"apiVersion": SchemeGroupVersion.String(),
		"kind":       kind,
		"metadata":   meta,
	}
	// An absent spec stays absent: the parser reports the missing field.
	if spec, ok := obj.Object["spec"]; ok {
		doc["spec"] = spec
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("render %s %q: %w", kind, obj.GetName(), err)
	}
	return out, nil
}
