package crdv1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The specs below mirror internal/policy's parser field by field; where a
// marker repeats one of its checks, the comment names it. Bounds on list
// lengths (maxItems) are not the parser's: they keep an object within what
// the apiserver stores and lets CEL rules be costed, and lie far above any
// policy a person writes.
//
// Pointers and omitzero keep apart what the documents keep apart: an empty
// selector ({}, every managed workload) is not an absent one, ICMP type 0
// (echo reply) is not "every type", and `world: false` (an error) is not an
// absent world. No field needs x-kubernetes-int-or-string or
// x-kubernetes-preserve-unknown-fields: the document format has one shape
// per field.

// Status is what the controller reports on every resource.
type Status struct {
	// ObservedGeneration is the metadata.generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Valid says whether the spec is valid Eastguard policy;
	// when it is not, its message holds the diagnostics as
	// "path: message", as egctl validate prints them.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Policy is a set of rules, each an edge of the data-flow diagram
// (docs/POLICY.md, "Policy").
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=egp,categories=eastguard
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Policy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PolicySpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitzero"`
}

// PolicyList is a list of Policies.
//
// +kubebuilder:object:root=true
type PolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Policy `json:"items"`
}

// PolicySpec is the spec of a Policy document.
type PolicySpec struct {
	// Mode is enforce (the default) or monitor (a dry run: would-deny
	// instead of deny).
	// +optional
	// +kubebuilder:validation:Enum=enforce;monitor
	Mode string `json:"mode,omitempty"`
	// Rules are the policy's edges; each rule's name is unique in the
	// policy (the parser's "duplicate rule name", here listType=map).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=1024
	Rules []Rule `json:"rules,omitempty"`
}

// Name is a resource, rule or node name (internal/policy checkName).
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
type Name string

// Rule is one edge: traffic from From to To on Ports.
type Rule struct {
	// Name is required and unique in the policy.
	Name Name `json:"name"`
	// Action is allow (the default) or deny.
	// +optional
	// +kubebuilder:validation:Enum=allow;deny
	Action string `json:"action,omitempty"`
	// From are the sources; at least one (an empty list is not "anywhere").
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	From []Peer `json:"from"`
	// To are the destinations; at least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	To []Peer `json:"to"`
	// Ports omitted means every protocol and port; an empty list is an
	// error (it would match nothing).
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	Ports []PortRule `json:"ports,omitempty"`
}

// LabelValue is a label value: letters, digits, '-', '_', '.', '/' and ':'.
// Quote values YAML reads as numbers or booleans (1.10, yes, y, on): the
// schema types values as strings and kubectl reads YAML 1.1. Keys have
// the same alphabet, checked by the controller (OpenAPI constrains no map
// keys).
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._/:-]*$`
type LabelValue string

// Peer is one end of a rule: exactly one of selector, cidr, world and
// host; except only beside cidr.
//
// +kubebuilder:validation:ExactlyOneOf=selector;cidr;world;host
// +kubebuilder:validation:XValidation:rule="!has(self.except) || has(self.cidr)",message="except is only valid with cidr"
type Peer struct {
	// Selector selects managed workloads whose labels include every pair;
	// {} selects every managed workload (omitzero keeps it apart from an
	// absent selector).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	Selector map[string]LabelValue `json:"selector,omitzero"`
	// CIDR is a prefix without host bits (the parser checks those).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	CIDR string `json:"cidr,omitempty"`
	// Except are prefixes strictly inside CIDR, of its family.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=64
	Except []string `json:"except,omitempty"`
	// World is every address that is not a managed workload; only true
	// (world: false is an error, not an absent peer).
	// +optional
	// +kubebuilder:validation:Enum=true
	World *bool `json:"world,omitempty"`
	// Host is the node's own addresses; only true.
	// +optional
	// +kubebuilder:validation:Enum=true
	Host *bool `json:"host,omitempty"`
}

// Protocol is TCP, UDP, ICMP, ICMPv6 or ANY in any case, as the parser
// reads it: a pattern, not an enum, because an enum would refuse "tcp",
// which egctl validate accepts.
// +kubebuilder:validation:Pattern=`^(?i:tcp|udp|icmp|icmpv6|any)$`
type Protocol string

// PortRule is one protocol and port range, or ICMP type and code. Which
// fields go with which protocol (port with TCP/UDP/ANY, type and code with
// ICMP) and endPort >= port are the parser's checks.
type PortRule struct {
	// Protocol defaults to TCP.
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`
	// Port is the destination port; absent = every port.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
	// EndPort is the inclusive end of a range starting at Port.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort int32 `json:"endPort,omitempty"`
	// Type is the ICMP type; absent = every type (0 is echo reply).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	Type *int32 `json:"type,omitempty"`
	// Code is the ICMP code; needs a type.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	Code *int32 `json:"code,omitempty"`
}

// AlertRule turns matching flows into alerts (docs/POLICY.md, "AlertRule
// and Webhook").
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=egar,categories=eastguard
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Severity",type=string,JSONPath=`.spec.severity`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AlertRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AlertRuleSpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitzero"`
}

// AlertRuleList is a list of AlertRules.
//
// +kubebuilder:object:root=true
type AlertRuleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AlertRule `json:"items"`
}

// AlertRuleSpec is the spec of an AlertRule document.
type AlertRuleSpec struct {
	// Severity is info, warning or critical.
	// +kubebuilder:validation:Enum=info;warning;critical
	Severity string `json:"severity"`
	// Match says which flows the rule matches; absent = every denied and
	// would-deny flow.
	// +optional
	Match *AlertMatch `json:"match,omitempty"`
	// Except exempts the flows that match all of one entry.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	Except []AlertExcept `json:"except,omitempty"`
	// Window is a positive Go duration (30s, 5m, 1h); default 5m. The
	// pattern is Go's duration syntax; the parser checks the sign.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^\+?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`
	Window string `json:"window,omitempty"`
	// Notify names the Webhooks that receive the alerts; each must exist
	// (the controller checks it across resources).
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Notify []string `json:"notify,omitempty"`
}

// Verdict is allowed, denied or would-deny.
// +kubebuilder:validation:Enum=allowed;denied;would-deny
type Verdict string

// AlertMatch says which flows an AlertRule matches; every field optional.
type AlertMatch struct {
	// Protocol defaults to ANY (every protocol).
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`
	// Ports are destination ports; absent = every port. Not valid with
	// ICMP protocols (the parser's check).
	// +optional
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	Ports []int32 `json:"ports,omitempty"`
	// Verdicts default to denied and would-deny; an empty list is an error.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	Verdicts []Verdict `json:"verdicts,omitempty"`
	// From are the flow's sources; absent = any peer.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	From []Peer `json:"from,omitempty"`
	// To are the flow's destinations; absent = any peer.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	To []Peer `json:"to,omitempty"`
}

// AlertExcept exempts the flows from From to To; at least one of them (an
// empty entry would exempt every flow).
//
// +kubebuilder:validation:MinProperties=1
type AlertExcept struct {
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	From []Peer `json:"from,omitempty"`
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	To []Peer `json:"to,omitempty"`
}

// Webhook is where alerts are delivered.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=egwh,categories=eastguard
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Format",type=string,JSONPath=`.spec.format`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Webhook struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec WebhookSpec `json:"spec"`
	// +optional
	Status Status `json:"status,omitzero"`
}

// WebhookList is a list of Webhooks.
//
// +kubebuilder:object:root=true
type WebhookList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Webhook `json:"items"`
}

// WebhookSpec is the spec of a Webhook document. The URL is not a printer
// column: it may carry a token in its path or query.
type WebhookSpec struct {
	// URL is an http or https URL with a host.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(?i:https?)://[^/?#]`
	URL string `json:"url"`
	// Format is json (the default), slack or alertmanager.
	// +optional
	// +kubebuilder:validation:Enum=json;slack;alertmanager
	Format string `json:"format,omitempty"`
	// SecretFrom names where the controller finds the HMAC secret that
	// signs json deliveries; absent = unsigned.
	// +optional
	SecretFrom *SecretFrom `json:"secretFrom,omitempty"`
}

// SecretFrom is exactly one of env and file.
//
// +kubebuilder:validation:ExactlyOneOf=env;file
type SecretFrom struct {
	// Env is a variable of the controller's environment named
	// EASTGUARD_... (no other variable: the environment holds other
	// secrets).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^EASTGUARD_[A-Za-z0-9_]+$`
	Env string `json:"env,omitempty"`
	// File is a file name relative to the controller's --secrets-dir,
	// without empty, "." or ".." elements (the parser checks those).
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:Pattern=`^[^/\\]`
	File string `json:"file,omitempty"`
}
