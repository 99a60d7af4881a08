package apiclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c := &Config{Server: "http://127.0.0.1:8080", Token: "egadm1.x.y", CACert: "-----BEGIN CERTIFICATE-----\n...\n"}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.conf")
	os.WriteFile(path, data, 0o600)
	back, err := LoadConfig(path)
	if err != nil || *back != *c {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for name, text := range map[string]string{
		"unknown field": "server: http://h:1\ntoken: t\ntokn: x\n",
		"no token":      "server: http://h:1\n",
		"bad scheme":    "server: ftp://h:1\ntoken: t\n",
	} {
		os.WriteFile(path, []byte(text), 0o600)
		if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v (want an error naming the file)", name, err)
		}
	}
}

func TestClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"unauthorized: admin token not valid"}`))
			return
		}
		w.WriteHeader(http.StatusUnprocessableEntity)
		w.Write([]byte(`{"error":"invalid policy","diagnostics":["f.yaml:1:1: kind: bad"]}`))
	}))
	defer srv.Close()
	for token, want := range map[string]int{"bad": 401, "good": 422} {
		c, err := NewClient(&Config{Server: srv.URL, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Do(context.Background(), http.MethodGet, "/api/v1/x", nil, nil)
		var se *StatusError
		if !errors.As(err, &se) || se.Code != want {
			t.Errorf("token %s: %v", token, err)
		}
		if want == 422 && (len(se.Body.Diagnostics) != 1 || !strings.Contains(se.Error(), "invalid policy (HTTP 422)")) {
			t.Errorf("422 body: %+v", se.Body)
		}
	}
	if kind, err := ParseKind("Policies"); err != nil || kind != "Policy" {
		t.Errorf("ParseKind: %q %v", kind, err)
	}
	if _, err := ParseKind("pods"); err == nil {
		t.Error("ParseKind accepted pods")
	}
}
