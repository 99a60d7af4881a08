// Package flowingest takes the flow batches agents send and makes them
// stored flows and alerts: it checks each batch and each agent's rate
// limit, queues accepted batches for the single writer of the event store
// (batches of many agents share one transaction; the alert engine runs in
// it), acks each batch once it is stored, and applies retention (age and
// size) and the alert sweeps.
//
// Invariants: a batch is stored whole or not at all, and acked only once
// stored; only records with an end on the reporting node are stored (see
// owners.local: the others are dropped from the batch and counted, so a
// compromised node cannot report other nodes' traffic); a batch sent again after a lost ack is recognised by its spool
// position and acked without being stored twice; nothing an agent sends
// blocks its stream (refusals are answered at once with "retry later").
//
// It must not import agentapi or restapi: sessions hand it batches
// through Agent.Submit.
package flowingest
