package postgres

import (
	"strconv"
	"strings"

	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// migrations are applied in order, each once, each in its own transaction
// (PostgreSQL's DDL is transactional: a failed migration leaves the schema
// as it was); eastguard_schema.version counts those applied. Never edit a
// migration that has shipped: append a new one. They follow the SQLite
// store's (controller/store/sqlite/migrations.go) in spirit: the same
// tables and columns, times as Unix nanoseconds (0 for none), uint64
// counters as their int64 bit pattern. Text columns compare and sort
// bytewise (COLLATE "C"), as SQLite's do, whatever the database's locale.
var migrations = []string{
	// 1: the whole schema: control state and event data in one database.
	`
CREATE TABLE ca (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	cert_pem BYTEA NOT NULL,
	-- The CA key, sealed with AES-256-GCM (cakey.go): never in clear.
	key_sealed BYTEA NOT NULL
);
CREATE TABLE admin_tokens (
	id          TEXT COLLATE "C" PRIMARY KEY,
	secret_hash TEXT COLLATE "C" NOT NULL,
	name        TEXT COLLATE "C" NOT NULL DEFAULT '',
	created     BIGINT NOT NULL,
	expires     BIGINT NOT NULL DEFAULT 0,
	revoked     BIGINT NOT NULL DEFAULT 0,
	created_by  TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE TABLE join_tokens (
	id          TEXT COLLATE "C" PRIMARY KEY,
	secret_hash TEXT COLLATE "C" NOT NULL,
	node        TEXT COLLATE "C" NOT NULL,
	created     BIGINT NOT NULL,
	expires     BIGINT NOT NULL,
	used        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX join_tokens_node ON join_tokens (node);
CREATE TABLE certs (
	serial    TEXT COLLATE "C" PRIMARY KEY,
	node      TEXT COLLATE "C" NOT NULL,
	not_after BIGINT NOT NULL,
	revoked   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX certs_node ON certs (node);
CREATE TABLE resources (
	kind     TEXT COLLATE "C" NOT NULL,
	name     TEXT COLLATE "C" NOT NULL,
	document BYTEA NOT NULL,
	updated  BIGINT NOT NULL,
	source   TEXT COLLATE "C" NOT NULL DEFAULT '',
	PRIMARY KEY (kind, name)
);
CREATE TABLE rulesets (
	node    TEXT COLLATE "C" NOT NULL,
	version BIGINT NOT NULL,
	hash    TEXT COLLATE "C" NOT NULL,
	data    BYTEA NOT NULL,
	created BIGINT NOT NULL,
	PRIMARY KEY (node, version)
);
CREATE TABLE nodes (
	name            TEXT COLLATE "C" PRIMARY KEY,
	agent_version   TEXT COLLATE "C" NOT NULL DEFAULT '',
	kernel          TEXT COLLATE "C" NOT NULL DEFAULT '',
	capabilities    TEXT COLLATE "C" NOT NULL DEFAULT '',
	default_mode    TEXT COLLATE "C" NOT NULL DEFAULT '',
	applied_version BIGINT NOT NULL DEFAULT 0,
	applied_hash    TEXT COLLATE "C" NOT NULL DEFAULT '',
	applied_at      BIGINT NOT NULL DEFAULT 0,
	last_contact    BIGINT NOT NULL DEFAULT 0,
	last_error      TEXT COLLATE "C" NOT NULL DEFAULT '',
	cert_serial     TEXT COLLATE "C" NOT NULL DEFAULT '',
	cert_expiry     BIGINT NOT NULL DEFAULT 0,
	joined          BIGINT NOT NULL DEFAULT 0,
	revoked         BIGINT NOT NULL DEFAULT 0
);

-- Flows: partitioned by time (range partitions of one day or hour,
-- flows_pYYYYMMDDHH, listed in flow_partitions; events.go makes them),
-- rows outside every partition in flows_default. Ids come from one
-- sequence, so they are unique across partitions.
CREATE SEQUENCE flows_id_seq;
CREATE TABLE flows (
	id               BIGINT NOT NULL DEFAULT nextval('flows_id_seq'),
	time             BIGINT NOT NULL,
	node             TEXT COLLATE "C" NOT NULL,
	direction        INTEGER NOT NULL,
	protocol         TEXT COLLATE "C" NOT NULL,
	src_addr         TEXT COLLATE "C" NOT NULL,
	src_port         INTEGER NOT NULL,
	src_workload     TEXT COLLATE "C" NOT NULL,
	src_identity     BIGINT NOT NULL,
	dst_addr         TEXT COLLATE "C" NOT NULL,
	dst_port         INTEGER NOT NULL,
	dst_workload     TEXT COLLATE "C" NOT NULL,
	dst_identity     BIGINT NOT NULL,
	verdict          INTEGER NOT NULL,
	rule             TEXT COLLATE "C" NOT NULL,
	packets          BIGINT NOT NULL,
	bytes            BIGINT NOT NULL,
	first_seen       BIGINT NOT NULL,
	last_seen        BIGINT NOT NULL,
	icmp_type        INTEGER,
	icmp_code        INTEGER,
	reason           TEXT COLLATE "C" NOT NULL DEFAULT '',
	packets_sent     BIGINT NOT NULL DEFAULT 0,
	packets_received BIGINT NOT NULL DEFAULT 0,
	bytes_sent       BIGINT NOT NULL DEFAULT 0,
	bytes_received   BIGINT NOT NULL DEFAULT 0,
	state            TEXT COLLATE "C" NOT NULL DEFAULT 'new'
) PARTITION BY RANGE (time);
CREATE TABLE flows_default PARTITION OF flows DEFAULT;
-- The queries of egctl flows and the dashboard, as in SQLite: newest
-- first, each filter's index ending in time; id for paging.
CREATE INDEX flows_id ON flows (id);
CREATE INDEX flows_time ON flows (time);
CREATE INDEX flows_verdict ON flows (verdict, time);
CREATE INDEX flows_dst_port ON flows (dst_port, time);
CREATE INDEX flows_rule ON flows (rule, time);
CREATE INDEX flows_src_workload ON flows (src_workload, time);
CREATE INDEX flows_dst_workload ON flows (dst_workload, time);
CREATE INDEX flows_node ON flows (node, time);
CREATE INDEX flows_protocol ON flows (protocol, time);
CREATE INDEX flows_src_addr ON flows (src_addr, time);
CREATE INDEX flows_dst_addr ON flows (dst_addr, time);
CREATE TABLE flow_partitions (
	name TEXT COLLATE "C" PRIMARY KEY,
	lo   BIGINT NOT NULL,
	hi   BIGINT NOT NULL
);
CREATE TABLE flow_spools (
	node     TEXT COLLATE "C" NOT NULL,
	spool_id BIGINT NOT NULL,
	high     BIGINT NOT NULL,
	holes    TEXT COLLATE "C" NOT NULL DEFAULT '',
	updated  BIGINT NOT NULL,
	-- Creation order (SQLite's rowid): an upsert keeps it.
	seq      BIGSERIAL NOT NULL,
	PRIMARY KEY (node, spool_id)
);
CREATE TABLE alerts (
	id              BIGSERIAL PRIMARY KEY,
	rule            TEXT COLLATE "C" NOT NULL,
	severity        TEXT COLLATE "C" NOT NULL,
	dedup_key       TEXT COLLATE "C" NOT NULL,
	state           TEXT COLLATE "C" NOT NULL,
	count           BIGINT NOT NULL,
	source          TEXT COLLATE "C" NOT NULL,
	destination     TEXT COLLATE "C" NOT NULL,
	src_workload    TEXT COLLATE "C" NOT NULL,
	dst_workload    TEXT COLLATE "C" NOT NULL,
	src_addr        TEXT COLLATE "C" NOT NULL,
	dst_addr        TEXT COLLATE "C" NOT NULL,
	src_labels      TEXT COLLATE "C" NOT NULL,
	dst_labels      TEXT COLLATE "C" NOT NULL,
	port            INTEGER NOT NULL,
	protocol        TEXT COLLATE "C" NOT NULL,
	verdict         TEXT COLLATE "C" NOT NULL,
	deciding_rule   TEXT COLLATE "C" NOT NULL,
	node            TEXT COLLATE "C" NOT NULL,
	first_seen      BIGINT NOT NULL,
	last_seen       BIGINT NOT NULL,
	window_ns       BIGINT NOT NULL,
	notify          TEXT COLLATE "C" NOT NULL,
	created         BIGINT NOT NULL,
	acknowledged_at BIGINT NOT NULL DEFAULT 0,
	resolved_at     BIGINT NOT NULL DEFAULT 0,
	resolved_by     TEXT COLLATE "C" NOT NULL DEFAULT '',
	ports           TEXT COLLATE "C" NOT NULL DEFAULT '',
	port_count      BIGINT NOT NULL DEFAULT 1,
	port_set        BYTEA,
	folded          BIGINT NOT NULL DEFAULT 0,
	expires         BIGINT NOT NULL DEFAULT 0,
	refreshed       BIGINT NOT NULL DEFAULT 0,
	acknowledged_by TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX alerts_key ON alerts (dedup_key, state);
CREATE INDEX alerts_state ON alerts (state, last_seen);
CREATE INDEX alerts_last_seen ON alerts (last_seen);
CREATE INDEX alerts_expires ON alerts (state, expires);
CREATE INDEX alerts_refreshed ON alerts (state, refreshed);
CREATE INDEX alerts_rule ON alerts (rule, state);
CREATE INDEX alerts_resolved ON alerts (state, resolved_at);
CREATE TABLE deliveries (
	id           BIGSERIAL PRIMARY KEY,
	alert_id     BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
	webhook      TEXT COLLATE "C" NOT NULL,
	event        TEXT COLLATE "C" NOT NULL,
	state        TEXT COLLATE "C" NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt BIGINT NOT NULL,
	created      BIGINT NOT NULL,
	last_error   TEXT COLLATE "C" NOT NULL DEFAULT '',
	finished     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt);
CREATE INDEX deliveries_alert ON deliveries (alert_id, webhook);
CREATE INDEX deliveries_finished ON deliveries (state, finished);
CREATE INDEX deliveries_webhook ON deliveries (webhook, state);
`,
	// 2: the audit trail (store.AuditStore), as the SQLite store's
	// migration 4. IDs are given by the store under lockAudit (the
	// previous record's + 1), never by a sequence, whose values a
	// rolled-back transaction would skip. The triggers refuse UPDATE and
	// TRUNCATE, whoever issues them (a role that owns the table can drop
	// a trigger: docs/SECURITY.md); DELETE stays for retention.
	`
CREATE TABLE audit (
	id          BIGINT PRIMARY KEY,
	time        BIGINT NOT NULL,
	actor_kind  TEXT COLLATE "C" NOT NULL,
	actor       TEXT COLLATE "C" NOT NULL,
	action      TEXT COLLATE "C" NOT NULL,
	object      TEXT COLLATE "C" NOT NULL,
	before_hash TEXT COLLATE "C" NOT NULL,
	after_hash  TEXT COLLATE "C" NOT NULL,
	source      TEXT COLLATE "C" NOT NULL,
	detail      TEXT COLLATE "C" NOT NULL,
	prev_hash   TEXT COLLATE "C" NOT NULL,
	hash        TEXT COLLATE "C" NOT NULL
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_action ON audit (action, id);
CREATE INDEX audit_object ON audit (object, id);
CREATE FUNCTION eastguard_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'audit records are append-only: they cannot be changed';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
	FOR EACH ROW EXECUTE FUNCTION eastguard_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
	FOR EACH STATEMENT EXECUTE FUNCTION eastguard_audit_append_only();
`,
	// 3: high availability (controller/leader). controller_leader is the
	// one row naming the controller that holds the leader lock (an
	// advisory lock on a dedicated session) and its term, which grows at
	// each change of leader; controllers lists every controller process
	// sharing the database, its role and the addresses it advertises,
	// refreshed while it runs (egctl status, the standbys' "not leader"
	// answers). Neither decides who leads: the lock does.
	`
CREATE TABLE controller_leader (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	instance TEXT COLLATE "C" NOT NULL,
	term     BIGINT NOT NULL,
	since    BIGINT NOT NULL
);
CREATE TABLE controllers (
	instance  TEXT COLLATE "C" PRIMARY KEY,
	role      TEXT COLLATE "C" NOT NULL,
	grpc      TEXT COLLATE "C" NOT NULL DEFAULT '',
	api       TEXT COLLATE "C" NOT NULL DEFAULT '',
	version   TEXT COLLATE "C" NOT NULL DEFAULT '',
	started   BIGINT NOT NULL,
	last_seen BIGINT NOT NULL
);
`,
	// 4: the flows' indexes, leaner for ingest (issue 19: every COPY row
	// updated all eleven btrees, most of the server's time per record).
	// The protocol has a handful of values: walking flows_time newest
	// first and filtering finds a page of them, as PostgreSQL does for
	// any filter without an index. The filters that pick few rows out of
	// many (workload, address, port, rule, node: a fleet has thousands
	// of nodes) keep theirs; the verdict's holds only the flows not allowed (the few a
	// query by verdict looks for: allowed ones are most flows, found
	// walking flows_time), so allowed flows, most of them, do not pay
	// for it. A partial index serves a query whose plan knows the
	// verdict asked for: ScanFlows sends its parameters with each query
	// (QueryExecModeExec), so that every plan is made for them. The id
	// and time btrees stay: both keys grow with the insertion order, so
	// their entries go to the rightmost page, the cheapest insertion
	// (a BRIN index on id was tried: paging's lookup of the newest ids,
	// not yet summarized, read the whole partition, 311 ms at 1,000,000
	// flows).
	// flow_count is the number of stored flows, kept by the transactions
	// that insert and delete them (under lockEvents), so that the size
	// check of every retention pass reads a row instead of counting
	// millions (COUNT(*) walks the whole table).
	`
DROP INDEX flows_protocol, flows_verdict;
CREATE INDEX flows_verdict ON flows (verdict, time) WHERE verdict <> 1;
CREATE TABLE flow_count (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	n  BIGINT NOT NULL
);
INSERT INTO flow_count SELECT 1, COUNT(*) FROM flows;
`,
	// 5: the service map's rollup (issue 17), as the SQLite store's
	// migration 5 but with the edge key's columns: per bucket of each
	// width of rowcodec.EdgeSpans (span, in nanoseconds; bucket, its
	// start) and edge key (src and dst: the addresses of ends no workload
	// names, '' otherwise), the sums store.FlowEdge reports of the flows
	// recorded in the bucket. packets and bytes are NUMERIC, as SUM over
	// BIGINT is: FlowEdges sums and casts them as it did the flows'. Kept
	// by the transactions that insert flows (events.go, under lockEvents);
	// retention deletes the rows of every bucket up to the one of the
	// latest flow it deleted and moves flow_edges_from past it; FlowEdges
	// reads whole buckets from it and the rest from the flows. Filled
	// here from the flows stored before it.
	`
CREATE TABLE flow_edges (
	span         BIGINT NOT NULL,
	bucket       BIGINT NOT NULL,
	src_workload TEXT COLLATE "C" NOT NULL,
	src          TEXT COLLATE "C" NOT NULL,
	dst_workload TEXT COLLATE "C" NOT NULL,
	dst          TEXT COLLATE "C" NOT NULL,
	protocol     TEXT COLLATE "C" NOT NULL,
	port         INTEGER NOT NULL,
	verdict      INTEGER NOT NULL,
	flows        BIGINT NOT NULL,
	packets      NUMERIC NOT NULL,
	bytes        NUMERIC NOT NULL,
	first_time   BIGINT NOT NULL,
	last_time    BIGINT NOT NULL,
	PRIMARY KEY (span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict)
);
CREATE TABLE flow_edges_from (
	span   BIGINT PRIMARY KEY,
	bucket BIGINT NOT NULL
);
INSERT INTO flow_edges ` + flowEdgesSelect("flows", "TRUE") + `;
`,
	// 6: the rollup filled apart from the inserts (issue 19: the upsert
	// of a fleet's batch, ~2,000 rows, halved the ingest). flow_edges
	// holds the sums of exactly the flows recorded before
	// flow_edges_rolled.upto (and after the horizon, flow_edges_from):
	// a background step (RollupFlowEdges, under lockEvents) sums the
	// flows of [upto, a later time) with one INSERT ... SELECT ... GROUP
	// BY and moves upto in the same transaction, so a crash leaves both
	// as they were; an insert adds to the rollup only its records older
	// than upto (sent late), as before; FlowEdges reads the minutes from
	// the one holding upto on from the flows. Every flow stored so far is
	// in the rollup (migration 5 and the inserts kept it), so upto starts
	// after the latest.
	`
CREATE TABLE flow_edges_rolled (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	upto BIGINT NOT NULL
);
INSERT INTO flow_edges_rolled SELECT 1, CASE WHEN MAX(time) IS NULL THEN -9223372036854775808
	WHEN MAX(time) = 9223372036854775807 THEN MAX(time) ELSE MAX(time) + 1 END FROM flows;
`,
	// 7: the flows' filters indexed by one BRIN index of bloom filters
	// (issue 19: the seven btrees left were most of the server's time a
	// record, each a descent to a random leaf per row). BRIN keeps one
	// summary per range of flowBRINPagesPerRange heap pages (about 500
	// flows), here a bloom filter per column of the values in the range:
	// a query reads the summaries, then only the ranges whose filter may
	// hold its value, and rechecks their rows. One index of seven
	// columns, not seven: a row appended costs one look at the range map
	// instead of seven, and a range is summarized in one read of its
	// pages (25% less server time a record than seven indexes). Each
	// filter is sized for flowBRINDistinct values a range (600 bytes,
	// 1% false positives at that count; seven fit a BRIN tuple's 8 KB).
	// A row appended to a range not yet summarized costs the index
	// nothing (a partition's first range is summarized, empty, when its
	// indexes are made: its rows update the summary as they come);
	// SummarizeFlowIndexes, at each of the ingester's housekeeping
	// passes, summarizes the new ranges, and autovacuum's vacuum of a
	// partition what it missed (a controller stopped before its pass).
	// (autosummarize would queue a request per new range for autovacuum,
	// whose list of 256 overflows at fleet rates, each overflow a line in
	// the server's log.) A range not yet summarized is read whole by
	// every filtered query: seconds of flows. The verdict's partial btree
	// stays (only flows not allowed pay for it; a filter of a column with
	// two values in most ranges would select most ranges); id and time
	// stay btrees (paging, newest first; migration 4).
	`
DROP INDEX flows_dst_port, flows_rule, flows_src_workload, flows_dst_workload, flows_node, flows_src_addr, flows_dst_addr;
CREATE INDEX flows_filters ON flows USING brin (
	dst_port int4_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	rule text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	src_workload text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	dst_workload text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	node text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	src_addr text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `),
	dst_addr text_bloom_ops(n_distinct_per_range = ` + flowBRINDistinct + `)
) WITH (pages_per_range = ` + flowBRINPagesPerRange + `);
`,
	// 8: rule sets' shared parts (store.RuleSetPart), as the SQLite
	// store's control migration 5: stored once by key for every version
	// that refers to one (rulesets.shared; '' for a version stored
	// whole), deleted by the commit that leaves one unreferenced (found
	// by the index).
	`
CREATE TABLE ruleset_parts (
	key  TEXT COLLATE "C" PRIMARY KEY,
	data BYTEA NOT NULL
);
ALTER TABLE rulesets ADD COLUMN shared TEXT COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX rulesets_shared ON rulesets (shared);
`,
}

// The flows' BRIN index (migration 7): the heap pages each summary
// covers (128 KB, about 500 flows), and the distinct values per range
// each column's bloom filter is sized for.
const (
	flowBRINPagesPerRange = "16"
	flowBRINDistinct      = "500"
)

// flowEdgesSelect is SQL for the rollup rows of the flows of table that
// match where: every width of rowcodec.EdgeSpans, each flow in the
// bucket starting at the multiple of the width at or before its time.
func flowEdgesSelect(table, where string) string {
	var spans []string
	for _, s := range rc.EdgeSpans {
		spans = append(spans, "("+strconv.FormatInt(s, 10)+"::BIGINT)")
	}
	return `(span, bucket, src_workload, src, dst_workload, dst, protocol, port, verdict, flows, packets, bytes, first_time, last_time)
SELECT l.span, f.time - ((f.time % l.span) + l.span) % l.span, src_workload, CASE WHEN src_workload = '' THEN src_addr ELSE '' END,
	dst_workload, CASE WHEN dst_workload = '' THEN dst_addr ELSE '' END, protocol, dst_port, verdict,
	COUNT(*) FILTER (WHERE state = 'new'),
	COALESCE(SUM(packets) FILTER (WHERE state = 'closed' OR (state = 'new' AND verdict <> ` + strconv.Itoa(int(ruleset.VerdictAllowed)) + `)), 0),
	COALESCE(SUM(bytes) FILTER (WHERE state = 'closed' OR (state = 'new' AND verdict <> ` + strconv.Itoa(int(ruleset.VerdictAllowed)) + `)), 0),
	MIN(time), MAX(time)
FROM ` + table + ` f CROSS JOIN (VALUES ` + strings.Join(spans, ", ") + `) l(span)
WHERE ` + where + `
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9`
}
