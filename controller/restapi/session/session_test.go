package session

import (
	"errors"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// TestSessionsBounded: at the bound the oldest session ends; the others
// stay.
func TestSessionsBounded(t *testing.T) {
	c := &clock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := New(Config{Now: c.now, MaxSessions: 3})
	var cookies []string
	for i := range 5 {
		c.t = c.t.Add(time.Second)
		cookie, _, err := st.Create("tok", "alice")
		if err != nil {
			t.Fatal(err)
		}
		cookies = append(cookies, cookie)
		if st.Len() > 3 {
			t.Fatalf("after %d logins %d sessions, bound 3", i+1, st.Len())
		}
	}
	for i, cookie := range cookies {
		_, err := st.Lookup(cookie)
		if (err == nil) != (i >= 2) {
			t.Errorf("session %d: %v (the two oldest must have ended, the rest stay)", i, err)
		}
	}
}

// TestSessionExpiryAndEnd: a session expires at its TTL, ends by End and
// by EndToken of its admin token only; CSRF tokens compare exactly.
func TestSessionExpiryAndEnd(t *testing.T) {
	c := &clock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := New(Config{Now: c.now, TTL: time.Hour})
	a, sa, _ := st.Create("tok-a", "alice")
	b, _, _ := st.Create("tok-b", "bob")
	b2, _, _ := st.Create("tok-b", "bob")
	if sa.CSRF == "" || sa.CheckCSRF("") || sa.CheckCSRF(sa.CSRF+"x") || !sa.CheckCSRF(sa.CSRF) {
		t.Errorf("CSRF check of %q", sa.CSRF)
	}
	if n := st.EndToken("tok-b"); n != 2 {
		t.Errorf("EndToken ended %d, want 2", n)
	}
	for _, ck := range []string{b, b2} {
		if _, err := st.Lookup(ck); !errors.Is(err, ErrNoSession) {
			t.Errorf("a session of an ended token: %v", err)
		}
	}
	c.t = c.t.Add(time.Hour - time.Second)
	if _, err := st.Lookup(a); err != nil {
		t.Errorf("before its expiry: %v", err)
	}
	c.t = c.t.Add(time.Second)
	if _, err := st.Lookup(a); !errors.Is(err, ErrNoSession) {
		t.Errorf("at its expiry: %v, want ErrNoSession", err)
	}
	c2, _, _ := st.Create("tok-a", "alice")
	st.End(c2)
	if _, err := st.Lookup(c2); !errors.Is(err, ErrNoSession) {
		t.Errorf("after End: %v", err)
	}
	if _, err := st.Lookup(""); !errors.Is(err, ErrNoSession) {
		t.Errorf("empty cookie: %v", err)
	}
}

// TestLoginRate: a source gets its burst, then waits; another source is
// not held back by it.
func TestLoginRate(t *testing.T) {
	c := &clock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := New(Config{Now: c.now})
	for i := range DefaultLoginBurst {
		if !st.AllowLogin("192.0.2.1:4000") {
			t.Fatalf("attempt %d refused within the burst", i)
		}
	}
	if st.AllowLogin("192.0.2.1:4001") {
		t.Error("attempt beyond the burst allowed")
	}
	if !st.AllowLogin("192.0.2.2:4000") {
		t.Error("another source held back")
	}
	// An IPv6 source is its /64.
	for range DefaultLoginBurst {
		st.AllowLogin("[2001:db8::1]:1")
	}
	if st.AllowLogin("[2001:db8::2]:1") {
		t.Error("another address of the same /64 allowed beyond the burst")
	}
	c.t = c.t.Add(7 * time.Second)
	if !st.AllowLogin("192.0.2.1:4000") {
		t.Error("refused after waiting")
	}
}

// TestBoundSessionEndsWithItsCertificate: a certificate's session keeps
// the fingerprint and ends when the certificate does, if that is before
// the TTL.
func TestBoundSessionEndsWithItsCertificate(t *testing.T) {
	c := &clock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := New(Config{Now: c.now, TTL: time.Hour})
	fp := [32]byte{1, 2, 3}
	short, s, _ := st.CreateBound("cert:0102", "alice", fp, c.t.Add(10*time.Minute))
	long, sl, _ := st.CreateBound("cert:0102", "alice", fp, c.t.Add(48*time.Hour))
	if s.Cert != fp || !s.Expires.Equal(c.t.Add(10*time.Minute)) || !sl.Expires.Equal(c.t.Add(time.Hour)) {
		t.Fatalf("sessions %+v and %+v: want the fingerprint kept, expiry at the certificate's end or the TTL, whichever is first", s, sl)
	}
	c.t = c.t.Add(10 * time.Minute)
	if _, err := st.Lookup(short); !errors.Is(err, ErrNoSession) {
		t.Errorf("after its certificate expired: %v, want no session", err)
	}
	if _, err := st.Lookup(long); err != nil {
		t.Errorf("the other session: %v", err)
	}
}
