package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Client calls the API with the admin credential. With several servers
// (high availability) each request goes to the servers in turn, a name
// as each of its addresses, until one answers other than "not leader"
// (a standby's 503) or "unreachable"; the next request starts with the
// one that answered.
type Client struct {
	bases []string
	token string
	http  *http.Client

	mu   sync.Mutex
	last target // the server that answered last, tried first
}

// pinKey carries the address a request must connect to (one of a name's
// addresses) in its context.
type pinKey struct{}

// NewClient returns a client for cfg.
func NewClient(cfg *Config) (*Client, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if pin, ok := ctx.Value(pinKey{}).(string); ok {
			addr = pin
		}
		return dialer.DialContext(ctx, network, addr)
	}
	if cfg.CACert != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(cfg.CACert)) {
			return nil, errors.New("caCert: no PEM certificate in it")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	bases := SplitServers(cfg.Server)
	return &Client{
		bases: bases,
		last:  target{base: bases[0]},
		token: cfg.Token,
		http:  &http.Client{Transport: tr, Timeout: 2 * time.Minute},
	}, nil
}

// StatusError is an API answer other than 2xx.
type StatusError struct {
	Code int
	Body Error
}

func (e *StatusError) Error() string {
	msg := e.Body.Error
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("%s (HTTP %d)", msg, e.Code)
}

// target is one server to try: its base URL and, for a name resolving
// to several addresses, the one to connect to ("" for the URL's own).
type target struct {
	base, pin string
}

// expand lists a server's name as each of its addresses (nil for an IP
// address, a failed lookup or a single address): a name for several
// controllers leads to a standby as often as not.
func expand(ctx context.Context, base string) []target {
	u, err := url.Parse(base)
	if err != nil {
		return nil
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) <= 1 {
		return nil
	}
	var out []target
	for _, a := range addrs {
		out = append(out, target{base: base, pin: net.JoinHostPort(a.Unmap().String(), port)})
	}
	return out
}

// Do sends a request with a JSON body (nil: none) and decodes a JSON answer
// into out (nil: ignored). With several servers it moves on from one that
// cannot be connected to or answers "not leader" (a name that led to a
// standby is tried at each of its addresses): neither has acted on the
// request. Any other answer, or an error once connected, is final (a
// request is never sent twice).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var data []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		data = b
	}
	c.mu.Lock()
	first := c.last
	c.mu.Unlock()
	queue := []target{first}
	for _, b := range c.bases {
		if b != first.base || first.pin != "" {
			queue = append(queue, target{base: b})
		}
	}
	var errs []error
	expanded, again := map[string]bool{}, map[string]int{}
	for k := 0; k < len(queue) && k < 64; k++ {
		t := queue[k]
		if t.base == "" {
			continue
		}
		err := c.do(ctx, t, method, path, data, body != nil, out)
		if err == nil || !movesOn(err) {
			c.mu.Lock()
			c.last = t
			c.mu.Unlock()
			return err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
		var se *StatusError
		if !errors.As(err, &se) {
			continue
		}
		if !expanded[t.base] {
			expanded[t.base] = true
			if more := expand(ctx, t.base); len(more) > 0 {
				queue = append(queue, more...)
				continue
			}
		}
		// A single address that led to a standby is a load balancer's
		// (a Kubernetes Service): a new connection may reach the
		// leader, a few times over.
		if t.pin == "" && again[t.base] < maxAgain {
			again[t.base]++
			c.http.CloseIdleConnections()
			queue = append(queue, t)
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return &NoLeaderError{Errs: errs}
}

// maxAgain is how many more times a server whose name has one address is
// asked after it answered "not leader".
const maxAgain = 5

// NoLeaderError is what Do returns when no server answered as the leader.
type NoLeaderError struct{ Errs []error }

func (e *NoLeaderError) Error() string {
	var lines []string
	count := map[string]int{}
	for _, err := range e.Errs {
		msg := err.Error()
		if count[msg] == 0 {
			lines = append(lines, msg)
		}
		count[msg]++
	}
	for i, l := range lines {
		if n := count[l]; n > 1 {
			lines[i] = fmt.Sprintf("%s (%d times)", l, n)
		}
	}
	return "no controller answered as the leader: " + strings.Join(lines, "; ")
}

func (e *NoLeaderError) Unwrap() []error { return e.Errs }

// movesOn says whether a request may go to the next server: a standby's
// answer, or no connection at all.
func movesOn(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusServiceUnavailable && se.Body.NotLeader
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *Client) do(ctx context.Context, t target, method, path string, data []byte, hasBody bool, out any) error {
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(data)
	}
	if t.pin != "" {
		ctx = context.WithValue(ctx, pinKey{}, t.pin)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("controller API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("controller API: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Code: resp.StatusCode}
		if json.Unmarshal(body, &se.Body) != nil {
			se.Body.Error = strings.TrimSpace(string(body))
		}
		return se
	}
	if out == nil {
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := w.Write(body)
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("controller API: answer to %s %s: %w", method, path, err)
	}
	return nil
}
