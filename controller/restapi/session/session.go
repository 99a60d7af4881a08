// Package session keeps the dashboard's login sessions: a random cookie
// value per login (only its hash is kept), the admin token it was opened
// with, its CSRF token and its expiry; and the per-source rate limit of
// logins. Sessions live in memory: a controller restart ends them (the
// page logs in again).
//
// Invariants: the number of sessions is bounded (the oldest is ended to
// make room); an expired session is never returned; a session's cookie
// value is never stored or logged (its SHA-256 is the key); CSRF tokens
// are compared in constant time; ending an admin token's sessions
// (EndToken) ends every one of them.
//
// It must not import restapi (which uses it) nor anything outside
// controller/agentapi/admission and internal/.
package session

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/agentapi/admission"
)

// Defaults of Config.
const (
	DefaultTTL         = 12 * time.Hour
	DefaultMaxSessions = 1024
	// DefaultLoginRate and DefaultLoginBurst: a source may try 10 logins
	// at once, then one every 6 s: a brute force of a 128-bit secret gets
	// nowhere, an operator who mistyped is not locked out for long.
	DefaultLoginRate  = 1.0 / 6
	DefaultLoginBurst = 10
)

// ErrNoSession is returned for a cookie that names no live session.
var ErrNoSession = errors.New("no such session, or it expired")

// Config configures a Store. Zero values take the defaults.
type Config struct {
	Log         *zap.Logger
	Now         func() time.Time
	TTL         time.Duration
	MaxSessions int
	// LoginRate is logins per second per source, LoginBurst at once.
	LoginRate  float64
	LoginBurst int
}

// Session is one login.
type Session struct {
	// TokenID and TokenName are the admin token's that opened it; for a
	// session opened with a client certificate, the certificate's id
	// ("cert:...", never an admin token's) and its holder's name.
	TokenID, TokenName string
	// Cert, when not zero, is the SHA-256 of the client certificate that
	// opened the session: its requests must present that certificate
	// again (the cookie alone is not enough).
	Cert [sha256.Size]byte
	// CSRF is the value the page must send in X-CSRF-Token with every
	// request that changes something.
	CSRF    string
	Created time.Time
	Expires time.Time
}

// CheckCSRF reports whether got is the session's CSRF token.
func (s Session) CheckCSRF(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRF)) == 1
}

type key [sha256.Size]byte

// Store holds the sessions. It is safe for concurrent use.
type Store struct {
	cfg    Config
	logins *admission.RateLimiter[netip.Prefix]

	mu       sync.Mutex // guards sessions; nothing else is locked while it is held
	sessions map[key]*Session
}

// New returns an empty store.
func New(cfg Config) *Store {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.LoginRate <= 0 {
		cfg.LoginRate = DefaultLoginRate
	}
	if cfg.LoginBurst <= 0 {
		cfg.LoginBurst = DefaultLoginBurst
	}
	return &Store{cfg: cfg, logins: admission.NewRateLimiter[netip.Prefix](cfg.LoginRate, cfg.LoginBurst),
		sessions: make(map[key]*Session)}
}

// TTL is how long a session lasts.
func (st *Store) TTL() time.Duration { return st.cfg.TTL }

// AllowLogin takes a login attempt from the source of remote (an
// http.Request's RemoteAddr): false when the source tried too often.
func (st *Store) AllowLogin(remote string) bool {
	return st.logins.Allow(sourceOf(remote), st.cfg.Now())
}

// sourceOf is a remote address as the rate limit counts it (an IPv4
// address, an IPv6 /64), as the agent listener's limits do.
func sourceOf(remote string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Prefix{}
	}
	return admission.SourceOf(net.TCPAddrFromAddrPort(ap))
}

func random() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Create opens a session for an admin token and returns the cookie value
// and the session. When the store is full, the oldest session ends.
func (st *Store) Create(tokenID, tokenName string) (string, Session, error) {
	return st.CreateBound(tokenID, tokenName, [sha256.Size]byte{}, time.Time{})
}

// CreateBound opens a session bound to a client certificate (its
// fingerprint, see Session.Cert) that ends at the latest when the
// certificate does (notAfter; zero: no such bound).
func (st *Store) CreateBound(tokenID, tokenName string, cert [sha256.Size]byte, notAfter time.Time) (string, Session, error) {
	cookie, err := random()
	if err != nil {
		return "", Session{}, err
	}
	csrf, err := random()
	if err != nil {
		return "", Session{}, err
	}
	now := st.cfg.Now()
	s := &Session{TokenID: tokenID, TokenName: tokenName, Cert: cert, CSRF: csrf, Created: now, Expires: now.Add(st.cfg.TTL)}
	if !notAfter.IsZero() && notAfter.Before(s.Expires) {
		s.Expires = notAfter
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sweepLocked(now)
	if len(st.sessions) >= st.cfg.MaxSessions {
		var oldest key
		var first *Session
		for k, v := range st.sessions {
			if first == nil || v.Created.Before(first.Created) {
				oldest, first = k, v
			}
		}
		delete(st.sessions, oldest)
		st.cfg.Log.Warn("session limit reached: the oldest session ended", zap.Int("max-sessions", st.cfg.MaxSessions),
			zap.String("admin-token", first.TokenID))
	}
	st.sessions[sha256.Sum256([]byte(cookie))] = s
	return cookie, *s, nil
}

// sweepLocked drops expired sessions.
func (st *Store) sweepLocked(now time.Time) {
	for k, s := range st.sessions {
		if !now.Before(s.Expires) {
			delete(st.sessions, k)
		}
	}
}

// Lookup returns the live session of a cookie value, or ErrNoSession.
func (st *Store) Lookup(cookie string) (Session, error) {
	if cookie == "" {
		return Session{}, ErrNoSession
	}
	k := sha256.Sum256([]byte(cookie))
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.sessions[k]
	if s == nil {
		return Session{}, ErrNoSession
	}
	if !st.cfg.Now().Before(s.Expires) {
		delete(st.sessions, k)
		return Session{}, ErrNoSession
	}
	return *s, nil
}

// End ends the session of a cookie value (logout); ending none is no
// error.
func (st *Store) End(cookie string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.sessions, sha256.Sum256([]byte(cookie)))
}

// EndToken ends every session of an admin token (it was revoked) and
// returns how many there were.
func (st *Store) EndToken(tokenID string) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for k, s := range st.sessions {
		if s.TokenID == tokenID {
			delete(st.sessions, k)
			n++
		}
	}
	return n
}

// Len returns the number of sessions held (expired ones not yet swept
// included).
func (st *Store) Len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions)
}
