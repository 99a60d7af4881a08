package payload

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries the HMAC signature of json deliveries.
const SignatureHeader = "X-Eastguard-Signature"

// DefaultTolerance is the age (either way, for clock skew) beyond which
// Verify refuses a signature when given no tolerance.
const DefaultTolerance = 5 * time.Minute

// Errors of Verify; receivers may branch on them (a stale timestamp can
// mean a replay, or a clock out of sync).
var (
	ErrSignatureMalformed = errors.New("signature header malformed")
	ErrSignatureMismatch  = errors.New("signature does not match the body")
	ErrSignatureExpired   = errors.New("signature timestamp outside the tolerance")
)

// Sign returns the X-Eastguard-Signature value for body sent at t:
// "t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<unix seconds>.<body>")>".
// The timestamp is inside the MAC so a captured request cannot be
// replayed later with a fresh timestamp.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks an X-Eastguard-Signature header against the raw request
// body: the timestamp must be within tolerance of now (tolerance <= 0
// means DefaultTolerance) and one of the v1 values must be the HMAC of
// "<t>.<body>". Several v1 values are accepted so a sender may sign with
// an old and a new secret during a rotation; unknown keys are ignored so
// later schemes can be added beside v1.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("%w: %q is not key=value", ErrSignatureMalformed, part)
		}
		switch k {
		case "t":
			if ts != "" {
				return fmt.Errorf("%w: two timestamps", ErrSignatureMalformed)
			}
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return fmt.Errorf("%w: v1 is not %d hex bytes", ErrSignatureMalformed, sha256.Size)
			}
			sigs = append(sigs, sig)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=<unix seconds>,v1=<hex>", ErrSignatureMalformed)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: t=%q is not unix seconds", ErrSignatureMalformed, ts)
	}
	// The MAC is checked before the age so an attacker learns nothing
	// about the secret from which error comes back, and a genuine old
	// request says "expired" rather than "mismatch".
	want := mac(secret, ts, body)
	matched := false
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			matched = true
		}
	}
	if !matched {
		return ErrSignatureMismatch
	}
	if age := now.Sub(time.Unix(sec, 0)); age > tolerance || age < -tolerance {
		return fmt.Errorf("%w: signed at %s, %s from now, tolerance %s", ErrSignatureExpired,
			time.Unix(sec, 0).UTC().Format(time.RFC3339), age.Round(time.Second), tolerance)
	}
	return nil
}
