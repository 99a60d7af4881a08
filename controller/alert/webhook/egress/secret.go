package egress

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eastguard/eastguard/internal/policy"
)

// MaxSecretBytes bounds a secret file: an HMAC key needs far less, and a
// policy author must not make the controller read a huge file.
const MaxSecretBytes = 4 << 10

// ErrSecretNotFound is a secret whose variable is not set or whose file
// does not exist (it may appear later; other errors are refusals).
var ErrSecretNotFound = errors.New("secret not found")

// missing is an ErrSecretNotFound that says which secret.
type missing string

func (m missing) Error() string        { return string(m) }
func (m missing) Is(target error) bool { return target == ErrSecretNotFound }

// Secrets reads webhooks' HMAC secrets where their secretFrom says:
//   - env: a variable of the controller's environment, named EASTGUARD_...
//     (policy validation refuses other names; checked here again);
//   - file: a regular file under Dir, named relative to it. It is opened
//     through an os.Root, so neither ".." nor a symlink leads out of Dir
//     (symlinks inside it, as a mounted Kubernetes Secret has, are
//     fine); it must be a regular file (not a FIFO, a device such as
//     /dev/zero, or a directory) of at most MaxSecretBytes.
//
// A file is read once and kept; it is read again only when its identity,
// size or modification time changes (a rotated secret applies at the next
// attempt), so a delivery attempt costs a stat, not a read. Safe for
// concurrent use.
type Secrets struct {
	Dir string

	mu    sync.Mutex
	files map[string]cachedSecret
}

type cachedSecret struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
	value    []byte
}

// NewSecrets returns secrets whose files are under dir ("" when the
// controller has no --secrets-dir: file secrets are then refused).
func NewSecrets(dir string) *Secrets {
	return &Secrets{Dir: dir, files: map[string]cachedSecret{}}
}

// Read returns the secret ref names. An empty secret is an error: signing
// with it would give receivers a signature anyone can forge. Errors name
// the variable or file, never the content.
func (s *Secrets) Read(ref *policy.SecretRef) ([]byte, error) {
	switch {
	case ref == nil:
		return nil, errors.New("no secret configured")
	case ref.Env != "":
		if !strings.HasPrefix(ref.Env, policy.SecretEnvPrefix) {
			return nil, fmt.Errorf("secret env %s: only variables named %s... may hold secrets", ref.Env, policy.SecretEnvPrefix)
		}
		v, ok := os.LookupEnv(ref.Env)
		if !ok {
			return nil, missing(fmt.Sprintf("secret env %s is not set", ref.Env))
		}
		if v == "" {
			return nil, fmt.Errorf("secret env %s is empty", ref.Env)
		}
		return []byte(v), nil
	case ref.File != "":
		return s.readFile(ref.File)
	default:
		return nil, errors.New("secretFrom names neither env nor file")
	}
}

func (s *Secrets) readFile(name string) ([]byte, error) {
	if err := policy.CheckSecretFileName(name); err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	if s.Dir == "" {
		return nil, fmt.Errorf("secret file %s: the controller has no --secrets-dir", name)
	}
	root, err := os.OpenRoot(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("secret file %s: --secrets-dir: %w", name, err)
	}
	defer root.Close()
	// Stat first, so a FIFO is never opened (opening one blocks until a
	// writer comes) and an oversized file never read.
	fi, err := root.Stat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, missing(fmt.Sprintf("secret file %s does not exist under %s", name, s.Dir))
		}
		return nil, fmt.Errorf("secret file %s: %w", name, err)
	}
	if err := checkSecretFile(name, fi); err != nil {
		return nil, err
	}
	id := identity(fi)
	s.mu.Lock()
	c, ok := s.files[name]
	s.mu.Unlock()
	if ok && c.dev == id.dev && c.ino == id.ino && c.size == id.size && c.mtime.Equal(id.mtime) {
		return c.value, nil
	}
	// O_NONBLOCK: should the file have become a FIFO since the stat, the
	// open returns at once and the fstat below refuses it.
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", name, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("secret file %s: %w", name, err)
	}
	if err := checkSecretFile(name, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("secret file %s: %w", name, err)
	}
	if len(b) > MaxSecretBytes {
		return nil, fmt.Errorf("secret file %s is larger than %d bytes", name, MaxSecretBytes)
	}
	// Editors and `echo` end files with a newline that is not part of
	// the secret; exactly one is removed so a secret may still end in
	// whitespace on purpose.
	v := string(b)
	if t, ok := strings.CutSuffix(v, "\n"); ok {
		v = strings.TrimSuffix(t, "\r")
	}
	if v == "" {
		return nil, fmt.Errorf("secret file %s is empty", name)
	}
	id = identity(fi)
	id.value = []byte(v)
	s.mu.Lock()
	s.files[name] = id
	s.mu.Unlock()
	return id.value, nil
}

func checkSecretFile(name string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("secret file %s is not a regular file (%s)", name, fi.Mode().Type())
	}
	if fi.Size() > MaxSecretBytes {
		return fmt.Errorf("secret file %s is larger than %d bytes", name, MaxSecretBytes)
	}
	return nil
}

func identity(fi fs.FileInfo) cachedSecret {
	c := cachedSecret{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		c.dev, c.ino = uint64(st.Dev), st.Ino
	}
	return c
}
