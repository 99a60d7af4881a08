// Package webhook delivers alerts to the Webhooks of the policy (docs/POLICY.md,
// "AlertRule and Webhook"): it sends what the alert engine queued in the
// store's outbox (the deliveries table) in one of three formats, retries
// what fails, and records every delivery's outcome in the store.
//
// What it must not do:
//   - block or slow anything else: the alert engine only queues deliveries
//     in its own transaction and kicks the Deliverer; a slow or dead
//     receiver holds at most half of the attempt slots, and a failing one
//     has its other deliveries held back, so the other webhooks' deliveries
//     go on;
//   - lose a delivery: the outbox is in the store, so deliveries queued
//     while a receiver is down, or while the controller is stopped, are
//     sent by the next run;
//   - run twice on one store: a Deliverer is the only reader of pending
//     deliveries and the only writer of their outcomes;
//   - follow redirects (the alert and its signature would go wherever a
//     receiver points), or put a webhook URL in an error or a log line (a
//     Slack URL is its own secret);
//   - sign with an empty secret, or send a json delivery unsigned when its
//     secret cannot be read (it is retried instead);
//   - connect where a policy author should not reach through it: the
//     dialer (egress.NewClient, egress.Destinations) checks the address it connects to,
//     after DNS, and refuses unspecified, multicast and broadcast
//     addresses and the controller's own listeners always, loopback and
//     link-local (cloud metadata) unless --webhook-allow-private; it uses
//     no proxy;
//   - read a secret from anywhere but an EASTGUARD_ variable or a regular
//     file of at most egress.MaxSecretBytes under --secrets-dir (egress.Secrets), or
//     read a file again before it changed;
//   - send more than Config.Rate deliveries a second to one webhook
//     (burst Config.Burst): the rest wait in the outbox, pending.
//
// What is sent (the three formats, the json schema receivers rely on, the
// headers and the HMAC signature, with receiver examples in Go and shell)
// is package payload's: go doc ./controller/alert/webhook/payload. Where
// a delivery may connect and which secret it signs with (the dialer, the
// secrets under --secrets-dir, and the checks made when a policy is
// applied) is package egress's. This package owns the rest: the outbox
// reader, the attempts, retries, backoff and scheduling. It imports both;
// neither imports it.
//
// # Refresh deliveries
//
// Refresh deliveries exist for Alertmanager only (payload's alertmanager
// format re-posts an open alert so Alertmanager keeps it): to json and slack
// webhooks they are recorded as delivered without a request.
//
// # Retries and giving up
//
// A delivery is delivered when the receiver answers 2xx. Anything else is
// retried: connection errors, attempts past the timeout (Config.Timeout,
// connection and answer included), every other status, 3xx and 4xx
// included (a receiver misconfigured now and fixed later still gets the
// alert). The wait before the next attempt is "full jitter" exponential
// backoff: uniform between MinBackoff and a ceiling that doubles with each
// attempt up to MaxBackoff; a Retry-After (seconds or an HTTP date) longer
// than that is honoured up to MaxBackoff, for the whole webhook. After a
// failure the webhook's other deliveries are held back and the webhook is
// tried again with one probe, so a dead receiver costs one attempt per
// backoff period, not one per delivery. A delivery still failing
// GiveUpAfter after it was queued (default 24h) is given up: recorded as
// gave-up with its last error, and logged. Config.Outcome is told every
// attempt's outcome: delivered, retry or gave_up.
//
// # At least once
//
// A delivery is recorded only after its attempt completes. If the
// controller stops, or the store cannot be written, after the receiver
// got a request but before the outcome is recorded, the same delivery is
// sent again (same deliveryId, X-Eastguard-Delivery and alert; new sentAt
// and signature). Receivers must deduplicate on deliveryId and answer 2xx
// to a delivery they already have.
package webhook
