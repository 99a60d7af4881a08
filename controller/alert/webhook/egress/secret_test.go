package egress

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/policy"
)

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return name
	}
	t.Setenv("EASTGUARD_TEST_SECRET_SET", "env-s3cret")
	t.Setenv("EASTGUARD_TEST_SECRET_NEWLINE", "env-s3cret\n") // the environment is taken verbatim
	t.Setenv("EASTGUARD_TEST_SECRET_EMPTY", "")
	t.Setenv("HOME_SECRET", "not for webhooks")
	os.Unsetenv("EASTGUARD_TEST_SECRET_UNSET")
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("outside\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(dir, "zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	file("sub/nested", "nested-s3cret\n")
	if err := os.Symlink("sub/nested", filepath.Join(dir, "inside-link")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		ref     *policy.SecretRef
		want    string
		wantErr string
	}{
		{"env", &policy.SecretRef{Env: "EASTGUARD_TEST_SECRET_SET"}, "env-s3cret", ""},
		{"env verbatim", &policy.SecretRef{Env: "EASTGUARD_TEST_SECRET_NEWLINE"}, "env-s3cret\n", ""},
		{"env unset", &policy.SecretRef{Env: "EASTGUARD_TEST_SECRET_UNSET"}, "", "EASTGUARD_TEST_SECRET_UNSET is not set"},
		{"env empty", &policy.SecretRef{Env: "EASTGUARD_TEST_SECRET_EMPTY"}, "", "EASTGUARD_TEST_SECRET_EMPTY is empty"},
		{"env without the prefix", &policy.SecretRef{Env: "HOME_SECRET"}, "", "only variables named EASTGUARD_"},
		{"file", &policy.SecretRef{File: file("plain", "file-s3cret")}, "file-s3cret", ""},
		{"file newline stripped", &policy.SecretRef{File: file("nl", "file-s3cret\n")}, "file-s3cret", ""},
		{"file CRLF stripped", &policy.SecretRef{File: file("crlf", "file-s3cret\r\n")}, "file-s3cret", ""},
		{"file only one newline stripped", &policy.SecretRef{File: file("nlnl", "file-s3cret\n\n")}, "file-s3cret\n", ""},
		{"file trailing space kept", &policy.SecretRef{File: file("space", "file-s3cret \n")}, "file-s3cret ", ""},
		{"file leading newline kept", &policy.SecretRef{File: file("lead", "\nfile-s3cret")}, "\nfile-s3cret", ""},
		{"file in a subdirectory", &policy.SecretRef{File: "sub/nested"}, "nested-s3cret", ""},
		{"symlink inside the directory", &policy.SecretRef{File: "inside-link"}, "nested-s3cret", ""},
		{"file of the maximum size", &policy.SecretRef{File: file("max", strings.Repeat("k", MaxSecretBytes))}, strings.Repeat("k", MaxSecretBytes), ""},
		{"file empty", &policy.SecretRef{File: file("empty", "")}, "", "is empty"},
		{"file only a newline", &policy.SecretRef{File: file("onlynl", "\n")}, "", "is empty"},
		{"file missing", &policy.SecretRef{File: "missing"}, "", "missing does not exist under"},
		{"absolute path outside", &policy.SecretRef{File: outside}, "", "not an absolute path"},
		{"dot-dot outside", &policy.SecretRef{File: "../" + filepath.Base(filepath.Dir(outside)) + "/outside"}, "", `".." elements`},
		{"symlink out of the directory", &policy.SecretRef{File: "escape"}, "", "escapes"},
		{"symlink to /dev/zero", &policy.SecretRef{File: "zero"}, "", "escapes"},
		{"FIFO", &policy.SecretRef{File: "fifo"}, "", "not a regular file"},
		{"directory", &policy.SecretRef{File: "sub"}, "", "not a regular file"},
		{"oversized file", &policy.SecretRef{File: file("big", strings.Repeat("k", MaxSecretBytes+1))}, "", "larger than 4096 bytes"},
		{"neither env nor file", &policy.SecretRef{}, "", "neither env nor file"},
		{"nil", nil, "", "no secret configured"},
	}
	s := NewSecrets(dir)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			var got []byte
			var err error
			go func() {
				defer close(done)
				got, err = s.Read(tc.ref)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Read blocked (a FIFO opened?)")
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Read = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				if tc.ref != nil && tc.ref.File != "" && strings.Contains(err.Error(), "outside\n") {
					t.Errorf("error shows a file's content: %v", err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("Read = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// A device node inside the directory (mknod needs root).
	if err := syscall.Mknod(filepath.Join(dir, "null"), syscall.S_IFCHR|0o600, 1<<8|3); err == nil {
		if _, err := s.Read(&policy.SecretRef{File: "null"}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a character device: %v", err)
		}
	} else if !errors.Is(err, syscall.EPERM) {
		t.Fatal(err)
	}
	if _, err := NewSecrets("").Read(&policy.SecretRef{File: "plain"}); err == nil || !strings.Contains(err.Error(), "no --secrets-dir") {
		t.Errorf("a file secret without --secrets-dir: %v", err)
	}
	if _, err := s.Read(&policy.SecretRef{File: "missing"}); !errors.Is(err, ErrSecretNotFound) {
		t.Errorf("a missing file is not ErrSecretNotFound: %v", err)
	}
}

// TestReadSecretCachedUntilChanged: a file is read once; it is read again
// only when it changes (size, modification time, or a new file renamed
// over it), so a rotated secret applies to the next attempt while an
// attempt costs a stat.
func TestReadSecretCachedUntilChanged(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "secret")
	mtime := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	write := func(content string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSecrets(dir)
	ref := &policy.SecretRef{File: "secret"}
	read := func(want string) {
		t.Helper()
		if got, err := s.Read(ref); err != nil || string(got) != want {
			t.Fatalf("Read = %q, %v; want %q", got, err, want)
		}
	}
	write("first", mtime)
	read("first")
	// Same size and time, in place: not read again (the cached value).
	write("xxxxx", mtime)
	read("first")
	// Rotated: a new modification time.
	write("second", mtime.Add(time.Second))
	read("second")
	// Rotated by rename (a new inode), same size and time.
	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(tmp, []byte("third!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mtime.Add(time.Second), mtime.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	read("third!")
}
