package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// The audit trail: who changed what, kept in the control database.
//
// Invariants every implementation keeps:
//   - Records are only appended. No method changes a stored record; the
//     only deletion is PruneAudit's, of the oldest whole records.
//   - IDs are 1, 2, 3, ... with no gaps, in the order records were
//     appended, also across processes sharing one store: the append
//     serialises on the table (see each implementation).
//   - Each record's Prev is the Hash of the record before it ("" for
//     record 1) and its Hash is AuditRecord.ComputeHash: an edit, an
//     insertion or a deletion in the middle breaks the chain
//     (VerifyAuditChain). Whoever can write the database can rebuild the
//     whole chain, though: it is tamper evidence against a careless edit
//     or a partial restore, not proof against the database's
//     administrator (docs/SECURITY.md).
//   - A change and its records commit in one transaction: the methods that
//     take audit records write them in the change's own transaction, so
//     a change without its record cannot be stored, nor a record
//     without its change.

// Actor kinds: who made a change.
const (
	// ActorAdminToken is a holder of an admin token (egctl, the API or a
	// dashboard session opened with the token); Actor is the token's id.
	ActorAdminToken = "admin-token"
	// ActorCertificate is a dashboard session opened with a client
	// certificate; Actor is the certificate's subject and fingerprint.
	ActorCertificate = "certificate"
	// ActorNode is an agent; Actor is its node name.
	ActorNode = "node"
	// ActorKubernetes is the Kubernetes source (custom resources and
	// pods); Actor is "kubernetes".
	ActorKubernetes = SourceKubernetes
	// ActorController is the controller itself (its admin.conf token);
	// Actor is "controller".
	ActorController = "controller"
	// ActorAnonymous is a caller that proved nothing (a failed login);
	// Actor is what it claimed, if anything.
	ActorAnonymous = "anonymous"
)

// AuditRecord is one entry of the audit trail.
type AuditRecord struct {
	// ID is set by the store: 1 for the first record ever, then +1.
	ID   uint64
	Time time.Time
	// ActorKind is one of the Actor... constants; Actor names the actor
	// within its kind.
	ActorKind string
	Actor     string
	// Action is what was done: "policy.apply", "node.join", ...
	Action string
	// Object is what it was done to: "Policy/shop", "node/node-a",
	// "join-token/ID", ...
	Object string
	// Before and After are the hex SHA-256 of the object's canonical form
	// before and after the change; empty where there is none (before a
	// creation, after a deletion, or for objects that have no stored
	// form, such as a login).
	Before string
	After  string
	// Source is the network address the change came from ("" when
	// none, e.g. the Kubernetes source).
	Source string
	// Detail says in a few words what changed.
	Detail string
	// Prev and Hash chain the records; set by the store.
	Prev string
	Hash string
}

// auditHashDomain separates the chain's hashes from any other SHA-256 of
// the same bytes.
const auditHashDomain = "eastguard-audit-v1"

// ComputeHash returns the record's chained hash: SHA-256 over Prev and
// every field but Hash, each length-prefixed so that no two different
// records encode alike. Times count as Unix nanoseconds (what the stores
// keep).
func (r *AuditRecord) ComputeHash() string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	put := func(s string) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	var t int64
	if !r.Time.IsZero() {
		t = r.Time.UnixNano()
	}
	for _, s := range []string{auditHashDomain, r.Prev, strconv.FormatUint(r.ID, 10), strconv.FormatInt(t, 10),
		r.ActorKind, r.Actor, r.Action, r.Object, r.Before, r.After, r.Source, r.Detail} {
		put(s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Chain sets the record's ID, Prev and Hash as the one after prev (nil:
// the first record ever). The stores call it inside the append's
// transaction.
func (r *AuditRecord) Chain(prev *AuditRecord) {
	r.ID, r.Prev = 1, ""
	if prev != nil {
		r.ID, r.Prev = prev.ID+1, prev.Hash
	}
	r.Hash = r.ComputeHash()
}

// Check says what is wrong with a record before it is stored: the
// fields a reader relies on must be there.
func (r *AuditRecord) Check() error {
	switch {
	case r.Time.IsZero():
		return fmt.Errorf("audit record %s %s: no time", r.Action, r.Object)
	case r.ActorKind == "":
		return fmt.Errorf("audit record %s %s: no actor", r.Action, r.Object)
	case r.Action == "":
		return fmt.Errorf("audit record of %s: no action", r.Object)
	}
	return nil
}

// AuditChainError is a break in the audit chain: the record at ID does
// not follow the one before it, or its hash is not its own.
type AuditChainError struct {
	ID     uint64
	Reason string
}

func (e *AuditChainError) Error() string {
	return fmt.Sprintf("audit record %d: %s", e.ID, e.Reason)
}

// VerifyAuditChain checks records, oldest first and consecutive, as one
// piece of the chain: each record's hash is its own, each follows the one
// before (ID + 1, Prev = its Hash). prev is the record before the first
// (nil: the first is checked against nothing before it, as after a
// retention prune, unless its ID is 1, whose Prev must be empty). It
// returns the first break, an *AuditChainError.
func VerifyAuditChain(prev *AuditRecord, records []AuditRecord) error {
	for i := range records {
		r := &records[i]
		switch {
		case prev != nil && r.ID != prev.ID+1:
			return &AuditChainError{ID: r.ID, Reason: fmt.Sprintf("follows record %d: records are missing or were inserted", prev.ID)}
		case prev != nil && r.Prev != prev.Hash:
			return &AuditChainError{ID: r.ID, Reason: fmt.Sprintf("its previous hash is not record %d's: that record was changed", prev.ID)}
		case prev == nil && r.ID == 1 && r.Prev != "":
			return &AuditChainError{ID: r.ID, Reason: "the first record has a previous hash"}
		case r.Hash != r.ComputeHash():
			return &AuditChainError{ID: r.ID, Reason: "its hash does not match its content: it was changed"}
		}
		prev = r
	}
	return nil
}

// AuditQuery selects audit records. Zero fields select everything.
type AuditQuery struct {
	// Since and Until bound Time: Since <= Time < Until.
	Since, Until time.Time
	// Actor matches the actor's name exactly (a token id, a node name,
	// "kubernetes"); ActorKind its kind.
	Actor, ActorKind string
	// Action matches exactly, or, ending in ".", every action it begins
	// ("policy." for policy.apply and policy.delete).
	Action string
	// Object matches exactly, or, ending in "/", every object it begins
	// ("Policy/" for every policy).
	Object string
	// BeforeID and AfterID page: only records with ID < BeforeID (when
	// not 0) and ID > AfterID.
	BeforeID, AfterID uint64
	// OldestFirst orders by ascending ID; the default is newest first.
	OldestFirst bool
	// Limit bounds the answer; 0 means no bound.
	Limit int
}

// AuditStore keeps the audit trail. The Store's changes that are audited
// take their records as a last, variadic argument and write them in the
// change's transaction (see Store); AppendAudit is for events that
// change nothing else in the control database (a login, an alert's
// acknowledgement, whose alert lives in the event data).
type AuditStore interface {
	// AppendAudit appends records, in one transaction, and returns them
	// with ID, Prev and Hash set.
	AppendAudit(ctx context.Context, recs ...AuditRecord) ([]AuditRecord, error)
	// AuditRecords returns the records q selects.
	AuditRecords(ctx context.Context, q AuditQuery) ([]AuditRecord, error)
	// LastAudit returns the newest record, or ErrNotFound when there is
	// none.
	LastAudit(ctx context.Context) (AuditRecord, error)
	// PruneAudit deletes the records older than before, oldest first,
	// never one newer than a record it keeps (the trail stays one
	// consecutive piece of the chain), and returns how many.
	PruneAudit(ctx context.Context, before time.Time) (int64, error)
}
