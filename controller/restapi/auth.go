package restapi

import (
	"context"
	"errors"
	"sync"

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

func newAdminTokens(st store.Store) *adminTokens {
	return &adminTokens{st: st, hashes: make(map[string]string)}
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
func (s *API) NewAdminToken(ctx context.Context) (string, error) {
	t, err := pki.NewAdminToken()
	if err != nil {
		return "", err
	}
	if err := s.st.AddAdminToken(ctx, t.ID, pki.HashSecret(t.Secret), s.now()); err != nil {
		return "", err
	}
	return t.String(), nil
}

// CheckAdminToken verifies an admin credential.
func (s *API) CheckAdminToken(ctx context.Context, token string) error {
	return s.admins.check(ctx, token)
}
