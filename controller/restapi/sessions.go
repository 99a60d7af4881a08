package restapi

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/clientcert"
	"github.com/eastguard/eastguard/controller/restapi/session"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// Dashboard sessions (docs/OPERATIONS.md, "Dashboard sessions"): the page
// logs in with an admin token and then holds only a session cookie
// (HttpOnly: scripts cannot read it; SameSite=Strict: other sites'
// pages cannot send it; Secure over TLS) and a CSRF token it keeps in
// memory and sends in a header with every change. A session is only as
// good as its admin token: the token is read at every call, so its
// revocation or expiry ends the session at once.

const (
	sessionCookie = "eg_session"
	// certLoginHeader must say "certificate" on a certificate login. A
	// page of another site cannot send a custom header without a CORS
	// preflight, which this server never grants: so no other site can
	// log a visitor in with the certificate their browser holds.
	certLoginHeader = "X-Eastguard-Login"
	csrfHeader      = "X-CSRF-Token"
	errCSRF         = "missing or wrong CSRF token"
	// maxLoginBody bounds a login's body: one token.
	maxLoginBody = 4 << 10
)

// LoginRequest is the body of POST /api/v1/login.
type LoginRequest struct {
	Token string `json:"token"`
}

// SessionView is the answer of POST /api/v1/login and GET
// /api/v1/session.
type SessionView struct {
	Name      string    `json:"name"`
	CSRFToken string    `json:"csrfToken"`
	Expires   time.Time `json:"expires"`
}

// LoginMethods is the answer of GET /api/v1/login/methods: how this
// listener lets the dashboard log in.
type LoginMethods struct {
	Token       bool `json:"token"`
	Certificate bool `json:"certificate"`
}

func hasSessionCookie(r *http.Request) bool {
	_, err := r.Cookie(sessionCookie)
	return err == nil
}

// sessionOf returns the request's live session and its admin token, or
// why there is none. A session whose token is no longer valid is ended.
func (s *API) sessionOf(r *http.Request) (session.Session, store.AdminToken, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session.Session{}, store.AdminToken{}, session.ErrNoSession
	}
	sess, err := s.sessions.Lookup(c.Value)
	if err != nil {
		return session.Session{}, store.AdminToken{}, err
	}
	if sess.Cert != ([sha256.Size]byte{}) {
		return s.certSessionOf(r, c.Value, sess)
	}
	rec, err := s.st.AdminToken(r.Context(), sess.TokenID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		err = errAdminToken
	case err != nil:
		return session.Session{}, store.AdminToken{}, err
	default:
		switch adminTokenState(rec, s.now()) {
		case apiclient.AdminTokenRevoked:
			err = fmt.Errorf("%w (token %s): its sessions ended", errAdminRevoked, rec.ID)
		case apiclient.AdminTokenExpired:
			err = fmt.Errorf("%w (token %s): its sessions ended", errAdminExpired, rec.ID)
		}
	}
	if err != nil {
		s.sessions.EndToken(sess.TokenID)
		return session.Session{}, store.AdminToken{}, refusedToken{err}
	}
	return sess, rec, nil
}

// certSessionOf checks a session opened with a client certificate: the
// request's connection must present that same certificate, still
// accepted (not expired, not revoked). The cookie alone, stolen or
// leaked, is not enough. A certificate no longer accepted ends the
// session; another certificate only has its request refused (whoever
// holds it must not be able to end someone else's session).
func (s *API) certSessionOf(r *http.Request, cookie string, sess session.Session) (session.Session, store.AdminToken, error) {
	if s.certs == nil {
		s.sessions.End(cookie)
		return session.Session{}, store.AdminToken{}, refusedToken{errors.New("client certificate logins are off")}
	}
	id, err := s.certs.Identify(r.TLS)
	switch {
	case errors.Is(err, clientcert.ErrNoCertificate):
		return session.Session{}, store.AdminToken{}, refusedToken{fmt.Errorf("session of client certificate %s: %w", sess.TokenID, err)}
	case err != nil:
		s.sessions.End(cookie)
		return session.Session{}, store.AdminToken{}, refusedToken{fmt.Errorf("session of client certificate %s ended: %w", sess.TokenID, err)}
	case id.Fingerprint != sess.Cert:
		return session.Session{}, store.AdminToken{}, refusedToken{fmt.Errorf(
			"session of client certificate %s: this connection presents another certificate (%s)", sess.TokenID, id.ID())}
	}
	return sess, store.AdminToken{ID: sess.TokenID, Name: sess.TokenName}, nil
}

func sessionView(sess session.Session) SessionView {
	return SessionView{Name: sess.TokenName, CSRFToken: sess.CSRF, Expires: sess.Expires.UTC().Truncate(time.Second)}
}

// setSessionCookie sets (maxAge > 0) or clears the session cookie.
func setSessionCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
}

func (s *API) handleLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !s.sessions.AllowLogin(r.RemoteAddr) {
		s.log.Warn("login refused: too many attempts", zap.String("remote", r.RemoteAddr))
		w.Header().Set("Retry-After", strconv.Itoa(int(1/session.DefaultLoginRate)+1))
		writeError(w, http.StatusTooManyRequests, "too many login attempts from this address; retry later", nil)
		return
	}
	var req LoginRequest
	if !decode(w, r, &req, maxLoginBody) {
		return
	}
	rec, err := s.authenticate(r.Context(), req.Token)
	if errors.Is(err, ErrAdminTokenRefused) {
		s.log.Warn("login refused", zap.String("remote", r.RemoteAddr), zap.Error(err))
		s.auditLoginFailure(r, "token", claimedTokenID(req.Token, rec), err)
		writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The login is recorded before the session exists: a login that
	// cannot be recorded is refused.
	ctx := audit.WithActor(r.Context(), audit.Actor{Kind: store.ActorAdminToken, ID: rec.ID, Source: r.RemoteAddr})
	ar := audit.Record(ctx, s.now(), audit.LoginSuccess, audit.AdminTokenObject(rec.ID), "dashboard, admin token "+adminTokenDetail(rec))
	if err := s.audit.Append(ctx, ar); err != nil {
		s.fail(w, r, err)
		return
	}
	cookie, sess, err := s.sessions.Create(rec.ID, cmp.Or(rec.Name, rec.ID))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	setSessionCookie(w, r, cookie, int(s.sessions.TTL()/time.Second))
	s.log.Info("dashboard login", zap.String("remote", r.RemoteAddr), zap.String("admin-token", rec.ID), zap.String("name", rec.Name))
	writeJSON(w, http.StatusOK, sessionView(sess))
}

func (s *API) handleLoginMethods(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, LoginMethods{Token: true, Certificate: s.certs != nil && r.TLS != nil})
}

// handleCertLogin opens a session for the client certificate the
// connection presents.
func (s *API) handleCertLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if s.certs == nil || r.TLS == nil {
		writeError(w, http.StatusNotFound, "client certificate login is off on this listener (eastguard-controller --http-client-ca, with TLS)", nil)
		return
	}
	if r.Header.Get(certLoginHeader) != "certificate" {
		writeError(w, http.StatusForbidden, "a certificate login must send the header "+certLoginHeader+": certificate", nil)
		return
	}
	if !s.sessions.AllowLogin(r.RemoteAddr) {
		s.log.Warn("login refused: too many attempts", zap.String("remote", r.RemoteAddr))
		w.Header().Set("Retry-After", strconv.Itoa(int(1/session.DefaultLoginRate)+1))
		writeError(w, http.StatusTooManyRequests, "too many login attempts from this address; retry later", nil)
		return
	}
	id, err := s.certs.Identify(r.TLS)
	if err != nil {
		s.log.Warn("certificate login refused", zap.String("remote", r.RemoteAddr), zap.Error(err))
		s.auditLoginFailure(r, "certificate", "", err)
		writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
		return
	}
	ctx := audit.WithActor(r.Context(), audit.Actor{Kind: store.ActorCertificate, ID: certActor(id.Name, id.ID()), Source: r.RemoteAddr})
	ar := audit.Record(ctx, s.now(), audit.LoginSuccess, "", "dashboard, client certificate expiring "+id.NotAfter.UTC().Format(time.RFC3339))
	if err := s.audit.Append(ctx, ar); err != nil {
		s.fail(w, r, err)
		return
	}
	cookie, sess, err := s.sessions.CreateBound(id.ID(), id.Name, id.Fingerprint, id.NotAfter)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	setSessionCookie(w, r, cookie, max(int(sess.Expires.Sub(s.now())/time.Second), 1))
	s.log.Info("dashboard login", zap.String("remote", r.RemoteAddr), zap.String("certificate", id.ID()), zap.String("name", id.Name),
		zap.Time("certificate-expires", id.NotAfter))
	writeJSON(w, http.StatusOK, sessionView(sess))
}

func (s *API) handleSession(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	sess, _, err := s.sessionOf(r)
	if err != nil {
		writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusOK, sessionView(sess))
}

func (s *API) handleLogout(w http.ResponseWriter, r *http.Request) {
	sess, _, err := s.sessionOf(r)
	if err != nil {
		writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
		return
	}
	if !sess.CheckCSRF(r.Header.Get(csrfHeader)) {
		writeError(w, http.StatusForbidden, errCSRF, nil)
		return
	}
	c, _ := r.Cookie(sessionCookie)
	s.sessions.End(c.Value)
	setSessionCookie(w, r, "", -1)
	s.log.Info("dashboard logout", zap.String("remote", r.RemoteAddr), zap.String("admin-token", sess.TokenID))
	w.WriteHeader(http.StatusNoContent)
}

// auditLoginFailure records a refused login (after the login rate limit:
// a flood from one address is refused before it costs a record). The
// caller proved nothing: the actor is anonymous, and the token id it
// claimed, if well-formed, is the object. A record that cannot be
// written is logged: the refusal stands either way.
func (s *API) auditLoginFailure(r *http.Request, method, claimedID string, why error) {
	ctx := audit.WithActor(r.Context(), audit.Actor{Kind: store.ActorAnonymous, Source: r.RemoteAddr})
	object := ""
	if claimedID != "" {
		object = audit.AdminTokenObject(claimedID)
	}
	ar := audit.Record(ctx, s.now(), audit.LoginFailure, object, "dashboard, "+method+": "+why.Error())
	if err := s.audit.Append(ctx, ar); err != nil {
		s.log.Error("login failure not recorded in the audit trail", zap.String("remote", r.RemoteAddr), zap.Error(err))
	}
}

// claimedTokenID is the id a refused login's token claims: the stored
// token's when its secret matched (revoked, expired), else the id part
// of a well-formed token, else "".
func claimedTokenID(token string, rec store.AdminToken) string {
	if rec.ID != "" {
		return rec.ID
	}
	if t, err := pki.ParseAdminToken(token); err == nil {
		return t.ID
	}
	return ""
}
