// Package kube mirrors Kubernetes into the controller's policy: every
// running pod with an IP becomes a Workload ("<namespace>/<pod>", on its
// node, interface auto, labelled with its own labels and its namespace's),
// and the eastguard.dev/v1 custom resources (Policy, AlertRule, Webhook)
// become the resources they describe. It watches with client-go
// informers, coalesces bursts of changes into one policy change, and
// reports on each custom resource's status.conditions and with Events
// whether it is in force.
//
// Everything it mirrors is marked with the source "kubernetes" in the
// policy repository, which refuses API (egctl) changes to it.
//
// It owns no kernel objects and must not import agent/...; subpackages
// (join) hold the rest of the Kubernetes integration.
package kube
