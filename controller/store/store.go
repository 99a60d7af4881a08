// Package store defines the controller's persistence: the Store and
// EventStore interfaces (EventTx for one event transaction), the records
// they keep (the CA, admin and join tokens, issued certificates and
// revocations, policy resources, every node's rule sets with their
// versions, what each agent last reported; flows, alerts, webhook
// deliveries and how far each agent's flow spool is stored; the audit
// trail, append-only and hash-chained, see audit.go), the sentinel
// errors callers branch on, and the logic on those records that does not
// depend on an engine (JoinToken.Usable, SpoolPosition's holes). It must
// not decide anything: validation, compilation, versioning and
// access control are the callers' (controller/policyrepo, agentapi,
// flowingest, restapi); the store keeps
// what they decided, each change in one transaction.
//
// Implementations live in subpackages; this package imports none of them,
// no database driver and nothing else of the controller: the default
// controller/store/sqlite (sqlite.Open, a pure-Go driver, files under the
// data directory) and controller/store/postgres (postgres.Open, pgx, one
// database several controller processes may share). Callers take a Store,
// and only the process wiring (controller.Run) and tests open one. Their
// rows are encoded alike (controller/store/internal/rowcodec), their
// migrations are versioned and forward-only, and the shared behaviour is
// pinned by the conformance suite (controller/store/storetest), which
// every implementation runs.
//
// Secrets: InitCA and CA take and give the CA private key in clear; the
// SQLite store keeps it so (its files are mode 0600 in a data directory of
// mode 0700, protected and backed up like the key), the PostgreSQL store
// sealed with a key of the operator's, since its database is shared.
// Token secrets are only stored hashed.
package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrTokenUsed   = errors.New("join token already used")
	ErrTokenExpiry = errors.New("join token expired")
)

// Store is the controller's persistence. Its methods that take audit
// records (a last, variadic argument; PolicyCommit.Audit) append them
// to the audit trail in the change's own transaction, after the change
// and only if it is made (see AuditStore).
type Store interface {
	// CA returns the CA certificate and key (PEM), or ErrNotFound.
	CA(ctx context.Context) (certPEM, keyPEM []byte, err error)
	// InitCA stores the CA; ErrExists if there is one already.
	InitCA(ctx context.Context, certPEM, keyPEM []byte) error

	// AddAdminToken keeps an admin token (its secret hashed); ErrExists
	// if its id is taken.
	AddAdminToken(ctx context.Context, t AdminToken, audit ...AuditRecord) error
	// AdminToken returns one admin token, or ErrNotFound. Callers that
	// authenticate with it read it at every call: a revocation by
	// another process sharing the store takes effect at once.
	AdminToken(ctx context.Context, id string) (AdminToken, error)
	// AdminTokens returns every admin token, revoked and expired ones
	// included, oldest first.
	AdminTokens(ctx context.Context) ([]AdminToken, error)
	// RevokeAdminToken revokes an admin token at at and returns it; a
	// token revoked before keeps its first revocation time (and the
	// audit records are not written: nothing changed). ErrNotFound if
	// there is no such token.
	RevokeAdminToken(ctx context.Context, id string, at time.Time, audit ...AuditRecord) (AdminToken, error)

	// AddJoinToken keeps a join token (its secret hashed).
	AddJoinToken(ctx context.Context, t JoinToken, audit ...AuditRecord) error
	// JoinToken reads one join token, or ErrNotFound. It writes nothing:
	// callers look a token up before they spend a write transaction on
	// it (Join is open to anyone who can reach the listener).
	JoinToken(ctx context.Context, id string) (JoinToken, error)
	// JoinTokens returns every join token kept, used and expired ones
	// included, oldest first.
	JoinTokens(ctx context.Context) ([]JoinToken, error)
	// DeleteJoinToken deletes a join token and returns it, or ErrNotFound.
	DeleteJoinToken(ctx context.Context, id string, audit ...AuditRecord) (JoinToken, error)
	// ConsumeJoinToken marks a join token used, atomically: of two
	// concurrent calls for the same token, one wins. check runs on the
	// stored token inside the transaction; if it fails, nothing changes
	// and its error is returned. cert (when not nil) and audit are
	// recorded in the same transaction, as AddCert records them: a join
	// whose certificate cannot be recorded leaves its token unused, to be
	// retried. Errors: ErrNotFound, ErrTokenUsed, ErrTokenExpiry (at now),
	// check's, or the record's.
	ConsumeJoinToken(ctx context.Context, id string, now time.Time, check func(JoinToken) error, cert *Cert, audit ...AuditRecord) (JoinToken, error)

	// AddCert records a certificate issued to a node.
	AddCert(ctx context.Context, c Cert, audit ...AuditRecord) error
	// RevokeNode revokes every certificate issued to node so far, deletes
	// its unused join tokens (so that none made before the revocation can
	// admit it again) and records the revocation time in its node record,
	// in one transaction. It returns the node's certificates and the
	// number of tokens deleted.
	RevokeNode(ctx context.Context, node string, at time.Time, audit ...AuditRecord) ([]Cert, int, error)
	// RevokedCerts returns the revoked certificates that have not expired
	// at now (expired ones are refused anyway).
	RevokedCerts(ctx context.Context, now time.Time) ([]Cert, error)

	// Resources returns every policy resource.
	Resources(ctx context.Context) ([]Resource, error)
	// CommitPolicy stores a policy change and the rule sets it produced,
	// in one transaction.
	CommitPolicy(ctx context.Context, c PolicyCommit) error
	// LatestRuleSets returns the newest rule set of every node.
	LatestRuleSets(ctx context.Context) ([]RuleSetRecord, error)
	// RuleSet returns one version of a node's rule set (the store keeps
	// the last few), or ErrNotFound.
	RuleSet(ctx context.Context, node string, version uint64) (RuleSetRecord, error)

	// Nodes returns every node record.
	Nodes(ctx context.Context) ([]Node, error)
	// SaveNodes inserts or replaces node records.
	SaveNodes(ctx context.Context, nodes []Node) error

	EventStore
	AuditStore

	Close() error
}

// JoinToken is a stored join token.
type JoinToken struct {
	ID         string
	SecretHash string
	Node       string
	Created    time.Time
	Expires    time.Time
	Used       time.Time // zero until used
}

// AdminToken is a stored admin credential. The secret itself is never
// stored.
type AdminToken struct {
	ID         string
	SecretHash string
	// Name says what the token is for ("admin.conf" for the one the
	// controller writes there).
	Name    string
	Created time.Time
	Expires time.Time // zero: never
	Revoked time.Time // zero unless revoked
	// CreatedBy is the id of the admin token whose holder created this
	// one; empty for the controller's own.
	CreatedBy string
}

// Usable says whether the token may still be used at now: ErrTokenUsed or
// ErrTokenExpiry (wrapped, with the time) if not.
func (t JoinToken) Usable(now time.Time) error {
	if !t.Used.IsZero() {
		return fmt.Errorf("%w at %s", ErrTokenUsed, t.Used.Format(time.RFC3339))
	}
	if !now.Before(t.Expires) {
		return fmt.Errorf("%w at %s", ErrTokenExpiry, t.Expires.Format(time.RFC3339))
	}
	return nil
}

// Cert is a certificate issued to a node.
type Cert struct {
	Serial   string
	Node     string
	NotAfter time.Time
	Revoked  time.Time // zero unless revoked
}

// ResourceKey names a policy resource.
type ResourceKey struct {
	Kind string // policy.KindWorkload, ...
	Name string
}

// Resource is one policy resource, kept as the YAML document it was
// applied as.
type Resource struct {
	ResourceKey
	Document []byte
	Updated  time.Time
	// Source is "" for a resource applied through the API (egctl), or the
	// system it is mirrored from (SourceKubernetes), which alone changes
	// it.
	Source string
}

// SourceKubernetes marks resources mirrored from Kubernetes: pods as
// Workloads, eastguard.dev/v1 custom resources as themselves.
const SourceKubernetes = "kubernetes"

// RuleSetRecord is one version of a node's rule set.
type RuleSetRecord struct {
	Node    string
	Version uint64
	Hash    string
	// Data is the rule set, encoded by the caller (controller/policyrepo
	// stores the protobuf form, eastguard.v1.RuleSet), or the node's own
	// part of it when Shared is set.
	Data []byte
	// Shared, when set, is the key of a part of the rule set stored once
	// for every version that holds it (RuleSetPart): controller/policyrepo
	// stores a node's ipcache so, most of a large rule set, kept by most
	// changes (of ports, of rules) and alike on nodes with the same peers.
	// A commit gives the part in PolicyCommit.Parts unless a stored
	// version already refers to it; reads return its data in SharedData.
	Shared     string
	SharedData []byte
	Created    time.Time
}

// RuleSetPart is a part of rule sets stored once under Key, the hash of
// Data (the caller's: a key names one content). The store keeps it while
// a stored version refers to it (RuleSetRecord.Shared) and deletes it in
// the commit that prunes the last one (PartSweep).
type RuleSetPart struct {
	Key  string
	Data []byte
}

// PolicyCommit is one policy change: resources put and deleted, and the
// new rule sets of the nodes it changed.
type PolicyCommit struct {
	Put      []Resource
	Delete   []ResourceKey
	RuleSets []RuleSetRecord
	// Parts are the shared parts RuleSets refer to that may not be stored
	// yet; one already stored under its key is kept as it is. A rule set
	// referring to a part neither stored nor given fails the commit
	// (ErrNotFound).
	Parts []RuleSetPart
	// Audit records the change (one record per resource put or
	// deleted), written in its transaction.
	Audit []AuditRecord
}

// Node is what the controller knows of a node's agent.
type Node struct {
	Name           string
	AgentVersion   string
	Kernel         string
	Capabilities   []string
	DefaultMode    string
	AppliedVersion uint64
	AppliedHash    string
	AppliedAt      time.Time
	LastContact    time.Time
	LastError      string
	CertSerial     string
	CertExpiry     time.Time
	Joined         time.Time
	Revoked        time.Time
}

// KeepRuleSetVersions is how many versions of each node's rule set the
// store keeps: enough to send a delta to an agent a few versions behind.
const KeepRuleSetVersions = 8

// PartSweep is what a commit must sweep of the shared parts
// (RuleSetPart): the parts it gave and those of the versions it pruned,
// unless a version it adds refers to them, may have no version referring
// to them left; the stores delete those that have none.
type PartSweep struct {
	referenced map[string]bool
	candidates map[string]bool
}

// NewPartSweep starts c's sweep with the parts it gives.
func NewPartSweep(c PolicyCommit) *PartSweep {
	p := &PartSweep{referenced: make(map[string]bool), candidates: make(map[string]bool)}
	for _, rs := range c.RuleSets {
		if rs.Shared != "" {
			p.referenced[rs.Shared] = true
		}
	}
	for _, part := range c.Parts {
		p.Pruned([]string{part.Key}, nil)
	}
	return p
}

// Pruned adds the shared keys of the versions a delete pruned ("" for a
// version stored whole), as it returned them with err, which it returns.
func (p *PartSweep) Pruned(keys []string, err error) error {
	for _, k := range keys {
		if k != "" && !p.referenced[k] {
			p.candidates[k] = true
		}
	}
	return err
}

// Candidates are the keys whose parts may have no version referring to
// them left, in order.
func (p *PartSweep) Candidates() []string { return slices.Sorted(maps.Keys(p.candidates)) }
