// Package apiclient is the controller's REST API as its clients see it:
// the request and response types of /api/v1, the admin.conf file that
// holds the address and credential, and a small client. egctl uses it;
// controller/restapi serves these same types. It must stay light:
// no gRPC, no store, no compiler (the policy types only).
package apiclient

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/eastguard/eastguard/internal/policy"
)

// Error is the body of every API error. Diagnostics are
// "file:line:col: path: message" lines for refused policy.
type Error struct {
	Error       string   `json:"error"`
	Diagnostics []string `json:"diagnostics,omitempty"`
	// NotLeader marks a standby controller's answer (HTTP 503): the
	// client tries the next controller address. Leader is the leader's
	// advertised API URL, when the standby knows it.
	NotLeader bool   `json:"notLeader,omitempty"`
	Leader    string `json:"leader,omitempty"`
}

// Controller is one controller sharing the store (GET
// /api/v1/controllers, egctl status): Role is leader, standby, or gone
// (not seen for 10 s).
type Controller struct {
	Instance string    `json:"instance"`
	Role     string    `json:"role"`
	GRPC     string    `json:"grpc,omitempty"`
	API      string    `json:"api,omitempty"`
	Version  string    `json:"version,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	LastSeen time.Time `json:"lastSeen,omitzero"`
	Term     int64     `json:"term,omitempty"`
}

// NotLeaderMessage begins a standby's error message.
const NotLeaderMessage = "this controller is a standby, not the leader"

// File is one input file of an apply: its name (used in diagnostics) and
// its YAML.
type File struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

// ApplyRequest is the body of POST /api/v1/apply.
type ApplyRequest struct {
	Files  []File `json:"files"`
	DryRun bool   `json:"dryRun,omitempty"`
}

// ResourceRef names a resource: kind as in the YAML ("Workload") or as in
// the API path ("workloads").
type ResourceRef struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// DeleteRequest is the body of POST /api/v1/delete.
type DeleteRequest struct {
	Resources []ResourceRef `json:"resources"`
	DryRun    bool          `json:"dryRun,omitempty"`
}

// ChangeResult says what an apply or delete did (or would do, dry run).
type ChangeResult struct {
	DryRun    bool     `json:"dryRun,omitempty"`
	Created   []string `json:"created,omitempty"`
	Updated   []string `json:"updated,omitempty"`
	Unchanged []string `json:"unchanged,omitempty"`
	Deleted   []string `json:"deleted,omitempty"`
	// Nodes are the nodes whose rule set changed, with the new version.
	Nodes    []NodeVersion `json:"nodes,omitempty"`
	Warnings []string      `json:"warnings,omitempty"`
}

// NodeVersion is a node's new rule-set version.
type NodeVersion struct {
	Node    string `json:"node"`
	Version uint64 `json:"version"`
	Hash    string `json:"hash"`
}

// TokenRequest is the body of POST /api/v1/tokens.
type TokenRequest struct {
	Node string `json:"node"`
	// TTL is a Go duration ("1h", "30m").
	TTL string `json:"ttl"`
}

// JoinToken is a created join token.
type JoinToken struct {
	Token   string    `json:"token"`
	Node    string    `json:"node"`
	Expires time.Time `json:"expires"`
}

// AdminTokenRequest is the body of POST /api/v1/admin-tokens.
type AdminTokenRequest struct {
	// Name says what the token is for (at most 64 characters).
	Name string `json:"name,omitempty"`
	// TTL is a Go duration ("720h"); empty: the token never expires.
	TTL string `json:"ttl,omitempty"`
}

// Admin token states.
const (
	AdminTokenActive  = "active"
	AdminTokenExpired = "expired"
	AdminTokenRevoked = "revoked"
)

// AdminToken is one admin token in GET /api/v1/admin-tokens and `egctl
// admin-token list -o json`: what it is, never its secret nor the hash
// the controller keeps of it.
type AdminToken struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// State is active, expired or revoked.
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// Expires is left out for a token that never expires.
	Expires time.Time `json:"expires,omitzero"`
	Revoked time.Time `json:"revoked,omitzero"`
	// CreatedBy is the id of the admin token that created it; left out
	// for the controller's own (admin.conf).
	CreatedBy string `json:"createdBy,omitempty"`
	// Current is true for the token the request was made with.
	Current bool `json:"current,omitempty"`
}

// CreatedAdminToken is the answer to POST /api/v1/admin-tokens. Token is
// the credential itself: the controller keeps only a hash of its secret,
// and this answer is the only time it is shown.
type CreatedAdminToken struct {
	AdminToken
	Token string `json:"token"`
}

// RevokedAdminToken is the answer to POST /api/v1/admin-tokens/{id}/revoke.
// Current says the caller revoked the token it used: its next call gets
// 401.
type RevokedAdminToken struct {
	AdminToken
	// AlreadyRevoked: it was revoked before this call (Revoked is that
	// first time).
	AlreadyRevoked bool `json:"alreadyRevoked,omitempty"`
	// ActiveTokens is how many admin tokens are still valid.
	ActiveTokens int `json:"activeTokens"`
}

// JoinTokenInfo is one join token in GET /api/v1/tokens and `egctl token
// list -o json`, and the answer to DELETE /api/v1/tokens/{id}. It never
// carries the token's secret (the controller keeps only a hash of it, and
// does not give that out either).
type JoinTokenInfo struct {
	ID      string     `json:"id"`
	Node    string     `json:"node"`
	Created time.Time  `json:"created"`
	Expires time.Time  `json:"expires"`
	Used    *time.Time `json:"used"` // null until used
	State   string     `json:"state"`
}

// Join token states.
const (
	TokenPending = "pending" // usable until it expires
	TokenUsed    = "used"
	TokenExpired = "expired"
)

// RevokeResult is the answer to POST /api/v1/agents/{node}/revoke.
type RevokeResult struct {
	Node                string `json:"node"`
	RevokedCertificates int    `json:"revokedCertificates"`
	// DeletedJoinTokens counts the node's unused join tokens the
	// revocation deleted.
	DeletedJoinTokens int `json:"deletedJoinTokens"`
}

// AgentStatus is one node's entry in GET /api/v1/agents and `egctl agents
// -o json`. The keys node, connected, appliedVersion, latestVersion,
// certExpiry and lastError are an interface scripts rely on
// (docs/ARCHITECTURE.md).
type AgentStatus struct {
	Node              string            `json:"node"`
	Connected         bool              `json:"connected"`
	AppliedVersion    uint64            `json:"appliedVersion"`
	LatestVersion     uint64            `json:"latestVersion"`
	CertExpiry        *time.Time        `json:"certExpiry"`
	LastError         string            `json:"lastError"`
	LastContact       *time.Time        `json:"lastContact"`
	AppliedHash       string            `json:"appliedHash,omitempty"`
	LatestHash        string            `json:"latestHash,omitempty"`
	AgentVersion      string            `json:"agentVersion,omitempty"`
	Kernel            string            `json:"kernel,omitempty"`
	Capabilities      []string          `json:"capabilities,omitempty"`
	DefaultMode       string            `json:"defaultMode,omitempty"`
	Revoked           bool              `json:"revoked"`
	PendingInterfaces []string          `json:"pendingInterfaces,omitempty"`
	Counters          map[string]uint64 `json:"counters,omitempty"`
	// Mode is the agent's default mode (enforce or monitor; "" until it
	// reported one), as DefaultMode. DeniedPackets and LostEvents are
	// sums of its datapath counters (denied_ingress + denied_egress,
	// events_lost), for the dashboard.
	Mode          string `json:"mode"`
	DeniedPackets uint64 `json:"deniedPackets"`
	LostEvents    uint64 `json:"lostEvents"`
}

// Resource views returned by GET /api/v1/{kind}.
type (
	WorkloadView struct {
		Name      string            `json:"name"`
		Node      string            `json:"node"`
		Interface string            `json:"interface,omitempty"`
		Addresses []netip.Addr      `json:"addresses"`
		Labels    map[string]string `json:"labels,omitempty"`
		Mode      string            `json:"mode,omitempty"`
		Updated   time.Time         `json:"updated"`
		// Source is where the resource comes from: "api" (egctl) or
		// "kubernetes" (a pod or a custom resource, changed only there).
		Source string `json:"source"`
	}
	PolicyView struct {
		Name    string    `json:"name"`
		Mode    string    `json:"mode,omitempty"`
		Rules   []string  `json:"rules"`
		Updated time.Time `json:"updated"`
		// Source is where the resource comes from: "api" (egctl) or
		// "kubernetes" (a pod or a custom resource, changed only there).
		Source string `json:"source"`
	}
	AlertRuleView struct {
		Name     string    `json:"name"`
		Severity string    `json:"severity"`
		Notify   []string  `json:"notify,omitempty"`
		Updated  time.Time `json:"updated"`
		// Source is where the resource comes from: "api" (egctl) or
		// "kubernetes" (a pod or a custom resource, changed only there).
		Source string `json:"source"`
	}
	// WebhookView is a Webhook with its deliveries' status (as far as
	// the outbox keeps them): when one last succeeded, the error of the
	// newest that failed, how many wait and how many were given up.
	WebhookView struct {
		Name    string    `json:"name"`
		URL     string    `json:"url"`
		Format  string    `json:"format"`
		Updated time.Time `json:"updated"`
		// Source is where the resource comes from: "api" (egctl) or
		// "kubernetes" (a pod or a custom resource, changed only there).
		Source        string    `json:"source"`
		LastDelivered time.Time `json:"lastDelivered,omitzero"`
		LastError     string    `json:"lastError,omitempty"`
		Pending       int       `json:"pending"`
		GaveUp        int       `json:"gaveUp"`
	}
)

// SourceAPI is the source of resources applied through the API (egctl);
// others are named by the system that owns them ("kubernetes").
const SourceAPI = "api"

// Kinds maps what users write for a resource kind (API path segments,
// singular and plural, any case) to the kind in the YAML.
var Kinds = map[string]string{
	"workloads": "Workload", "policies": "Policy", "alertrules": "AlertRule", "webhooks": "Webhook",
	"workload": "Workload", "policy": "Policy", "alertrule": "AlertRule", "webhook": "Webhook",
}

// KindPaths maps a kind to its API path segment.
var KindPaths = map[string]string{
	"Workload": "workloads", "Policy": "policies", "AlertRule": "alertrules", "Webhook": "webhooks",
}

// ParseKind returns the resource kind a user wrote ("Workload",
// "workloads", "policy"...).
func ParseKind(s string) (string, error) {
	if k, ok := Kinds[strings.ToLower(s)]; ok {
		return k, nil
	}
	return "", fmt.Errorf("unknown resource kind %q (want workloads, policies, alertrules or webhooks)", s)
}

// RefsOf names every resource of a policy set, by kind then in the set's
// order.
func RefsOf(set *policy.Set) []ResourceRef {
	var refs []ResourceRef
	for _, r := range set.Refs() {
		refs = append(refs, ResourceRef{Kind: r.Kind, Name: r.Name})
	}
	return refs
}

// Alert is one alert in GET /api/v1/alerts, POST /api/v1/alerts/{id}/ack
// and `egctl alerts -o json`. The keys id, rule, severity, state, count,
// source, destination, port, protocol, firstSeen and lastSeen are an
// interface scripts rely on (docs/ARCHITECTURE.md); the rest are left out when
// empty.
type Alert struct {
	ID       int64  `json:"id"`
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	// State is open, acknowledged or resolved. An acknowledged alert is
	// still live: it keeps counting repeats until a whole window passes
	// without one, and is then resolved.
	State string `json:"state"`
	// Count is the number of connection attempts the alert covers.
	Count uint64 `json:"count"`
	// Source and Destination are workload names, or addresses for ends
	// no workload has.
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Port is the first destination port seen; Ports the first distinct
	// ones (at most 64), PortCount how many distinct ports in all: an
	// alert covers every port of its source, destination and protocol.
	Port      uint16    `json:"port"`
	Ports     []uint16  `json:"ports"`
	PortCount int       `json:"portCount"`
	Protocol  string    `json:"protocol"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
	// Folded is set on a rule's summary alert (source and destination
	// "*"): the source/destination pairs it stands for, beyond the
	// rule's cap of live alerts.
	Folded uint64 `json:"folded,omitempty"`

	SrcWorkload string            `json:"srcWorkload,omitempty"`
	DstWorkload string            `json:"dstWorkload,omitempty"`
	SrcAddr     netip.Addr        `json:"srcAddr,omitzero"`
	DstAddr     netip.Addr        `json:"dstAddr,omitzero"`
	SrcLabels   map[string]string `json:"srcLabels,omitempty"`
	DstLabels   map[string]string `json:"dstLabels,omitempty"`
	// Verdict, DecidingRule (the policy rule, or default-deny, that
	// decided the flow) and Node are the last matching flow's.
	Verdict        string    `json:"verdict,omitempty"`
	DecidingRule   string    `json:"decidingRule,omitempty"`
	Node           string    `json:"node,omitempty"`
	AcknowledgedAt time.Time `json:"acknowledgedAt,omitzero"`
	// AcknowledgedBy names who acknowledged it: the admin token's name
	// (its id when it has none), by bearer token or dashboard session.
	AcknowledgedBy string    `json:"acknowledgedBy,omitempty"`
	ResolvedAt     time.Time `json:"resolvedAt,omitzero"`
	// ResolvedBy says why the alert was resolved: "window" (no repeat
	// for a whole window) or "api".
	ResolvedBy string `json:"resolvedBy,omitempty"`
}

// AuditRecord is one entry of the audit trail (GET /api/v1/audit, and
// one line of --audit-log): who did what to which object, when and from
// where, and the hashes that chain it to the record before.
type AuditRecord struct {
	// ID counts records from 1, without gaps.
	ID   uint64    `json:"id"`
	Time time.Time `json:"time"`
	// ActorKind is admin-token, certificate, node, kubernetes,
	// controller or anonymous; Actor names the actor within its kind (a
	// token id, a certificate's subject, a node name).
	ActorKind string `json:"actorKind"`
	Actor     string `json:"actor"`
	// Action is policy.apply, policy.delete, token.create, token.delete,
	// admintoken.create, admintoken.revoke, node.join, node.renew,
	// node.revoke, alert.acknowledge, login.success or login.failure.
	Action string `json:"action"`
	Object string `json:"object,omitempty"`
	// Before and After are the hex SHA-256 of the object's canonical form
	// before and after the change, where it has one.
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
	// Source is the address the change came from.
	Source string `json:"source,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Prev is the previous record's Hash ("" for record 1); Hash is
	// SHA-256 over Prev and this record's fields (egctl audit --verify).
	Prev string `json:"prev,omitempty"`
	Hash string `json:"hash"`
}

// AuditList is the answer of GET /api/v1/audit.
type AuditList struct {
	Records []AuditRecord `json:"records"`
	// Next, when set, is the query parameter (before=ID, or after=ID with
	// order=oldest) that asks for the next page.
	Next string `json:"next,omitempty"`
}
