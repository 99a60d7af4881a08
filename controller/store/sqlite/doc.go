// Package sqlite is the SQLite implementation of controller/store's
// interfaces, the controller's default store. It owns the databases
// (Open, with a pure-Go driver: eastguard.db for the control plane's
// state, flows.db for the event data, both under the data directory),
// their schemas and migrations (migrations.go: append-only and numbered;
// a database's user_version counts those applied) and all the SQL.
//
// What the records mean, the sentinel errors and the logic that does not
// depend on an engine (SpoolPosition's holes) are controller/store's; this
// package only keeps and reads them, and decides nothing. It must not
// import any controller package other than controller/store (the store's
// callers import it, never the reverse), nor agent/...; only the process
// wiring (controller.Run) and tests open it.
//
// Secrets: the CA private key is stored in eastguard.db, unencrypted; the
// database files are created mode 0600 in a data directory Open creates
// mode 0700, and must be protected and backed up like the key they hold.
// Token secrets are only stored hashed.
package sqlite
