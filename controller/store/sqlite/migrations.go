package sqlite

import (
	"context"
	"database/sql"
	"math"
)

// migrations are applied in order, each once, in a transaction; the
// database's user_version counts how many ran. Never edit a migration that
// has shipped: append a new one.
var migrations = []string{
	// 1: initial schema. Times are Unix nanoseconds, 0 for none.
	`
CREATE TABLE ca (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	cert_pem BLOB NOT NULL,
	key_pem  BLOB NOT NULL
);
CREATE TABLE admin_tokens (
	id          TEXT PRIMARY KEY,
	secret_hash TEXT NOT NULL,
	created     INTEGER NOT NULL
);
CREATE TABLE join_tokens (
	id          TEXT PRIMARY KEY,
	secret_hash TEXT NOT NULL,
	node        TEXT NOT NULL,
	created     INTEGER NOT NULL,
	expires     INTEGER NOT NULL,
	used        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE certs (
	serial    TEXT PRIMARY KEY,
	node      TEXT NOT NULL,
	not_after INTEGER NOT NULL,
	revoked   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX certs_node ON certs (node);
CREATE TABLE resources (
	kind     TEXT NOT NULL,
	name     TEXT NOT NULL,
	document BLOB NOT NULL,
	updated  INTEGER NOT NULL,
	PRIMARY KEY (kind, name)
);
CREATE TABLE rulesets (
	node    TEXT NOT NULL,
	version INTEGER NOT NULL,
	hash    TEXT NOT NULL,
	data    BLOB NOT NULL,
	created INTEGER NOT NULL,
	PRIMARY KEY (node, version)
);
CREATE TABLE nodes (
	name            TEXT PRIMARY KEY,
	agent_version   TEXT NOT NULL DEFAULT '',
	kernel          TEXT NOT NULL DEFAULT '',
	capabilities    TEXT NOT NULL DEFAULT '',
	default_mode    TEXT NOT NULL DEFAULT '',
	applied_version INTEGER NOT NULL DEFAULT 0,
	applied_hash    TEXT NOT NULL DEFAULT '',
	applied_at      INTEGER NOT NULL DEFAULT 0,
	last_contact    INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT NOT NULL DEFAULT '',
	cert_serial     TEXT NOT NULL DEFAULT '',
	cert_expiry     INTEGER NOT NULL DEFAULT 0,
	joined          INTEGER NOT NULL DEFAULT 0,
	revoked         INTEGER NOT NULL DEFAULT 0
);
`,
	// 2: admin tokens get a name, an optional expiry, a revocation time
	// and the token that created them. Every token before this one was
	// the controller's own, written to admin.conf.
	`
ALTER TABLE admin_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
UPDATE admin_tokens SET name = 'admin.conf';
`,
	// 3: resources get their source: '' for egctl and the API, or the
	// system the controller mirrors them from ('kubernetes'), which owns
	// them.
	`
ALTER TABLE resources ADD COLUMN source TEXT NOT NULL DEFAULT '';
`,
	// 4: the audit trail (store.AuditStore). IDs are given by the store
	// (the previous record's + 1, in the appending transaction), never
	// reused: the table's rows are only inserted, and deleted oldest
	// first by retention; the trigger refuses every UPDATE, whoever
	// issues it.
	`
CREATE TABLE audit (
	id          INTEGER PRIMARY KEY,
	time        INTEGER NOT NULL,
	actor_kind  TEXT NOT NULL,
	actor       TEXT NOT NULL,
	action      TEXT NOT NULL,
	object      TEXT NOT NULL,
	before_hash TEXT NOT NULL,
	after_hash  TEXT NOT NULL,
	source      TEXT NOT NULL,
	detail      TEXT NOT NULL,
	prev_hash   TEXT NOT NULL,
	hash        TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_action ON audit (action, id);
CREATE INDEX audit_object ON audit (object, id);
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
BEGIN
	SELECT RAISE(ABORT, 'audit records are append-only: they cannot be changed');
END;
`,
	// 5: rule sets' shared parts (store.RuleSetPart), stored once by key
	// for every version that refers to one (rulesets.shared; '' for a
	// version stored whole, as every earlier one is). A commit deletes
	// the parts it leaves unreferenced, found by the index (issue 19: at
	// 10,000 nodes, a commit rewrote every node's ipcache though none had
	// changed). No reference count: SQLite rewrites a row whole, blob
	// and all, on every update of it.
	`
CREATE TABLE ruleset_parts (
	key  TEXT PRIMARY KEY,
	data BLOB NOT NULL
);
ALTER TABLE rulesets ADD COLUMN shared TEXT NOT NULL DEFAULT '';
CREATE INDEX rulesets_shared ON rulesets (shared);
`,
}

// eventMigrations are the event database's (flows.db), versioned the same
// way.
var eventMigrations = []string{
	// 1: flows, spool positions, alerts, the webhook outbox. Times are
	// Unix nanoseconds, 0 for none; uint64 counters are stored as their
	// int64 bit pattern.
	`
CREATE TABLE flows (
	id           INTEGER PRIMARY KEY,
	time         INTEGER NOT NULL,
	node         TEXT NOT NULL,
	direction    INTEGER NOT NULL,
	protocol     TEXT NOT NULL,
	src_addr     TEXT NOT NULL,
	src_port     INTEGER NOT NULL,
	src_workload TEXT NOT NULL,
	src_identity INTEGER NOT NULL,
	dst_addr     TEXT NOT NULL,
	dst_port     INTEGER NOT NULL,
	dst_workload TEXT NOT NULL,
	dst_identity INTEGER NOT NULL,
	verdict      INTEGER NOT NULL,
	rule         TEXT NOT NULL,
	packets      INTEGER NOT NULL,
	bytes        INTEGER NOT NULL,
	first_seen   INTEGER NOT NULL,
	last_seen    INTEGER NOT NULL,
	icmp_type    INTEGER,
	icmp_code    INTEGER,
	reason       TEXT NOT NULL DEFAULT ''
);
-- The queries of egctl flows and the dashboard: newest first, filtered
-- by verdict, destination port, deciding rule or workload (either end).
CREATE INDEX flows_time ON flows (time);
CREATE INDEX flows_verdict ON flows (verdict, time);
CREATE INDEX flows_dst_port ON flows (dst_port, time);
CREATE INDEX flows_rule ON flows (rule, time);
CREATE INDEX flows_src_workload ON flows (src_workload, time);
CREATE INDEX flows_dst_workload ON flows (dst_workload, time);
CREATE TABLE flow_spools (
	node     TEXT NOT NULL,
	spool_id INTEGER NOT NULL,
	high     INTEGER NOT NULL,
	holes    TEXT NOT NULL DEFAULT '',
	updated  INTEGER NOT NULL,
	PRIMARY KEY (node, spool_id)
);
CREATE TABLE alerts (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	rule            TEXT NOT NULL,
	severity        TEXT NOT NULL,
	dedup_key       TEXT NOT NULL,
	state           TEXT NOT NULL,
	count           INTEGER NOT NULL,
	source          TEXT NOT NULL,
	destination     TEXT NOT NULL,
	src_workload    TEXT NOT NULL,
	dst_workload    TEXT NOT NULL,
	src_addr        TEXT NOT NULL,
	dst_addr        TEXT NOT NULL,
	src_labels      TEXT NOT NULL,
	dst_labels      TEXT NOT NULL,
	port            INTEGER NOT NULL,
	protocol        TEXT NOT NULL,
	verdict         TEXT NOT NULL,
	deciding_rule   TEXT NOT NULL,
	node            TEXT NOT NULL,
	first_seen      INTEGER NOT NULL,
	last_seen       INTEGER NOT NULL,
	window_ns       INTEGER NOT NULL,
	notify          TEXT NOT NULL,
	created         INTEGER NOT NULL,
	acknowledged_at INTEGER NOT NULL DEFAULT 0,
	resolved_at     INTEGER NOT NULL DEFAULT 0,
	resolved_by     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alerts_key ON alerts (dedup_key, state);
CREATE INDEX alerts_state ON alerts (state, last_seen);
CREATE INDEX alerts_last_seen ON alerts (last_seen);
CREATE TABLE deliveries (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	alert_id     INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
	webhook      TEXT NOT NULL,
	event        TEXT NOT NULL,
	state        TEXT NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL,
	created      INTEGER NOT NULL,
	last_error   TEXT NOT NULL DEFAULT '',
	finished     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt);
CREATE INDEX deliveries_alert ON deliveries (alert_id, webhook);
`, // 2: alert storms. An alert covers every port of one (rule, source,
	// destination, protocol): ports is the JSON sample of the first ports
	// seen, port_count how many distinct ones, port_set their bitmap
	// (8 KiB, NULL while the sample holds them all). folded counts the
	// (source, destination) pairs a rule's summary alert stands for once
	// the rule has its cap of live alerts. expires (last_seen + window)
	// and refreshed (when a re-post to Alertmanager was last considered)
	// let the sweep read only the alerts it has work for. Alerts live
	// from before keep their old per-port key and end by themselves.
	`
ALTER TABLE alerts ADD COLUMN ports TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN port_count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE alerts ADD COLUMN port_set BLOB;
ALTER TABLE alerts ADD COLUMN folded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN refreshed INTEGER NOT NULL DEFAULT 0;
UPDATE alerts SET ports = '[' || port || ']', expires = last_seen + window_ns, refreshed = created;
CREATE INDEX alerts_expires ON alerts (state, expires);
CREATE INDEX alerts_refreshed ON alerts (state, refreshed);
CREATE INDEX alerts_rule ON alerts (rule, state);
CREATE INDEX alerts_resolved ON alerts (state, resolved_at);
CREATE INDEX deliveries_finished ON deliveries (state, finished);
CREATE INDEX deliveries_webhook ON deliveries (webhook, state);
`, // 3: connection volume. Counts per direction from the source's point
	// of view (sent: src -> dst) and what the record reports (new,
	// active, closed). Rows from before are new-flow events, whose
	// packets all went src -> dst.
	`
ALTER TABLE flows ADD COLUMN packets_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN packets_received INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN bytes_received INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flows ADD COLUMN state TEXT NOT NULL DEFAULT 'new';
UPDATE flows SET packets_sent = packets, bytes_sent = bytes;
`, // 4: the dashboard. Who acknowledged an alert (the admin token's
	// name). The flow filters that had no index (node, protocol, an end's
	// address) get one, each ending in time so that newest-first pages
	// are read in order; the service map reads its range from a covering
	// index (time first, then the columns it groups and sums), so it
	// never touches the table (nor do the policy view's counts by rule).
	`
ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT NOT NULL DEFAULT '';
CREATE INDEX flows_node ON flows (node, time);
CREATE INDEX flows_protocol ON flows (protocol, time);
CREATE INDEX flows_src_addr ON flows (src_addr, time);
CREATE INDEX flows_dst_addr ON flows (dst_addr, time);
CREATE INDEX flows_map ON flows (time, src_workload, dst_workload, protocol, dst_port, verdict, state, packets, bytes, src_addr, dst_addr, rule);
`, // 5: the service map's rollup (issue 17): per bucket of each width of
	// rowcodec.EdgeSpans (span, in nanoseconds; bucket, its start) and
	// edge key (rowcodec.EdgeKey, in one column: its String; the ends'
	// workloads also apart, for FlowEdgesOf's filter), the sums
	// store.FlowEdge reports of the flows recorded in the bucket: flows
	// counts the new ones, packets and bytes the volume that counts
	// (int64 wrap-around, as Go sums), first_time and last_time the
	// earliest and latest record. Kept by the transactions that insert
	// flows (sqlite_events.go); FlowEdges reads whole buckets from it and
	// the flows of partial ones from flows_map. Retention deletes the rows
	// of every bucket up to the one of the latest flow it deleted and
	// moves flow_edges_from, the first bucket of each width the table
	// still holds, past it: FlowEdges reads what comes before from finer
	// buckets or the flows. Filled from the flows stored before it by
	// refillFlowEdges, in this migration's transaction.
	`
CREATE TABLE flow_edges (
	span         INTEGER NOT NULL,
	bucket       INTEGER NOT NULL,
	key          TEXT NOT NULL,
	src_workload TEXT NOT NULL,
	dst_workload TEXT NOT NULL,
	flows        INTEGER NOT NULL,
	packets      INTEGER NOT NULL,
	bytes        INTEGER NOT NULL,
	first_time   INTEGER NOT NULL,
	last_time    INTEGER NOT NULL,
	PRIMARY KEY (span, bucket, key)
) WITHOUT ROWID;
CREATE TABLE flow_edges_from (
	span   INTEGER PRIMARY KEY,
	bucket INTEGER NOT NULL
);
`,
}

// eventMigrationFills run after the event migration of their version
// (1-based), in its transaction: what SQL alone would get wrong (the
// rollup's wrap-around sums).
var eventMigrationFills = map[int]func(context.Context, *sql.Tx) error{
	5: func(ctx context.Context, tx *sql.Tx) error {
		return refillFlowEdges(ctx, tx, math.MinInt64, math.MaxInt64)
	},
}
