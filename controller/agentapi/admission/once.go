package admission

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Once errors.
var (
	// ErrReplay is a credential presented a second time before it
	// expired.
	ErrReplay = errors.New("credential already used")
	// ErrOnceFull is a Once holding its maximum of unexpired credentials:
	// the caller refuses for now (the peer retries later), never forgets
	// an unexpired one (that would let it be replayed).
	ErrOnceFull = errors.New("too many credentials remembered")
)

// Once remembers credentials that may be used once each (ServiceAccount
// tokens' credential ids) until they expire, so that a replayed one is
// refused. It holds at most max entries; expired ones are dropped when it
// is full.
type Once struct {
	// mu guards used; no other lock is taken while it is held.
	mu   sync.Mutex
	max  int
	used map[string]time.Time // credential id -> its expiry
}

// NewOnce makes a Once of at most max entries.
func NewOnce(max int) *Once { return &Once{max: max, used: make(map[string]time.Time)} }

// Use records id, valid until expires, as used at now. It refuses an id
// used before and not yet expired (ErrReplay), and any id while max
// unexpired ones are remembered (ErrOnceFull).
func (o *Once) Use(id string, expires, now time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if exp, ok := o.used[id]; ok && now.Before(exp) {
		return fmt.Errorf("%w (%s, until %s)", ErrReplay, id, exp.UTC().Format(time.RFC3339))
	}
	if len(o.used) >= o.max {
		for k, exp := range o.used {
			if !now.Before(exp) {
				delete(o.used, k)
			}
		}
		if len(o.used) >= o.max {
			return fmt.Errorf("%w (%d): retry later", ErrOnceFull, o.max)
		}
	}
	o.used[id] = expires
	return nil
}

// Forget drops id: it was recorded but not used after all (what it was
// for failed on the controller's side, and the peer may try it again).
func (o *Once) Forget(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.used, id)
}

// Len is how many ids are remembered (tests).
func (o *Once) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.used)
}
