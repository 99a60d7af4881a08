package restapi

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/audit"
	"github.com/eastguard/eastguard/controller/restapi/session"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// Admin tokens. Every API call reads its token's record from the store:
// there is no cache, so a revocation or an expiry holds from the very
// next request, also when another controller process sharing the store
// revoked the token. The read is one primary-key lookup (see
// BenchmarkAdminTokenCheck); correctness is worth more than saving it.

// Sentinel errors of admin-token checks. The messages say why a token is
// refused only to whoever proves they hold it (the secret matched):
// anyone else learns nothing about which ids exist.
var (
	errAdminToken     = errors.New("admin token not valid")
	errAdminRevoked   = errors.New("admin token revoked")
	errAdminExpired   = errors.New("admin token expired")
	errNoSuchAdminTok = errors.New("no such admin token")
)

// ErrAdminTokenRefused marks every refusal of an admin token (malformed,
// unknown, wrong secret, revoked, expired), as opposed to a store that
// could not answer: errors.Is(err, ErrAdminTokenRefused).
var ErrAdminTokenRefused = errors.New("admin token refused")

// refusedToken wraps a refusal; its text is the refusal's alone.
type refusedToken struct{ error }

func (refusedToken) Is(target error) bool { return target == ErrAdminTokenRefused }
func (r refusedToken) Unwrap() error      { return r.error }

// Bounds of what an admin token may be created with.
const (
	maxAdminTokenName = 64
	maxAdminTokenTTL  = 10 * 365 * 24 * time.Hour
)

// AdminConfName is the name of the admin token the controller writes to
// admin.conf.
const AdminConfName = "admin.conf"

// authenticate returns the stored admin token that token proves, or why
// it does not.
func (s *API) authenticate(ctx context.Context, token string) (store.AdminToken, error) {
	t, err := pki.ParseAdminToken(token)
	if err != nil {
		return store.AdminToken{}, refusedToken{err}
	}
	rec, err := s.st.AdminToken(ctx, t.ID)
	if errors.Is(err, store.ErrNotFound) {
		return store.AdminToken{}, refusedToken{errAdminToken}
	}
	if err != nil {
		return store.AdminToken{}, err
	}
	if !pki.SecretMatches(rec.SecretHash, t.Secret) {
		return store.AdminToken{}, refusedToken{errAdminToken}
	}
	switch adminTokenState(rec, s.now()) {
	case apiclient.AdminTokenRevoked:
		return rec, refusedToken{fmt.Errorf("%w at %s (token %s)", errAdminRevoked, rec.Revoked.Format(time.RFC3339), rec.ID)}
	case apiclient.AdminTokenExpired:
		return rec, refusedToken{fmt.Errorf("%w at %s (token %s)", errAdminExpired, rec.Expires.Format(time.RFC3339), rec.ID)}
	}
	return rec, nil
}

func validAdminTokenID(id string) bool {
	if len(id) != 12 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func adminTokenState(t store.AdminToken, now time.Time) string {
	switch {
	case !t.Revoked.IsZero():
		return apiclient.AdminTokenRevoked
	case !t.Expires.IsZero() && !now.Before(t.Expires):
		return apiclient.AdminTokenExpired
	}
	return apiclient.AdminTokenActive
}

// CheckAdminToken verifies an admin credential: known, secret matching,
// neither revoked nor expired.
func (s *API) CheckAdminToken(ctx context.Context, token string) error {
	_, err := s.authenticate(ctx, token)
	return err
}

// AdminTokenSpec says what admin token to create.
type AdminTokenSpec struct {
	Name string
	// TTL is the token's lifetime; 0: it never expires.
	TTL time.Duration
	// CreatedBy is the id of the admin token whose holder asks; empty for
	// the controller itself.
	CreatedBy string
}

func (sp AdminTokenSpec) check() error {
	if len(sp.Name) > maxAdminTokenName {
		return badRequest{fmt.Errorf("name is %d bytes long, at most %d", len(sp.Name), maxAdminTokenName)}
	}
	if !utf8.ValidString(sp.Name) || strings.IndexFunc(sp.Name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return badRequest{fmt.Errorf("name %q: only printable characters", sp.Name)}
	}
	if sp.TTL < 0 || sp.TTL > maxAdminTokenTTL {
		return badRequest{fmt.Errorf("ttl %s: want a positive duration of at most %s, or none for a token that never expires",
			sp.TTL, maxAdminTokenTTL)}
	}
	return nil
}

// NewAdminToken creates and stores an admin credential. The answer holds
// the token itself; only a hash of its secret is stored.
func (s *API) NewAdminToken(ctx context.Context, sp AdminTokenSpec) (apiclient.CreatedAdminToken, error) {
	if err := sp.check(); err != nil {
		return apiclient.CreatedAdminToken{}, err
	}
	t, err := pki.NewAdminToken()
	if err != nil {
		return apiclient.CreatedAdminToken{}, err
	}
	now := s.now().UTC()
	rec := store.AdminToken{ID: t.ID, SecretHash: pki.HashSecret(t.Secret), Name: sp.Name, Created: now, CreatedBy: sp.CreatedBy}
	if sp.TTL > 0 {
		rec.Expires = now.Add(sp.TTL)
	}
	ar := audit.Record(ctx, now, audit.AdminTokenCreate, audit.AdminTokenObject(rec.ID), adminTokenDetail(rec))
	ar.After = audit.AdminTokenHash(rec)
	if err := s.st.AddAdminToken(ctx, rec, ar); err != nil {
		return apiclient.CreatedAdminToken{}, err
	}
	s.audit.Written(ar)
	s.log.Info("admin token created", zap.String("admin-token", rec.ID), zap.String("name", rec.Name),
		zap.Time("expires", rec.Expires), zap.String("created-by", rec.CreatedBy))
	return apiclient.CreatedAdminToken{AdminToken: s.adminTokenView(rec, ""), Token: t.String()}, nil
}

// RetireAdminToken revokes the admin token written in a file the
// controller replaces (admin.conf out of date), so that copies of the old
// file stop working. It revokes only a token whose secret matches; it
// returns the id revoked, or "" when there was nothing to revoke.
func (s *API) RetireAdminToken(ctx context.Context, token string) (string, error) {
	rec, err := s.authenticate(ctx, token)
	switch {
	case errors.Is(err, errAdminRevoked):
		return "", nil
	case errors.Is(err, errAdminExpired):
	case err != nil:
		return "", nil // not a token of this store: nothing to revoke
	}
	if _, err := s.revokeAdminToken(ctx, rec, s.now(), "admin.conf rewritten"); err != nil {
		return "", err
	}
	s.log.Info("admin token revoked", zap.String("admin-token", rec.ID), zap.String("name", rec.Name),
		zap.String("reason", "admin.conf rewritten"))
	return rec.ID, nil
}

// revokeAdminToken revokes the token prior is the stored state of, with
// its audit record (written only if this call revokes it).
func (s *API) revokeAdminToken(ctx context.Context, prior store.AdminToken, at time.Time, why string) (store.AdminToken, error) {
	after := prior
	after.Revoked = at
	ar := audit.Record(ctx, at, audit.AdminTokenRevoke, audit.AdminTokenObject(prior.ID), strings.TrimPrefix(adminTokenDetail(prior)+"; "+why, "; "))
	ar.Before, ar.After = audit.AdminTokenHash(prior), audit.AdminTokenHash(after)
	rec, err := s.st.RevokeAdminToken(ctx, prior.ID, at, ar)
	if err == nil && rec.Revoked.Equal(at) && prior.Revoked.IsZero() {
		s.audit.Written(ar)
	}
	return rec, err
}

// adminTokenDetail describes a token in its audit records.
func adminTokenDetail(t store.AdminToken) string {
	d := fmt.Sprintf("name %q", t.Name)
	if !t.Expires.IsZero() {
		d += ", expires " + t.Expires.UTC().Format(time.RFC3339)
	}
	return d
}

// adminTokenView is the API's view of a stored token; current is the id
// of the caller's token.
func (s *API) adminTokenView(t store.AdminToken, current string) apiclient.AdminToken {
	return apiclient.AdminToken{ID: t.ID, Name: t.Name, State: adminTokenState(t, s.now()), Created: t.Created,
		Expires: t.Expires, Revoked: t.Revoked, CreatedBy: t.CreatedBy, Current: t.ID == current}
}

// callerKey is the request context's key for the caller: the admin
// token's id and name.
type callerKey struct{}

type callerInfo struct{ id, name string }

func caller(r *http.Request) string {
	c, _ := r.Context().Value(callerKey{}).(callerInfo)
	return c.id
}

// callerName is who the caller is in records (an alert's acknowledgedBy):
// the token's name, or its id when it has none.
func callerName(r *http.Request) string {
	c, _ := r.Context().Value(callerKey{}).(callerInfo)
	return cmp.Or(c.name, c.id)
}

// cutBearer returns the request's bearer token, if it has one.
func cutBearer(r *http.Request) (string, bool) {
	t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return strings.TrimSpace(t), ok
}

// requireAdmin lets through requests with a valid admin bearer token or
// a live dashboard session (whose token is still valid, and which sends
// its CSRF token with every method but GET and HEAD), and answers 401 to
// every other (403 to a session without its CSRF token).
func (s *API) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bearer, hasBearer := cutBearer(r)
		var rec store.AdminToken
		var err error
		actor := audit.Actor{Kind: store.ActorAdminToken, Source: r.RemoteAddr}
		switch {
		case hasBearer:
			rec, err = s.authenticate(r.Context(), bearer)
		case hasSessionCookie(r):
			var sess session.Session
			sess, rec, err = s.sessionOf(r)
			if sess.Cert != ([sha256.Size]byte{}) {
				actor.Kind = store.ActorCertificate
			}
			if err == nil && r.Method != http.MethodGet && r.Method != http.MethodHead && !sess.CheckCSRF(r.Header.Get(csrfHeader)) {
				s.log.Warn("API call refused: missing or wrong CSRF token", zap.String("remote", r.RemoteAddr),
					zap.String("path", r.URL.Path), zap.String("admin-token", rec.ID))
				writeError(w, http.StatusForbidden, errCSRF, nil)
				return
			}
		default:
			err = errors.New("missing admin credential (Authorization: Bearer <token from admin.conf>, or a dashboard session)")
		}
		if err != nil {
			s.log.Warn("API call refused", zap.String("remote", r.RemoteAddr), zap.String("path", r.URL.Path), zap.Error(err))
			w.Header().Set("WWW-Authenticate", `Bearer realm="eastguard"`)
			writeError(w, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
			return
		}
		// The actor of every change this request makes: the token's id,
		// or a certificate session's subject and fingerprint.
		actor.ID = rec.ID
		if actor.Kind == store.ActorCertificate {
			actor.ID = certActor(rec.Name, rec.ID)
		}
		ctx := audit.WithActor(context.WithValue(r.Context(), callerKey{}, callerInfo{rec.ID, rec.Name}), actor)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (s *API) handleAdminTokens(w http.ResponseWriter, r *http.Request) {
	list, err := s.st.AdminTokens(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	views := make([]apiclient.AdminToken, 0, len(list))
	for _, t := range list {
		views = append(views, s.adminTokenView(t, caller(r)))
	}
	writeJSON(w, http.StatusOK, views)
}

func (s *API) handleCreateAdminToken(w http.ResponseWriter, r *http.Request) {
	var req apiclient.AdminTokenRequest
	if !decode(w, r, &req, maxSmallBody) {
		return
	}
	sp := AdminTokenSpec{Name: req.Name, CreatedBy: caller(r)}
	if req.TTL != "" {
		var err error
		if sp.TTL, err = time.ParseDuration(req.TTL); err != nil || sp.TTL <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("ttl %q: want a positive duration such as 720h, or none for a token that never expires", req.TTL), nil)
			return
		}
	}
	tok, err := s.NewAdminToken(r.Context(), sp)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, tok)
}

func (s *API) handleRevokeAdminToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validAdminTokenID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("admin token id %q: want the id egctl admin-token list shows (12 hexadecimal digits)", id), nil)
		return
	}
	now := s.now()
	rec, err := s.st.AdminToken(r.Context(), id)
	if err == nil {
		rec, err = s.revokeAdminToken(r.Context(), rec, now, "")
	}
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%v %q, nothing changed", errNoSuchAdminTok, id), nil)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The store keeps the first revocation's time: another one means an
	// earlier call revoked it.
	res := apiclient.RevokedAdminToken{AdminToken: s.adminTokenView(rec, caller(r)), AlreadyRevoked: !rec.Revoked.Equal(now)}
	if list, err := s.st.AdminTokens(r.Context()); err == nil {
		for _, t := range list {
			if adminTokenState(t, s.now()) == apiclient.AdminTokenActive {
				res.ActiveTokens++
			}
		}
	}
	// Its dashboard sessions end now (they would be refused at their next
	// call anyway: every call reads the token).
	ended := s.sessions.EndToken(rec.ID)
	if !res.AlreadyRevoked {
		s.log.Info("admin token revoked", zap.Int("sessions-ended", ended), zap.String("admin-token", rec.ID), zap.String("name", rec.Name),
			zap.String("revoked-by", caller(r)))
	}
	writeJSON(w, http.StatusOK, res)
}

// certActor names a client certificate in audit records: its subject's
// name and the fingerprint that tells certificates of one name apart.
func certActor(name, id string) string {
	if name == "" {
		return id
	}
	return name + " (" + id + ")"
}
