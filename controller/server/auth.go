package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// adminTokens checks admin credentials against the hashes in the store,
// cached: every API call checks one.
type adminTokens struct {
	st     store.Store
	mu     sync.RWMutex
	hashes map[string]string // id -> secret hash
}

func loadAdminTokens(_ context.Context, st store.Store) (*adminTokens, error) {
	return &adminTokens{st: st, hashes: make(map[string]string)}, nil
}

var errAdminToken = errors.New("admin token not valid")

// check verifies a bearer token.
func (a *adminTokens) check(ctx context.Context, token string) error {
	t, err := pki.ParseAdminToken(token)
	if err != nil {
		return err
	}
	a.mu.RLock()
	hash, ok := a.hashes[t.ID]
	a.mu.RUnlock()
	if !ok {
		hash, err = a.st.AdminTokenHash(ctx, t.ID)
		if errors.Is(err, store.ErrNotFound) {
			return errAdminToken
		}
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.hashes[t.ID] = hash
		a.mu.Unlock()
	}
	if !pki.SecretMatches(hash, t.Secret) {
		return errAdminToken
	}
	return nil
}

// NewAdminToken creates and stores an admin credential.
func (s *Server) NewAdminToken(ctx context.Context) (string, error) {
	t, err := pki.NewAdminToken()
	if err != nil {
		return "", err
	}
	if err := s.store.AddAdminToken(ctx, t.ID, pki.HashSecret(t.Secret), s.now()); err != nil {
		return "", err
	}
	return t.String(), nil
}

// CheckAdminToken verifies an admin credential.
func (s *Server) CheckAdminToken(ctx context.Context, token string) error {
	return s.admins.check(ctx, token)
}

// MaxJoinTokenTTL bounds join tokens: they are meant for the next few
// minutes or hours, not as standing credentials.
const MaxJoinTokenTTL = 7 * 24 * time.Hour

// CreateJoinToken makes a one-time token for node, valid for ttl.
func (s *Server) CreateJoinToken(ctx context.Context, node string, ttl time.Duration) (*apiclient.JoinToken, error) {
	if err := pki.ValidNodeName(node); err != nil {
		return nil, &BadRequestError{err}
	}
	if ttl <= 0 || ttl > MaxJoinTokenTTL {
		return nil, &BadRequestError{fmt.Errorf("ttl %s: want more than 0 and at most %s", ttl, MaxJoinTokenTTL)}
	}
	t, err := pki.NewJoinToken(s.ca.Fingerprint())
	if err != nil {
		return nil, err
	}
	now := s.now()
	rec := store.JoinToken{ID: t.ID, SecretHash: pki.HashSecret(t.Secret), Node: node, Created: now, Expires: now.Add(ttl)}
	if err := s.store.AddJoinToken(ctx, rec); err != nil {
		return nil, err
	}
	s.log.Info("join token created", zap.String("node", node), zap.String("token-id", t.ID), zap.Time("expires", rec.Expires))
	return &apiclient.JoinToken{Token: t.String(), Node: node, Expires: rec.Expires.UTC()}, nil
}

// BadRequestError is a request the API refuses as malformed.
type BadRequestError struct{ Err error }

func (e *BadRequestError) Error() string { return e.Err.Error() }
func (e *BadRequestError) Unwrap() error { return e.Err }
