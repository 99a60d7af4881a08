// Package postgres is the PostgreSQL implementation of controller/store's
// interfaces (eastguard-controller --store postgres://...), for a
// controller whose state and flow history belong in a database its
// operators already run, and, later, for several controllers sharing it.
// It owns the schema and its migrations (migrations.go: append-only,
// versioned in eastguard_schema, one transaction each, a newer schema
// refused), all the SQL, the flows table's time partitions (made ahead and
// on demand, dropped by retention) and the sealing of the CA key.
//
// Control state and event data share one database. What is one
// transaction in the SQLite store is one here, correct with several
// controller processes on the database: a join token is consumed under
// its row lock (SELECT ... FOR UPDATE); policy commits, event
// transactions (flows, alerts, the webhook outbox) and partition changes
// each take an advisory transaction lock, so they run one at a time
// across processes as SQLite's single writer runs them; so do audit
// appends (lockAudit, the last lock any transaction takes), so that the
// audit trail's ids have no gaps and its hash chain no fork.
//
// Secrets: the CA private key is stored sealed with AES-256-GCM under a
// key read from a file (Config.CAKeyKey, --ca-key-encryption-key-file),
// never in clear; Open refuses a key that cannot unseal the stored one.
// The DSN's password is never logged (RedactDSN). Token secrets are only
// stored hashed.
//
// What the records mean, the sentinel errors and the logic that does not
// depend on an engine are controller/store's; this package keeps and
// reads them and decides nothing. It must not import any controller
// package other than controller/store and its internal packages, nor
// agent/...; only the process wiring (controller.Run) and tests open it.
package postgres
