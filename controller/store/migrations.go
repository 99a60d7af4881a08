package store

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
}
