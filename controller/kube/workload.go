package kube

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/eastguard/eastguard/controller/kube/crdv1"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Labels the controller adds to every pod's workload.
const (
	LabelNamespace      = "k8s:namespace"
	LabelServiceAccount = "k8s:sa"
	// LabelNamespacePrefix prefixes the namespace's labels:
	// k8s:ns.<key>=<value>.
	LabelNamespacePrefix = "k8s:ns."
	// ModeAnnotation on a pod sets its workload's mode (enforce or
	// monitor); without it the node's default applies.
	ModeAnnotation = "eastguard.dev/mode"
)

// ignoredLabels are set by Kubernetes controllers with a value per
// rollout or per pod. As workload labels they would give every rollout,
// or every pod, an identity of its own (identities are label sets): many
// identities, rule sets that change at every rollout, and nothing a
// policy should select on. Cilium leaves out the same ones.
var ignoredLabels = map[string]bool{
	"pod-template-hash":                        true,
	"controller-revision-hash":                 true,
	"pod-template-generation":                  true,
	"statefulset.kubernetes.io/pod-name":       true,
	"apps.kubernetes.io/pod-index":             true,
	"controller-uid":                           true,
	"batch.kubernetes.io/controller-uid":       true,
	"batch.kubernetes.io/job-completion-index": true,
}

// podWorkload returns the Workload a pod stands for, or false when the
// pod is none: not scheduled, host network (the node's host mode covers
// it), finished, or without an address yet. nsLabels are its namespace's
// labels (nil if the namespace is not known).
func podWorkload(pod *corev1.Pod, nsLabels map[string]string) (policyrepo.SourceObject, bool) {
	if pod.Spec.NodeName == "" || pod.Spec.HostNetwork ||
		pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return policyrepo.SourceObject{}, false
	}
	var addrs []string
	seen := make(map[netip.Addr]bool)
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a.Unmap()] {
			seen[a.Unmap()] = true
			addrs = append(addrs, a.Unmap().String())
		}
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	add(pod.Status.PodIP)
	if len(addrs) == 0 {
		return policyrepo.SourceObject{}, false
	}
	labels := make(map[string]string, len(pod.Labels)+len(nsLabels)+2)
	for k, v := range pod.Labels {
		if !ignoredLabels[k] {
			labels[k] = v
		}
	}
	for k, v := range nsLabels {
		labels[LabelNamespacePrefix+k] = v
	}
	labels[LabelNamespace] = pod.Namespace
	labels[LabelServiceAccount] = pod.Spec.ServiceAccountName
	if labels[LabelServiceAccount] == "" {
		labels[LabelServiceAccount] = "default"
	}
	spec := map[string]any{
		"node":      pod.Spec.NodeName,
		"interface": ruleset.InterfaceAuto,
		"addresses": addrs,
	}
	if m := pod.Annotations[ModeAnnotation]; m != "" {
		spec["mode"] = m // an unknown mode makes the document invalid: reported, not guessed
	}
	name := pod.Namespace + "/" + pod.Name
	key := store.ResourceKey{Kind: policy.KindWorkload, Name: name}
	// The document `egctl validate` reads, so that what comes from
	// Kubernetes is checked by the same code. Only strings go in: it
	// cannot fail, and if it did the empty document would be refused.
	doc, _ := crdv1.Render(policy.KindWorkload, name, labels, spec, true)
	return policyrepo.SourceObject{Key: key, File: "Pod " + name, Doc: doc}, true
}

// namespaceLabels returns a copy of a namespace's labels, sorted keys
// irrelevant (document sorts).
func namespaceLabels(ns *corev1.Namespace) map[string]string {
	if ns == nil {
		return nil
	}
	return maps.Clone(ns.Labels)
}

// conditionMessage turns diagnostics into a condition's or an Event's
// message: "path: message" each, as `egctl validate` says them without the
// file position (which is of the rendered document, not the object).
func conditionMessage(diags policy.Diagnostics) string {
	var parts []string
	for _, d := range diags {
		path := d.Path
		if path == "" {
			path = "document"
		}
		parts = append(parts, path+": "+d.Message)
	}
	slices.Sort(parts)
	msg := strings.Join(slices.Compact(parts), "; ")
	const maxMessage = 4096 // conditions and Events are not for megabytes
	if len(msg) > maxMessage {
		msg = msg[:maxMessage-3] + "..."
	}
	return msg
}
