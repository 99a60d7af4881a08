package agentapi

import (
	"context"
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
// most refusalLogBurst lines per source per refusalLogPeriod; the others of
// that period are counted and said in one line per source when the period
// ends. The refusals metric counts every one.
const (
	refusalLogPeriod = time.Minute
	refusalLogBurst  = 5
	// maxTrackedSources bounds the per-source state of the refusal log and
	// of the join rate limit; sources beyond it share one entry.
	maxTrackedSources = 4096
)

// sourceOf is what limits and logs count a peer as: its IPv4 address, or
// the /64 of its IPv6 address. Addresses that are not IP (none in
// production) are one source, the zero prefix.
func sourceOf(addr net.Addr) netip.Prefix {
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

// sourceName is a source as logs show it.
func sourceName(src netip.Prefix) string {
	switch {
	case !src.IsValid():
		return "other"
	case src.Addr().Is4():
		return src.Addr().String()
	}
	return src.String()
}

// peerAddr is the remote address of an RPC's connection (nil if unknown).
func peerAddr(ctx context.Context) net.Addr {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr
	}
	return nil
}

// refusalLog rate-limits the log lines of refusals per source.
type refusalLog struct {
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

func newRefusalLog(log *zap.Logger, now func() time.Time) *refusalLog {
	return &refusalLog{log: log, now: now, sources: make(map[netip.Prefix]*sourceRefusals)}
}

// Warn logs a refusal of remote's unless its source had its share of
// lines this period; fields should include the remote address.
func (r *refusalLog) Warn(remote net.Addr, msg string, fields ...zap.Field) {
	if r.admit(sourceOf(remote), r.now()) {
		r.log.Warn(msg, fields...)
	}
}

// admit counts one refusal of src at now and says whether to log it.
func (r *refusalLog) admit(src netip.Prefix, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	sr := r.sources[src]
	if sr == nil && len(r.sources) >= maxTrackedSources {
		src = netip.Prefix{}
		sr = r.sources[src]
	}
	if sr != nil && now.Sub(sr.start) >= refusalLogPeriod {
		r.summarise(src, sr)
		sr = nil
	}
	if sr == nil {
		sr = &sourceRefusals{start: now}
		r.sources[src] = sr
	}
	if sr.logged < refusalLogBurst {
		sr.logged++
		return true
	}
	sr.suppressed++
	return false
}

// summarise logs the refusals of src's period that were not logged one by
// one. Called with r.mu held (zap does not call back).
func (r *refusalLog) summarise(src netip.Prefix, sr *sourceRefusals) {
	if sr.suppressed > 0 {
		r.log.Warn("more agent refusals from this source, not logged one by one",
			zap.String("source", sourceName(src)), zap.Uint64("refusals", sr.suppressed),
			zap.Time("since", sr.start), zap.Duration("period", refusalLogPeriod))
	}
}

// flush summarises and forgets the sources whose period ended by now.
func (r *refusalLog) flush(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for src, sr := range r.sources {
		if now.Sub(sr.start) >= refusalLogPeriod {
			r.summarise(src, sr)
			delete(r.sources, src)
		}
	}
}

// run flushes every tenth of a period until ctx is done, so a period's
// summary comes soon after it ends even when its source says no more.
func (r *refusalLog) run(ctx context.Context) {
	tick := time.NewTicker(refusalLogPeriod / 10)
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
