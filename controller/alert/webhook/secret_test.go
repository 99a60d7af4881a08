package webhook

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
)

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("EG_TEST_SECRET_SET", "env-s3cret")
	t.Setenv("EG_TEST_SECRET_NEWLINE", "env-s3cret\n") // the environment is taken verbatim
	t.Setenv("EG_TEST_SECRET_EMPTY", "")
	os.Unsetenv("EG_TEST_SECRET_UNSET")

	tests := []struct {
		name    string
		ref     *policy.SecretRef
		want    string
		wantErr string // a part of the error; "" for none
	}{
		{"env", &policy.SecretRef{Env: "EG_TEST_SECRET_SET"}, "env-s3cret", ""},
		{"env verbatim", &policy.SecretRef{Env: "EG_TEST_SECRET_NEWLINE"}, "env-s3cret\n", ""},
		{"env unset", &policy.SecretRef{Env: "EG_TEST_SECRET_UNSET"}, "", "EG_TEST_SECRET_UNSET is not set"},
		{"env empty", &policy.SecretRef{Env: "EG_TEST_SECRET_EMPTY"}, "", "EG_TEST_SECRET_EMPTY is empty"},
		{"file", &policy.SecretRef{File: file("plain", "file-s3cret")}, "file-s3cret", ""},
		{"file newline stripped", &policy.SecretRef{File: file("nl", "file-s3cret\n")}, "file-s3cret", ""},
		{"file CRLF stripped", &policy.SecretRef{File: file("crlf", "file-s3cret\r\n")}, "file-s3cret", ""},
		{"file only one newline stripped", &policy.SecretRef{File: file("nlnl", "file-s3cret\n\n")}, "file-s3cret\n", ""},
		{"file trailing space kept", &policy.SecretRef{File: file("space", "file-s3cret \n")}, "file-s3cret ", ""},
		{"file leading newline kept", &policy.SecretRef{File: file("lead", "\nfile-s3cret")}, "\nfile-s3cret", ""},
		{"file empty", &policy.SecretRef{File: file("empty", "")}, "", "is empty"},
		{"file only a newline", &policy.SecretRef{File: file("onlynl", "\n")}, "", "is empty"},
		{"file missing", &policy.SecretRef{File: filepath.Join(dir, "missing")}, "", "missing"},
		{"nil", nil, "", "no secret"},
		{"neither env nor file", &policy.SecretRef{}, "", "neither env nor file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSecret(tc.ref)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("readSecret = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error %q contains the secret", err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("readSecret = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestReadSecretRotatedFile: the file is read at every call, so a secret
// rotated in place applies to the next attempt.
func TestReadSecretRotatedFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	ref := &policy.SecretRef{File: p}
	for _, s := range []string{"first", "second"} {
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := readSecret(ref); err != nil || string(got) != s {
			t.Fatalf("readSecret = %q, %v; want %q", got, err, s)
		}
	}
}
