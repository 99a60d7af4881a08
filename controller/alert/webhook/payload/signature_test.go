package payload_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/alert/webhook/payload"
)

// receiverSignature computes the v1 signature the way the package
// documentation tells receivers to, without the package's code:
// lowercase hex of HMAC-SHA256(secret, "<t>.<body>").
func receiverSignature(secret []byte, t string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	fmt.Fprintf(m, "%s.%s", t, body)
	return hex.EncodeToString(m.Sum(nil))
}

// parseSignature splits a header the way a receiver would.
func parseSignature(t *testing.T, header string) (ts string, v1 []string) {
	t.Helper()
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			t.Fatalf("signature header %q: %q is not key=value", header, part)
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			v1 = append(v1, v)
		}
	}
	return ts, v1
}

func TestSignMatchesDocumentedAlgorithm(t *testing.T) {
	secret := []byte("whsec_test")
	for _, tc := range []struct {
		name string
		at   time.Time
		body string
	}{
		{"json body", time.Unix(1700000000, 0), `{"version":"eastguard.dev/v1","event":"firing"}`},
		{"sub-second time signs whole seconds", time.Unix(1700000000, 999_999_999), `{}`},
		{"empty body", time.Unix(1, 0), ``},
		{"body with dots and newlines", time.Date(2026, 5, 1, 12, 0, 0, 0, time.FixedZone("X", 3600)), "a.b\n.c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := payload.Sign(secret, tc.at, []byte(tc.body))
			if !strings.HasPrefix(h, "t=") || strings.Count(h, ",") != 1 {
				t.Fatalf("header %q, want t=<ts>,v1=<hex>", h)
			}
			ts, v1 := parseSignature(t, h)
			if ts != strconv.FormatInt(tc.at.Unix(), 10) {
				t.Errorf("t=%s, want the unix seconds %d", ts, tc.at.Unix())
			}
			if want := receiverSignature(secret, ts, []byte(tc.body)); len(v1) != 1 || v1[0] != want {
				t.Errorf("v1=%v, want %s", v1, want)
			}
			if err := payload.Verify(secret, h, []byte(tc.body), tc.at, 0); err != nil {
				t.Errorf("Verify of Sign: %v", err)
			}
		})
	}
	// The package documentation's example, as computed by
	//   { printf '%s.' 1700000000; printf '%s' '{"event":"firing"}'; } | openssl dgst -sha256 -hmac s3cret
	const want = "t=1700000000,v1=7968948c97e4cc94cd4e1989daa839863ea993006a7ec58d3511c11c6181ca77"
	if got := payload.Sign([]byte("s3cret"), time.Unix(1700000000, 0), []byte(`{"event":"firing"}`)); got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	secret := []byte("new-secret")
	old := []byte("old-secret")
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"version":"eastguard.dev/v1","event":"firing","deliveryId":7}`)
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := receiverSignature(secret, ts, body)
	oldSig := receiverSignature(old, ts, body)
	at := func(d time.Duration) string { return payload.Sign(secret, now.Add(d), body) }

	tests := []struct {
		name      string
		secret    []byte
		header    string
		body      []byte
		tolerance time.Duration
		want      error // nil, or the sentinel errors.Is must find
	}{
		{"valid", secret, "t=" + ts + ",v1=" + sig, body, 0, nil},
		{"valid, space after the comma", secret, "t=" + ts + ", v1=" + sig, body, 0, nil},
		{"valid, v1 first", secret, "v1=" + sig + ",t=" + ts, body, 0, nil},
		{"unknown scheme ignored", secret, "t=" + ts + ",v0=abc,v2=zz,v1=" + sig, body, 0, nil},
		{"rotation: old and new, new secret", secret, "t=" + ts + ",v1=" + oldSig + ",v1=" + sig, body, 0, nil},
		{"rotation: old and new, old secret", old, "t=" + ts + ",v1=" + oldSig + ",v1=" + sig, body, 0, nil},
		{"rotation: neither matches", []byte("other"), "t=" + ts + ",v1=" + oldSig + ",v1=" + sig, body, 0, payload.ErrSignatureMismatch},
		{"wrong secret", old, "t=" + ts + ",v1=" + sig, body, 0, payload.ErrSignatureMismatch},
		{"body changed", secret, "t=" + ts + ",v1=" + sig, append([]byte(nil), append(body, ' ')...), 0, payload.ErrSignatureMismatch},
		{"timestamp changed", secret, "t=" + strconv.FormatInt(now.Unix()+1, 10) + ",v1=" + sig, body, 0, payload.ErrSignatureMismatch},
		{"uppercase hex accepted", secret, "t=" + ts + ",v1=" + strings.ToUpper(sig), body, 0, nil},
		{"empty header", secret, "", body, 0, payload.ErrSignatureMalformed},
		{"no key=value", secret, "garbage", body, 0, payload.ErrSignatureMalformed},
		{"no v1", secret, "t=" + ts, body, 0, payload.ErrSignatureMalformed},
		{"no t", secret, "v1=" + sig, body, 0, payload.ErrSignatureMalformed},
		{"two t", secret, "t=" + ts + ",t=" + ts + ",v1=" + sig, body, 0, payload.ErrSignatureMalformed},
		{"t not a number", secret, "t=yesterday,v1=" + sig, body, 0, payload.ErrSignatureMalformed},
		{"v1 not hex", secret, "t=" + ts + ",v1=" + strings.Repeat("z", 64), body, 0, payload.ErrSignatureMalformed},
		{"v1 too short", secret, "t=" + ts + ",v1=" + sig[:62], body, 0, payload.ErrSignatureMalformed},
		{"old, default tolerance", secret, at(-5*time.Minute - time.Second), body, 0, payload.ErrSignatureExpired},
		{"future, default tolerance", secret, at(5*time.Minute + time.Second), body, 0, payload.ErrSignatureExpired},
		{"old, within the default tolerance", secret, at(-5 * time.Minute), body, 0, nil},
		{"future, within the default tolerance", secret, at(5 * time.Minute), body, 0, nil},
		{"old, own tolerance", secret, at(-31 * time.Second), body, 30 * time.Second, payload.ErrSignatureExpired},
		{"future, own tolerance", secret, at(31 * time.Second), body, 30 * time.Second, payload.ErrSignatureExpired},
		{"old, within own tolerance", secret, at(-time.Hour), body, 2 * time.Hour, nil},
		{"old and wrong: mismatch first", old, at(-time.Hour), body, 0, payload.ErrSignatureMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := payload.Verify(tc.secret, tc.header, tc.body, now, tc.tolerance)
			switch {
			case tc.want == nil && err != nil:
				t.Errorf("Verify(%q) = %v, want nil", tc.header, err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("Verify(%q) = %v, want %v", tc.header, err, tc.want)
			}
		})
	}
}
