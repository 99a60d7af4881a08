package restapi

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/restapi/session"
	"github.com/eastguard/eastguard/controller/store"
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
	csrfHeader    = "X-CSRF-Token"
	errCSRF       = "missing or wrong CSRF token"
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
		writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
		return
	}
	if err != nil {
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
