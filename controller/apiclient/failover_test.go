package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestFailoverClientMovesToTheLeader: with several servers the client
// passes over one it cannot connect to and a standby (503, notLeader),
// never sends a request twice to one that acted on it, starts the next
// request with the one that answered, and says so when none leads. An
// admin.conf with one server reads as before; a list is checked whole.
func TestFailoverClientMovesToTheLeader(t *testing.T) {
	var standbyCalls, leaderCalls, failingCalls atomic.Int64
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		standbyCalls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(Error{Error: NotLeaderMessage, NotLeader: true, Leader: "http://elsewhere"})
	}))
	defer standby.Close()
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaderCalls.Add(1)
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	defer leader.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		failingCalls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable) // overloaded, not a standby: final
		json.NewEncoder(w).Encode(Error{Error: "busy"})
	}))
	defer failing.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + lis.Addr().String()
	lis.Close()

	c, err := NewClient(&Config{Server: dead + ", " + standby.URL + "/," + leader.URL, Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ OK bool }
	if err := c.Do(context.Background(), "POST", "/api/v1/apply", map[string]int{"x": 1}, &out); err != nil || !out.OK {
		t.Fatalf("through a dead server and a standby: %+v, %v", out, err)
	}
	if standbyCalls.Load() != 1 || leaderCalls.Load() != 1 {
		t.Errorf("calls: standby %d, leader %d", standbyCalls.Load(), leaderCalls.Load())
	}
	// The next request goes to the leader first.
	if err := c.Do(context.Background(), "GET", "/api/v1/agents", nil, nil); err != nil {
		t.Fatal(err)
	}
	if standbyCalls.Load() != 1 || leaderCalls.Load() != 2 {
		t.Errorf("second request: standby %d, leader %d calls", standbyCalls.Load(), leaderCalls.Load())
	}

	// A 503 that is not a standby's is final: the request may have been
	// acted on.
	c, _ = NewClient(&Config{Server: failing.URL + "," + leader.URL, Token: "tok"})
	var se *StatusError
	if err := c.Do(context.Background(), "POST", "/api/v1/apply", nil, nil); !errors.As(err, &se) || se.Code != 503 || leaderCalls.Load() != 2 {
		t.Errorf("an overloaded server: %v, leader calls %d", err, leaderCalls.Load())
	}

	// No leader at all.
	c, _ = NewClient(&Config{Server: dead + "," + standby.URL, Token: "tok"})
	var none *NoLeaderError
	before := standbyCalls.Load()
	if err := c.Do(context.Background(), "GET", "/api/v1/agents", nil, nil); !errors.As(err, &none) || len(none.Errs) != 2+maxAgain ||
		!strings.Contains(err.Error(), fmt.Sprintf("(%d times)", 1+maxAgain)) {
		t.Errorf("no leader: %v", err)
	}
	// A name with one address (a load balancer) that led to a standby is
	// asked again on new connections, a bounded number of times.
	if n := standbyCalls.Load() - before; n != 1+maxAgain {
		t.Errorf("the standby was asked %d times, want %d", n, 1+maxAgain)
	}

	for _, bad := range []string{"http://a:1,ftp://b:1", "http://a:1,", "http://a:1,,http://b:1"} {
		if err := (&Config{Server: bad, Token: "t"}).Check(); err == nil {
			t.Errorf("server %q accepted", bad)
		}
	}
}
