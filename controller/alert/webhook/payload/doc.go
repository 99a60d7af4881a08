// Package payload owns what a webhook delivery sends: the three formats
// (json, slack, alertmanager) as pure functions of a Message, the HMAC
// signature of json deliveries (Sign, and Verify for Go receivers), and
// the headers receivers rely on. It documents the json schema and the
// signature for receivers.
//
// It must not import the deliverer (controller/alert/webhook) or egress,
// nor do I/O: it reads no secret, opens no connection and logs nothing,
// so what a receiver gets depends on the Message alone. Errors never
// contain a webhook URL (a Slack URL is its own secret).
//
// # Formats
//
// A Webhook's format says what each delivery posts to its URL:
//
//   - json: the document below, to the URL as is, signed when the webhook
//     has a secretFrom.
//   - slack: an incoming-webhook message {"text", "blocks"} with a headline
//     section and a details section (mrkdwn; every name coming from the
//     policy or the network is escaped, so a workload named
//     "<!channel>" cannot mention or link anything).
//   - alertmanager: a JSON array of one postableAlert (Alertmanager API v2)
//     posted to <url>/api/v2/alerts (a route prefix in the URL is kept; a
//     URL already ending in /api/v2/alerts is used as is). Labels are what
//     never changes during an alert's life (alertname = the AlertRule,
//     severity, source, destination, port (the first seen), protocol,
//     eastguard_alert_id), annotations the rest (portCount, and folded on
//     a summary alert, among them). While the alert is open endsAt is a few refresh
//     intervals ahead and the alert is re-posted ("refresh" deliveries), so
//     Alertmanager resolves it by itself if the controller goes away; once
//     resolved, endsAt is the resolution time.
//
// # The json document
//
// A json delivery's body is one object (schema version "eastguard.dev/v1";
// fields may be added within a version, none is removed or changes
// meaning; receivers must ignore fields they do not know). Go receivers
// may decode it into Payload.
//
//	{
//	  "version": "eastguard.dev/v1",
//	  "event": "firing",
//	  "deliveryId": 1234,
//	  "sentAt": "2026-05-01T12:02:00Z",
//	  "alert": {
//	    "id": 42,
//	    "rule": "unexpected-ssh",
//	    "severity": "critical",
//	    "state": "open",
//	    "count": 3,
//	    "source": {"name": "203.0.113.7", "workload": "", "address": "203.0.113.7", "labels": {}},
//	    "destination": {"name": "web-1", "workload": "web-1", "address": "10.10.0.11",
//	                    "labels": {"env": "prod", "role": "web"}},
//	    "port": 22,
//	    "ports": [22],
//	    "portCount": 1,
//	    "folded": 0,
//	    "protocol": "TCP",
//	    "verdict": "denied",
//	    "decidingRule": "default-deny",
//	    "node": "node-a",
//	    "firstSeen": "2026-05-01T12:00:00Z",
//	    "lastSeen": "2026-05-01T12:01:30.5Z",
//	    "url": "https://eastguard.example.com/#/alerts/42"
//	  }
//	}
//
// Times are strings, RFC 3339 in UTC, with fractional seconds only when
// there are any. Every field is always present.
//
//   - version (string): "eastguard.dev/v1".
//   - event (string): "firing" (the alert opened) or "resolved" (it
//     closed). Deliveries of one alert to one webhook are sent in order,
//     each after the previous one was delivered or given up.
//   - deliveryId (integer): the delivery's ID, the same on every attempt
//     and in the X-Eastguard-Delivery header: the key to deduplicate on.
//   - sentAt (time): when this attempt was made; the signature's t is its
//     Unix seconds.
//   - alert.id (integer): the alert's ID in the controller (GET
//     /api/v1/alerts, POST /api/v1/alerts/{id}/ack).
//   - alert.rule (string): the AlertRule that raised it
//     ("builtin-any-denied" for the built-in rule; "datapath-tampered" and
//     "agent-silent" for the built-in node alerts, whose source.name is
//     the node, destination.name what happened (a drift kind such as
//     "link-detached", or "silent"), verdict the outcome ("repaired",
//     "repair failed: ...", "not repaired (--repair=false)", "stream
//     closed"), decidingRule the detail, protocol "" and port 0).
//   - alert.severity (string): "info", "warning" or "critical".
//   - alert.state (string): "open", "acknowledged" or "resolved", as the
//     alert is when the attempt is made (a firing delivery retried late
//     may carry an alert resolved since).
//   - alert.count (integer): connection attempts (distinct 5-tuples) the
//     alert covers so far, over all its ports.
//   - alert.source, alert.destination (object): the two ends, each with
//     name (string: the workload, or the address for an unmanaged end),
//     workload (string: the workload's name, "" when unmanaged), address
//     (string: the IP address, IPv4 or IPv6) and labels (object of string
//     values: the workload's labels; {} when unmanaged, never null).
//   - alert.port (integer): the first destination port seen (0 for
//     ICMP). An alert covers every port of one rule, source, destination
//     and protocol within the window, so a port scan is one alert.
//   - alert.ports (list of integers): the first distinct destination
//     ports seen, in order, at most 64 of them (never empty: [port] for
//     an alert on one port).
//   - alert.portCount (integer): how many distinct destination ports the
//     alert covers so far (1 for one port; 2000 for a 2,000-port scan,
//     whose ports list shows the first 64).
//   - alert.folded (integer): 0, except on a rule's summary alert: once
//     a rule has its cap of live alerts (--alert-max-live-per-rule), the
//     new (source, destination, protocol) runs are folded into one
//     summary alert per rule, whose source and destination names are
//     "*" (workload and address "") and whose folded counts the runs it
//     stands for (its count, ports and times are theirs together).
//   - alert.protocol (string): "TCP", "UDP", "ICMP" or "ICMPv6".
//   - alert.verdict (string): the last matching flow's verdict: "denied",
//     "would-deny" (monitor mode) or "allowed".
//   - alert.decidingRule (string): the rule that decided it, "policy/rule"
//     or "default-deny".
//   - alert.node (string): the node that reported the last matching flow.
//   - alert.firstSeen, alert.lastSeen (time): the first and last matching
//     flow.
//   - alert.url (string): the alert's page on the dashboard; "" when the
//     controller has no dashboard URL configured.
//
// # Headers
//
// Every delivery is a POST with Content-Type application/json, User-Agent
// eastguard-controller, and:
//
//   - X-Eastguard-Delivery: the delivery ID (deliveryId in json bodies);
//   - X-Eastguard-Event: firing, resolved or refresh;
//   - X-Eastguard-Signature: on json deliveries of a webhook with a secret,
//     "t=<unix seconds>,v1=<hex>".
//
// # Signature
//
// v1 is the lowercase hex HMAC-SHA256, keyed with the secret, of the
// decimal timestamp t, a dot, and the raw body as received:
//
//	v1 = hex(HMAC-SHA256(secret, t + "." + body))
//
// The timestamp is inside the MAC, so a captured request cannot be
// replayed with a fresh one; receivers should refuse a t more than a few
// minutes from their clock. During a secret rotation the header may carry
// several v1 values: accept the request if any matches. Keys other than t
// and v1 are reserved for later schemes and are ignored. The secret comes
// from the environment variable or the file of secretFrom (one trailing
// newline of a file is not part of it); a file is read once and again
// when it changes, so a rotated file applies at the next attempt.
//
// A Go receiver can call Verify, which does all of the above. Without
// this package:
//
//	func verify(secret []byte, header string, body []byte) bool {
//		var t string
//		var sigs []string
//		for _, kv := range strings.Split(header, ",") {
//			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
//			switch k {
//			case "t":
//				t = v
//			case "v1":
//				sigs = append(sigs, v)
//			}
//		}
//		sec, err := strconv.ParseInt(t, 10, 64)
//		if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
//			return false
//		}
//		m := hmac.New(sha256.New, secret)
//		m.Write([]byte(t + "."))
//		m.Write(body)
//		want := m.Sum(nil)
//		for _, s := range sigs {
//			if got, err := hex.DecodeString(s); err == nil && hmac.Equal(got, want) {
//				return true
//			}
//		}
//		return false
//	}
//
// In a shell, with the body saved byte for byte in body.json and t taken
// from the header, this prints the v1 to compare:
//
//	{ printf '%s.' "$t"; cat body.json; } | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $NF}'
//
// For example the secret "s3cret", t=1700000000 and the body
// {"event":"firing"} give
// v1=7968948c97e4cc94cd4e1989daa839863ea993006a7ec58d3511c11c6181ca77.
package payload
