package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/wire"
)

// Several controllers (high availability): --controller lists HOST:PORT
// entries, and a name may resolve to several addresses. The client dials
// one target at a time, an address with the name it was given by (the
// serving certificate's name checked against it), and stays with it while
// it answers; a target that cannot be reached, or answers that it is not
// the leader, makes the client move to the next. Once every target has
// failed, the list is resolved again and the client backs off.

// target is one address to dial and the name to check its certificate
// against.
type target struct {
	host string // as given: the certificate must name it
	addr string // IP:PORT (or HOST:PORT when Resolve is nil and lookup failed)
}

// targets is the rotation over the controllers' addresses.
type targets struct {
	given   []string // HOST:PORT as configured
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	log     *zap.Logger

	mu   sync.Mutex
	list []target // nil: resolve again
	i    int
}

// splitControllers splits the comma-separated HOST:PORT list.
func splitControllers(list string) ([]string, error) {
	var out []string
	for a := range strings.SplitSeq(list, ",") {
		a = strings.TrimSpace(a)
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return nil, fmt.Errorf("controller address %q: want HOST:PORT", a)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("controller address %q: want a port from 1 to 65535", a)
		}
		out = append(out, a)
	}
	return out, nil
}

// current returns the target to dial, resolving the list if needed.
func (t *targets) current(ctx context.Context) (target, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.list == nil {
		list, err := t.build(ctx)
		if err != nil {
			return target{}, err
		}
		t.list, t.i = list, 0
	}
	return t.list[t.i], nil
}

// build lists every target: each given entry, a name as each of its
// addresses.
func (t *targets) build(ctx context.Context) ([]target, error) {
	var list []target
	var errs []error
	for _, g := range t.given {
		host, port, _ := net.SplitHostPort(g)
		if _, err := netip.ParseAddr(host); err == nil || t.resolve == nil {
			list = append(list, target{host: host, addr: g})
			continue
		}
		addrs, err := t.resolve(ctx, host)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range addrs {
			list = append(list, target{host: host, addr: net.JoinHostPort(a.String(), port)})
		}
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("no controller address: %w", errors.Join(errs...))
	}
	if len(errs) > 0 {
		t.log.Warn("some controller names not resolved; trying the others", zap.Error(errors.Join(errs...)))
	}
	return list, nil
}

// failed moves on from the target that failed with err: to the leader a
// standby named, when it is one of the targets, else to the next. It
// says whether every target has been tried (the list is then resolved
// again and the caller backs off).
func (t *targets) failed(tg target, err error) (wrapped bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.list == nil || t.list[t.i] != tg {
		return false // someone else moved on already
	}
	if leader, ok := wire.IsNotLeader(err); ok && leader != "" {
		if j := slices.IndexFunc(t.list, func(x target) bool {
			return x.addr == leader || net.JoinHostPort(x.host, portOf(x.addr)) == leader
		}); j >= 0 && j != t.i {
			t.i = j
			return false
		}
	}
	t.i++
	if t.i >= len(t.list) {
		t.list, t.i = nil, 0
		return true
	}
	return false
}

// several says whether there is more than one target to try.
func (t *targets) several() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.given) > 1 || len(t.list) > 1
}

func portOf(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}
