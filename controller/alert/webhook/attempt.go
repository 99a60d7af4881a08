package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
)

// Outcomes reported to Config.Outcome.
const (
	OutcomeDelivered = "delivered"
	OutcomeRetry     = "retry"
	OutcomeGaveUp    = "gave_up"
)

// userAgent is the User-Agent of every delivery (the other headers are
// payload's: DeliveryHeader, EventHeader, SignatureHeader).
const userAgent = "eastguard-controller"

// Limits on reading a receiver's answer: enough of the body for
// LastError, and enough drained for the connection to be reused.
const (
	excerptBytes = 200
	drainBytes   = 64 << 10
)

// storeWriteTimeout bounds recording an outcome. The write uses a context
// detached from Run's, so an attempt that completed while the controller
// was stopping is still recorded (and not sent again).
const storeWriteTimeout = 5 * time.Second

// result is what an attempt did, for the scheduler.
type result struct {
	d       store.Delivery
	outcome string // OutcomeDelivered, OutcomeRetry, OutcomeGaveUp, or "" (not an attempt)
	// failing says the failure is the webhook's (receiver down or
	// refusing, secret unreadable), not this delivery's: the scheduler
	// holds the webhook's other deliveries back for a while.
	failing bool
	err     string
	// retryAfter is how long the receiver asked not to be called again
	// (Retry-After, capped at MaxBackoff): it is about the receiver, not
	// this delivery, so the scheduler holds the whole webhook that long.
	retryAfter time.Duration
}

// attempt makes one attempt at a delivery and records its outcome.
func (d *Deliverer) attempt(ctx context.Context, dl store.Delivery) result {
	hook, ok := d.cfg.Webhooks(dl.Webhook)
	if !ok {
		return d.finish(ctx, dl, store.DeliveryGaveUp, fmt.Sprintf("webhook %q is no longer in the policy", dl.Webhook), false)
	}
	if dl.Event == store.EventRefresh && hook.Format != policy.FormatAlertmanager {
		// Refresh only keeps Alertmanager from forgetting an open alert;
		// other receivers were told once. Nothing is sent.
		return d.finish(ctx, dl, store.DeliveryDelivered, "", false)
	}
	var alert store.Alert
	err := d.cfg.Store.EventTx(ctx, func(tx store.EventTx) error {
		var err error
		alert, err = tx.Alert(dl.AlertID)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return d.finish(ctx, dl, store.DeliveryGaveUp, fmt.Sprintf("alert %d no longer exists", dl.AlertID), false)
	case err != nil && ctx.Err() != nil:
		return result{d: dl} // shutting down; nothing recorded
	case err != nil:
		dl.Attempts++
		return d.retry(ctx, dl, "read alert: "+err.Error(), false, 0)
	}
	msg := payload.Message{DeliveryID: dl.ID, Event: dl.Event, Alert: alert, SentAt: d.cfg.Now(),
		Link: payload.AlertLink(d.cfg.DashboardURL, alert.ID)}
	dl.Attempts++
	req, err := d.request(ctx, hook, msg)
	if err != nil {
		return d.retry(ctx, dl, err.Error(), true, 0)
	}
	status, excerpt, retryAfter, err := d.send(ctx, req)
	switch {
	case err != nil && ctx.Err() != nil:
		// Shutting down: not the receiver's fault, and not recorded, so
		// the next run tries again from where this one was.
		return result{d: dl}
	case err != nil:
		return d.retry(ctx, dl, err.Error(), true, 0)
	case status >= 200 && status <= 299:
		return d.finish(ctx, dl, store.DeliveryDelivered, dl.LastError, false)
	default:
		// Every other status is retried, 4xx included: a receiver
		// misconfigured now (wrong path, auth, schema) and fixed within
		// GiveUpAfter still gets the alert, and the hold on a failing
		// webhook keeps the retries from hammering it.
		msg := fmt.Sprintf("HTTP %d %s", status, http.StatusText(status))
		if excerpt != "" {
			msg += ": " + excerpt
		}
		return d.retry(ctx, dl, msg, true, retryAfter)
	}
}

// request builds the HTTP request of a delivery in the webhook's format.
func (d *Deliverer) request(ctx context.Context, hook policy.Webhook, m payload.Message) (*http.Request, error) {
	target := hook.URL
	var body []byte
	var err error
	var sig string
	switch hook.Format {
	case policy.FormatJSON, "":
		if body, err = payload.EncodeJSON(m); err != nil {
			return nil, err
		}
		// Only json deliveries are signed (docs/POLICY.md): Slack and
		// Alertmanager do not check a signature, and an unreadable
		// secret must not hold their deliveries back.
		if hook.SecretFrom != nil {
			secret, err := d.cfg.Secrets.Read(hook.SecretFrom)
			if err != nil {
				return nil, err
			}
			sig = payload.Sign(secret, m.SentAt, body)
		}
	case policy.FormatSlack:
		if body, err = payload.EncodeSlack(m); err != nil {
			return nil, err
		}
	case policy.FormatAlertmanager:
		if body, err = payload.EncodeAlertmanager(m, d.cfg.AlertmanagerResolveAfter); err != nil {
			return nil, err
		}
		if target, err = payload.AlertmanagerURL(hook.URL); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown webhook format %q", hook.Format)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("request: %w", payload.Redact(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(payload.DeliveryHeader, strconv.FormatInt(m.DeliveryID, 10))
	req.Header.Set(payload.EventHeader, m.Event)
	if sig != "" {
		req.Header.Set(payload.SignatureHeader, sig)
	}
	return req, nil
}

// send posts req within the attempt timeout and returns the status, a
// printable excerpt of the body, and the Retry-After the receiver asked
// for (0 if none). Errors never contain the URL: Slack's carries its
// secret.
func (d *Deliverer) send(ctx context.Context, req *http.Request) (int, string, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	resp, err := d.cfg.Client.Do(req.WithContext(actx))
	if err != nil {
		return 0, "", 0, d.transportError(actx, err)
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, excerptBytes+1))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	return resp.StatusCode, excerpt(head), d.retryAfter(resp.Header.Get("Retry-After")), nil
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date
// (RFC 9110, 10.2.3); 0 when absent, past or malformed.
func (d *Deliverer) retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		// Bounded before the multiplication so a huge value cannot
		// overflow into a short (or negative) wait; retry caps it at
		// MaxBackoff anyway.
		return time.Duration(min(max(s, 0), maxRetryAfter)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(d.cfg.Now()), 0)
	}
	return 0
}

// maxRetryAfter bounds a Retry-After in seconds before it is converted
// (about 68 years: far above any MaxBackoff).
const maxRetryAfter = 1 << 31

func (d *Deliverer) transportError(actx context.Context, err error) error {
	var ne net.Error
	if errors.Is(actx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("POST timed out after %s", d.cfg.Timeout)
	}
	return fmt.Errorf("POST: %w", payload.Redact(err))
}

// excerpt makes the start of a response body fit for one line of
// LastError: valid UTF-8, control characters and runs of space folded.
func excerpt(b []byte) string {
	cut := len(b) > excerptBytes
	if cut {
		b = b[:excerptBytes]
	}
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }), " ")
	if cut && s != "" {
		s += "…"
	}
	return s
}

// retry records a failed attempt: pending with a backoff, or given up
// once GiveUpAfter has passed since the delivery was queued. The next
// attempt is never later than that deadline, so the last try happens at
// it. retryAfter, when the receiver sent one, lengthens the backoff.
func (d *Deliverer) retry(ctx context.Context, dl store.Delivery, msg string, failing bool, retryAfter time.Duration) result {
	now := d.cfg.Now()
	deadline := dl.Created.Add(d.cfg.GiveUpAfter)
	if !now.Before(deadline) {
		return d.finish(ctx, dl, store.DeliveryGaveUp, msg, failing)
	}
	wait := d.backoff(dl.Attempts)
	retryAfter = min(retryAfter, d.cfg.MaxBackoff)
	if retryAfter > wait {
		wait = retryAfter
	}
	dl.NextAttempt = now.Add(wait)
	if dl.NextAttempt.After(deadline) {
		dl.NextAttempt = deadline
	}
	dl.LastError = msg
	d.record(ctx, dl)
	d.log.Warn("webhook delivery failed, will retry", zap.String("webhook", dl.Webhook),
		zap.Int64("alert-id", dl.AlertID), zap.Int64("delivery-id", dl.ID), zap.Int("attempts", dl.Attempts),
		zap.Time("next-attempt", dl.NextAttempt), zap.String("error", msg))
	d.outcome(dl.Webhook, OutcomeRetry)
	return result{d: dl, outcome: OutcomeRetry, failing: failing, err: msg, retryAfter: retryAfter}
}

// finish records a delivery as delivered or given up. lastError is kept
// on a delivered one too: it says why earlier attempts failed.
func (d *Deliverer) finish(ctx context.Context, dl store.Delivery, state, lastError string, failing bool) result {
	dl.State, dl.Finished, dl.LastError = state, d.cfg.Now(), lastError
	d.record(ctx, dl)
	r := result{d: dl, failing: failing, err: lastError}
	fields := []zap.Field{zap.String("webhook", dl.Webhook), zap.Int64("alert-id", dl.AlertID),
		zap.Int64("delivery-id", dl.ID), zap.String("event", dl.Event), zap.Int("attempts", dl.Attempts)}
	switch {
	case state == store.DeliveryGaveUp:
		r.outcome = OutcomeGaveUp
		d.log.Error("webhook delivery given up", append(fields, zap.Time("created", dl.Created),
			zap.String("error", lastError))...)
		d.outcome(dl.Webhook, OutcomeGaveUp)
	case dl.Attempts == 0:
		// Marked delivered without a request (a refresh to a receiver
		// that does not need one): not an attempt, no outcome.
		d.log.Debug("webhook delivery needs no request", fields...)
	default:
		r.outcome = OutcomeDelivered
		d.log.Debug("webhook delivery delivered", fields...)
		d.outcome(dl.Webhook, OutcomeDelivered)
	}
	return r
}

// record writes a delivery's new state, even while Run is stopping.
func (d *Deliverer) record(ctx context.Context, dl store.Delivery) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeWriteTimeout)
	defer cancel()
	if err := d.cfg.Store.UpdateDelivery(wctx, dl); err != nil {
		// The delivery stays pending as it was and is tried again: at
		// least once, never lost.
		d.log.Error("record webhook delivery outcome", zap.String("webhook", dl.Webhook),
			zap.Int64("delivery-id", dl.ID), zap.String("state", dl.State), zap.Error(err))
	}
}

func (d *Deliverer) outcome(webhook, outcome string) {
	if d.cfg.Outcome != nil {
		d.cfg.Outcome(webhook, outcome)
	}
}
