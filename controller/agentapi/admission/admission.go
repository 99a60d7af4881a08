// Package admission is what the controller's agent-facing listener holds
// against peers that have not authenticated (anyone who reaches the port):
// the Limits (limits.go), connection limits in all and per source, a per-source token bucket for
// joins, and a refusal log that says at most a few lines per source per
// minute and counts the rest. A source is an IPv4 address or an IPv6 /64.
// Per-source state is bounded: sources beyond MaxTrackedSources share one
// entry. Once (once.go) remembers one-use credentials until they expire,
// so that a replayed one is refused.
//
// It must not import the rest of the controller (agentapi uses it) nor
// anything under agent/.
package admission

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/peer"
)

// Refusal logging: anyone who reaches the listener can make the
// controller refuse something (a join with a made-up token, a connection
// over the limit, a certificate of another CA), so refusals are logged at
// most RefusalLogBurst lines per source per RefusalLogPeriod; the others of
// that period are counted and said in one line per source when the period
// ends. The refusals metric counts every one.
const (
	RefusalLogPeriod = time.Minute
	RefusalLogBurst  = 5
	// MaxTrackedSources bounds the per-source state of the refusal log and
	// of the join rate limit; sources beyond it share one entry.
	MaxTrackedSources = 4096
)

// SourceOf is what limits and logs count a peer as: its IPv4 address, or
// the /64 of its IPv6 address. Addresses that are not IP (none in
// production) are one source, the zero prefix.
func SourceOf(addr net.Addr) netip.Prefix {
	var ap netip.AddrPort
	switch a := addr.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if addr == nil {
			return netip.Prefix{}
		}
		var err error
		if ap, err = netip.ParseAddrPort(addr.String()); err != nil {
			return netip.Prefix{}
		}
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// SourceName is a source as logs show it.
func SourceName(src netip.Prefix) string {
	switch {
	case !src.IsValid():
		return "other"
	case src.Addr().Is4():
		return src.Addr().String()
	}
	return src.String()
}

// PeerAddr is the remote address of an RPC's connection (nil if unknown).
func PeerAddr(ctx context.Context) net.Addr {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr
	}
	return nil
}

// RefusalLog rate-limits the log lines of refusals per source.
type RefusalLog struct {
	log *zap.Logger
	now func() time.Time

	mu      sync.Mutex
	sources map[netip.Prefix]*sourceRefusals
}

// sourceRefusals is one source's refusals in the current period.
type sourceRefusals struct {
	start      time.Time
	logged     int
	suppressed uint64
}

func NewRefusalLog(log *zap.Logger, now func() time.Time) *RefusalLog {
	return &RefusalLog{log: log, now: now, sources: make(map[netip.Prefix]*sourceRefusals)}
}

// Warn logs a refusal of remote's unless its source had its share of
// lines this period; fields should include the remote address.
func (r *RefusalLog) Warn(remote net.Addr, msg string, fields ...zap.Field) {
	if r.admit(SourceOf(remote), r.now()) {
		r.log.Warn(msg, fields...)
	}
}

// admit counts one refusal of src at now and says whether to log it.
func (r *RefusalLog) admit(src netip.Prefix, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	sr := r.sources[src]
	if sr == nil && len(r.sources) >= MaxTrackedSources {
		src = netip.Prefix{}
		sr = r.sources[src]
	}
	if sr != nil && now.Sub(sr.start) >= RefusalLogPeriod {
		r.summarise(src, sr)
		sr = nil
	}
	if sr == nil {
		sr = &sourceRefusals{start: now}
		r.sources[src] = sr
	}
	if sr.logged < RefusalLogBurst {
		sr.logged++
		return true
	}
	sr.suppressed++
	return false
}

// summarise logs the refusals of src's period that were not logged one by
// one. Called with r.mu held (zap does not call back).
func (r *RefusalLog) summarise(src netip.Prefix, sr *sourceRefusals) {
	if sr.suppressed > 0 {
		r.log.Warn("more agent refusals from this source, not logged one by one",
			zap.String("source", SourceName(src)), zap.Uint64("refusals", sr.suppressed),
			zap.Time("since", sr.start), zap.Duration("period", RefusalLogPeriod))
	}
}

// flush summarises and forgets the sources whose period ended by now.
func (r *RefusalLog) flush(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for src, sr := range r.sources {
		if now.Sub(sr.start) >= RefusalLogPeriod {
			r.summarise(src, sr)
			delete(r.sources, src)
		}
	}
}

// Run flushes every tenth of a period until ctx is done, so a period's
// summary comes soon after it ends even when its source says no more.
func (r *RefusalLog) Run(ctx context.Context) {
	tick := time.NewTicker(RefusalLogPeriod / 10)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.flush(r.now())
		}
	}
}

// RateLimiter is a token bucket per key (a source for joins, a node for
// renewals). At most MaxTrackedSources keys have their own bucket; further
// keys share the zero key's.
type RateLimiter[K comparable] struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[K]*bucket
	swept   time.Time // last forgetFull: at most one a second
}

// JoinLimiter limits joins per source.
type JoinLimiter = RateLimiter[netip.Prefix]

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter allows rate calls per second per key, burst at once.
func NewRateLimiter[K comparable](rate float64, burst int) *RateLimiter[K] {
	return &RateLimiter[K]{rate: rate, burst: float64(burst), buckets: make(map[K]*bucket)}
}

// NewJoinLimiter allows rate joins per second per source, burst at once.
func NewJoinLimiter(rate float64, burst int) *JoinLimiter {
	return NewRateLimiter[netip.Prefix](rate, burst)
}

// Allow takes a token from key's bucket if it has one.
func (j *RateLimiter[K]) Allow(key K, now time.Time) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := j.buckets[key]
	if b == nil && len(j.buckets) >= MaxTrackedSources {
		if now.Sub(j.swept) >= time.Second {
			j.forgetFull(now)
			j.swept = now
		}
		if len(j.buckets) >= MaxTrackedSources {
			var zero K
			key = zero // every further key shares one bucket
			b = j.buckets[key]
		}
	}
	if b == nil {
		b = &bucket{tokens: j.burst, last: now}
		j.buckets[key] = b
	}
	b.tokens = min(j.burst, b.tokens+max(now.Sub(b.last).Seconds(), 0)*j.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forgetFull drops the buckets that have filled up again: a new one is
// the same.
func (j *RateLimiter[K]) forgetFull(now time.Time) {
	for key, b := range j.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*j.rate >= j.burst {
			delete(j.buckets, key)
		}
	}
}

// NewConnLimiter allows max connections in all and perSource from one
// source.
func NewConnLimiter(max, perSource int) *ConnLimiter {
	return &ConnLimiter{max: max, perSource: perSource, counts: make(map[netip.Prefix]int)}
}

// ConnLimiter counts the listener's connections, in all and per source.
type ConnLimiter struct {
	max, perSource int

	mu     sync.Mutex
	total  int
	counts map[netip.Prefix]int
}

// Acquire takes a slot for a connection from src, or says which limit
// stops it.
func (l *ConnLimiter) Acquire(src netip.Prefix) (refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.max:
		return fmt.Sprintf("the listener holds %d connections, its limit", l.total)
	case l.counts[src] >= l.perSource:
		return fmt.Sprintf("%s holds %d connections, the limit per source", SourceName(src), l.counts[src])
	}
	l.total++
	l.counts[src]++
	return ""
}

func (l *ConnLimiter) Release(src netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.counts[src]--; l.counts[src] <= 0 {
		delete(l.counts, src)
	}
}

// Listener wraps lis so that connections over the limits of l are closed
// as soon as they are accepted, before any TLS (holding one costs its peer
// a connection of its own); refused is told of each, with why. An
// accepted connection gives its slot back when it is closed.
func Listener(lis net.Listener, l *ConnLimiter, refused func(c net.Conn, why string)) net.Listener {
	return limitedListener{Listener: lis, l: l, refused: refused}
}

type limitedListener struct {
	net.Listener
	l       *ConnLimiter
	refused func(c net.Conn, why string)
}

func (l limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := SourceOf(c.RemoteAddr())
		if why := l.l.Acquire(src); why != "" {
			// Counted before it is closed: whoever sees the close sees
			// the count (TestConnectionLimits read it in between).
			l.refused(c, why)
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.l.Release(src) }}, nil
	}
}

// limitedConn gives its slot back when it is closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
