// Package egress owns where a webhook delivery may go and with which
// secret: the dialer that refuses unspecified, multicast, broadcast and
// the controller's own addresses always, loopback and link-local (cloud
// metadata) unless --webhook-allow-private, after DNS and before connect
// (Destinations, NewClient: no proxy, no redirects); the reader of HMAC
// secrets from EASTGUARD_ variables or regular files under --secrets-dir
// (Secrets); and the checks the controller makes of a policy change at
// apply time with the same two (CheckPolicy, the policy repository's
// Check hook).
//
// It must not import the deliverer (controller/alert/webhook) or payload:
// the deliverer and the controller import it. Errors name a variable, a
// file or an address, never a secret's content or a webhook URL.
package egress
