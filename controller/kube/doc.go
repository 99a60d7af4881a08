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
// It talks to the apiserver through narrow clients only: Client (the
// handful of core/v1 and authentication/v1 calls the controller makes,
// and one discovery GET), which NewClients builds over client-go's rest
// client with a scheme of those two groups only, and the dynamic client,
// with informers built from cache.NewSharedIndexInformer over their
// ListWatch. Do not bring back k8s.io/client-go/kubernetes (the
// clientset of every API group), k8s.io/client-go/informers or
// dynamic/dynamicinformer (the informers of every group): they took the
// controller from 191 to 418 k8s.io packages, more than half of a cold
// `make build` (937 of 1,394 compile-seconds), which `make demo` on a
// fresh 2-core machine pays (issue 18). Nor the per-group typed clients
// (kubernetes/typed/...), discovery or gentype: every typed client
// imports kubernetes/scheme, which registers every API group (56
// k8s.io/api packages), and gentype brings in client-go/testing and
// applyconfigurations; without them the binaries need 652 packages
// instead of 730 and the controller binary (make demo-build) is 55 MB
// instead of 77 MB. test/repo's TestBinariesAvoidAllGroupsClientGo (make
// lint) fails if any of them comes back into a binary; tests may use the
// fake clientset, through kubefake, which adapts it to Client.
//
// It owns no kernel objects and must not import agent/...; subpackages
// (join) hold the rest of the Kubernetes integration.
package kube
