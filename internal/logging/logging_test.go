package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestNew(t *testing.T) {
	var buf bytes.Buffer
	log, err := New("json", "info", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.Info("shown")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON line: %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["time"] == nil {
		t.Errorf("record %v", rec)
	}
	if _, err := New("xml", "info", &buf); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: %v", err)
	}
	if _, err := New("json", "loud", &buf); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
}

// TestDurationsHaveUnits: a zap.Duration is written with its unit in both
// formats. (Before: 1.5 in JSON and 1.5 on the console, seconds unsaid.)
func TestDurationsHaveUnits(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		var buf bytes.Buffer
		log, err := New(format, "info", &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("waited", zap.Duration("retry-in", 1500*time.Millisecond), zap.Duration("duration", 250*time.Microsecond))
		for _, want := range []string{"1.5s", "250µs"} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("%s: %q lacks %q", format, buf.String(), want)
			}
		}
		if format == "json" {
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["retry-in"] != "1.5s" {
				t.Errorf("json: retry-in is %#v, want the string \"1.5s\" (%v)", rec["retry-in"], err)
			}
		}
	}
}
