package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/eastguard/eastguard/controller/agentapi"
	"github.com/eastguard/eastguard/controller/agentapi/admission"
	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/internal/wire"
)

// A standby controller (high availability on PostgreSQL, controller/leader)
// serves both listeners before it leads: /healthz and /metrics on HTTP,
// and to everything else, on both, an answer that sends the client to the
// next controller address it knows (the REST API 503 with a JSON error
// naming the leader, gRPC Unavailable with the wire.NotLeader detail). It
// reads and writes nothing of the store for them. Once it leads, the same
// listeners serve the controller built then (roleHandler, handoff).

// RoleHeader is the HTTP header of /healthz naming the controller's role
// (leader or standby).
const RoleHeader = "X-Eastguard-Role"

// roleHandler is the HTTP listener's handler: the standby's until
// the controller leads, then the leader's.
type roleHandler struct {
	h atomic.Pointer[http.Handler]
}

func (r *roleHandler) set(h http.Handler) { r.h.Store(&h) }

func (r *roleHandler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	(*r.h.Load()).ServeHTTP(w, req)
}

// leaderHandler marks the leader's /healthz with its role.
func leaderHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Header().Set(RoleHeader, "leader")
		}
		h.ServeHTTP(w, r)
	})
}

// standbyHandler answers as a standby: leaderAPI returns the leader's
// advertised API URL ("" when unknown).
func standbyHandler(metrics prometheus.Gatherer, leaderAPI func() string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set(RoleHeader, "standby")
		io.WriteString(w, "ok standby\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		leader := leaderAPI()
		msg := apiclient.NotLeaderMessage
		if leader != "" {
			msg += "; the leader is at " + leader
		}
		w.Header().Set("Retry-After", "1")
		writeNotLeader(w, apiclient.Error{Error: msg, NotLeader: true, Leader: leader})
	})
	return mux
}

func writeNotLeader(w http.ResponseWriter, e apiclient.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_ = json.NewEncoder(w).Encode(e)
}

// standbyGRPC is the standby's agent listener: the TLS agents expect (a
// serving certificate of the controller's CA for this controller's names,
// rotated), and no service: every call is answered wire.NotLeader. Anyone
// who reaches the port may connect before authenticating, so the leader's
// bounds apply: connections in all and per source (lis is wrapped), the
// handshake's deadline, streams per connection, idle connections closed,
// and requests never read beyond a small size.
func standbyGRPC(ctx context.Context, t *agenttls.State, limits agentapi.Limits, leaderGRPC func() string) (*grpc.Server, func(net.Listener) net.Listener) {
	go t.Rotate(ctx)
	limits = limits.WithDefaults()
	conns := admission.NewConnLimiter(limits.MaxConns, limits.MaxConnsPerSource)
	srv := grpc.NewServer(grpc.Creds(t.ServerCredentials()),
		grpc.MaxRecvMsgSize(16<<10),
		grpc.MaxConcurrentStreams(uint32(limits.MaxStreamsPerConn)),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute}),
		grpc.ReadBufferSize(8<<10),
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error { return wire.NotLeader(leaderGRPC()) }))
	return srv, func(lis net.Listener) net.Listener {
		return admission.Listener(lis, conns, func(c net.Conn, _ string) {})
	}
}

// handoff passes the connections of one listener to one server at a
// time: the standby's gRPC server, then the leader's. Each Next closes the
// previous server's listener (its Serve returns) and opens a new one.
type handoff struct {
	lis  net.Listener
	mu   sync.Mutex
	cur  *chanListener
	once sync.Once
}

func newHandoff(lis net.Listener) *handoff { return &handoff{lis: lis} }

// Next returns the listener the next server serves on.
func (h *handoff) Next() net.Listener {
	h.once.Do(func() { go h.accept() })
	l := &chanListener{addr: h.lis.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
	h.mu.Lock()
	prev := h.cur
	h.cur = l
	h.mu.Unlock()
	if prev != nil {
		prev.Close()
	}
	return l
}

// accept runs until the real listener is closed, then closes the current
// server's.
func (h *handoff) accept() {
	for {
		c, err := h.lis.Accept()
		h.mu.Lock()
		l := h.cur
		h.mu.Unlock()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.Close()
			return
		}
		select {
		case l.ch <- c:
		case <-l.done:
			c.Close() // handed over meanwhile: the client tries again
		}
	}
}

// Close closes the real listener.
func (h *handoff) Close() error { return h.lis.Close() }

type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("accept: %w", net.ErrClosed)
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
