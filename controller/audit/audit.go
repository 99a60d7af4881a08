// Package audit is the controller's audit trail above the store: who is
// acting (the Actor a request carries in its context), the records of
// each action (actions, objects, the hashes of what changed), and the
// Recorder, which counts the records written, copies them to the
// --audit-log file (JSON lines, after the store's commit), prunes them
// after --audit-retention and checks their hash chain.
//
// The records themselves are written by the store, in the transaction of
// the change they record (controller/store's AuditStore); the packages
// that make changes (restapi, agentapi, policyrepo) build them here and
// hand them to the store with the change. Nothing in this package, nor
// anywhere in the controller, changes a stored record.
//
// It imports controller/store and controller/apiclient (the record's
// JSON form) only, never the packages that make changes.
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
)

// Actions.
const (
	PolicyApply       = "policy.apply"
	PolicyDelete      = "policy.delete"
	TokenCreate       = "token.create"
	TokenDelete       = "token.delete"
	AdminTokenCreate  = "admintoken.create"
	AdminTokenRevoke  = "admintoken.revoke"
	NodeJoin          = "node.join"
	NodeRenew         = "node.renew"
	NodeRevoke        = "node.revoke"
	AlertAcknowledge  = "alert.acknowledge"
	LoginSuccess      = "login.success"
	LoginFailure      = "login.failure"
	maxDetail         = 512
	maxField          = 256
	controllerActorID = "controller"
)

// Actor is who makes a change: a kind (store.ActorAdminToken, ...), its
// name within the kind and the network address the change came from.
type Actor struct {
	Kind   string
	ID     string
	Source string
}

type actorKey struct{}

// WithActor returns ctx carrying a: the changes made with it are
// recorded as a's. The admin API sets it once the caller is
// authenticated, the agent API once the node is, the Kubernetes source
// for its changes.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor ctx carries. A context without one is the
// controller's own (its first admin token, the rewrite of admin.conf):
// every path that serves a caller sets its actor before it changes
// anything.
func ActorFrom(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok && a.Kind != "" {
		return a
	}
	return Actor{Kind: store.ActorController, ID: controllerActorID}
}

// Record returns the record of action on object by ctx's actor at at;
// the caller sets Before and After where it has them.
func Record(ctx context.Context, at time.Time, action, object, detail string) store.AuditRecord {
	a := ActorFrom(ctx)
	return store.AuditRecord{Time: at.UTC(), ActorKind: a.Kind, Actor: clip(a.ID, maxField), Action: action,
		Object: clip(object, maxField), Source: clip(a.Source, maxField), Detail: clip(detail, maxDetail)}
}

// clip bounds what a caller controls (a claimed token id, a certificate
// subject) so that no record can be made large.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…" // never half a UTF-8 sequence
}

// Hash is the hex SHA-256 of an object's canonical form; "" for none
// (nil).
func Hash(canonical []byte) string {
	if canonical == nil {
		return ""
	}
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:])
}

// JoinTokenHash is the hash of a join token's canonical form: what it
// admits and until when, never its secret's hash nor its use (a join
// records that).
func JoinTokenHash(t store.JoinToken) string {
	return Hash(fmt.Appendf(nil, "join-token\x00%s\x00%s\x00%d\x00%d", t.ID, t.Node, nanos(t.Created), nanos(t.Expires)))
}

// AdminTokenHash is the hash of an admin token's canonical form, without
// its secret's hash.
func AdminTokenHash(t store.AdminToken) string {
	return Hash(fmt.Appendf(nil, "admin-token\x00%s\x00%s\x00%d\x00%d\x00%d\x00%s", t.ID, t.Name, nanos(t.Created), nanos(t.Expires),
		nanos(t.Revoked), t.CreatedBy))
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Object names.
func ResourceObject(k store.ResourceKey) string { return k.Kind + "/" + k.Name }
func NodeObject(node string) string             { return "node/" + node }
func JoinTokenObject(id string) string          { return "join-token/" + id }
func AdminTokenObject(id string) string         { return "admin-token/" + id }
func AlertObject(id int64) string               { return fmt.Sprintf("alert/%d", id) }

// View is a record's JSON form.
func View(r store.AuditRecord) apiclient.AuditRecord {
	return apiclient.AuditRecord{ID: r.ID, Time: r.Time.UTC(), ActorKind: r.ActorKind, Actor: r.Actor, Action: r.Action, Object: r.Object,
		Before: r.Before, After: r.After, Source: r.Source, Detail: r.Detail, Prev: r.Prev, Hash: r.Hash}
}
