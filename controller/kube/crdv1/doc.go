// Package crdv1 owns the Go types of the eastguard.dev/v1 custom resources
// (Policy, AlertRule, Webhook: cluster-scoped, with a status subresource)
// and the CRD schemas controller-gen generates from them into
// deploy/kubernetes/crds (`make generate`).
//
// A resource's spec is exactly the spec of the Eastguard policy document of
// the same kind (docs/POLICY.md, internal/policy): same field names, same
// shapes. The schema's markers repeat the checks of internal/policy that
// OpenAPI can express (enums, ranges, lengths, exactly-one-of), so most
// mistakes are refused by the apiserver already; Document renders a custom
// resource as the policy document internal/policy parses, so the
// controller validates it with the very code of `egctl validate` and its
// diagnostics read the same. The parser stays the authority: whatever the
// schema cannot say (a CIDR's host bits, a duration's sign, references
// between resources) only the parser checks.
//
// There is no Workload resource: in Kubernetes, pods are the workloads.
//
// It imports internal/... only in tests and must not import agent/...
package crdv1

//go:generate go tool controller-gen object paths=. output:dir=.
//go:generate go tool controller-gen crd:crdVersions=v1 paths=. output:crd:dir=../../../deploy/kubernetes/crds
