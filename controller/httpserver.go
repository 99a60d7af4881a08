package controller

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/netutil"
)

// HTTPLimits bound what a client of the HTTP listener (admin API,
// /metrics, /healthz) can hold: anyone who can reach the port can open
// connections, so none may stay open, idle or half-sent, for long, and
// their number is capped so they cannot exhaust the process's file
// descriptors. Zero fields take the defaults below.
type HTTPLimits struct {
	// ReadHeaderTimeout bounds the wait for a request's headers, from the
	// connection's start or from its first byte after an idle period.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included (an
	// apply carries up to 64 MiB).
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of a request's headers to
	// the end of its answer, the handler included. No endpoint streams
	// today; one that will (server-sent events) must move its own
	// deadline as it goes, with http.NewResponseController(w).
	// SetWriteDeadline, and stay bounded.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no new
	// request for this long.
	IdleTimeout time.Duration
	// MaxConns caps the connections served at once; more wait in the
	// kernel's accept queue until one closes (and the client gives up if
	// that takes too long).
	MaxConns int
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
}

// Defaults of HTTPLimits.
const (
	DefaultHTTPReadHeaderTimeout = 10 * time.Second
	DefaultHTTPReadTimeout       = 2 * time.Minute
	DefaultHTTPWriteTimeout      = 2 * time.Minute
	DefaultHTTPIdleTimeout       = time.Minute
	DefaultHTTPMaxConns          = 256
	DefaultHTTPMaxHeaderBytes    = 64 << 10
)

// withDefaults fills zero fields with the defaults.
func (l HTTPLimits) withDefaults() HTTPLimits {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&l.ReadHeaderTimeout, DefaultHTTPReadHeaderTimeout)
	def(&l.ReadTimeout, DefaultHTTPReadTimeout)
	def(&l.WriteTimeout, DefaultHTTPWriteTimeout)
	def(&l.IdleTimeout, DefaultHTTPIdleTimeout)
	if l.MaxConns == 0 {
		l.MaxConns = DefaultHTTPMaxConns
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultHTTPMaxHeaderBytes
	}
	return l
}

// check says what is wrong, naming the flag where there is one.
func (l HTTPLimits) check() error {
	if l.MaxConns < 0 {
		return fmt.Errorf("--http-max-connections %d: want at least 1 (0 in Options: the default)", l.MaxConns)
	}
	if l.ReadHeaderTimeout < 0 || l.ReadTimeout < 0 || l.WriteTimeout < 0 || l.IdleTimeout < 0 || l.MaxHeaderBytes < 0 {
		return fmt.Errorf("HTTP limits must not be negative: %+v", l)
	}
	return nil
}

// httpServer returns the HTTP listener's server and the listener to serve
// it on, wrapped to hold at most l.MaxConns connections. Connection errors
// (failed TLS handshakes, mostly clients' or scanners' doing) are logged
// at debug level: anyone can cause them.
func httpServer(h http.Handler, lis net.Listener, l HTTPLimits, tlsConfig *tls.Config, log *zap.Logger) (*http.Server, net.Listener) {
	l = l.withDefaults()
	errLog, _ := zap.NewStdLogAt(log.Named("http"), zapcore.DebugLevel) // fails only for an invalid level
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          errLog,
	}
	return srv, netutil.LimitListener(lis, l.MaxConns)
}
