package postgres

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"

	"github.com/eastguard/eastguard/controller/store"
)

// The CA's private key is sealed with AES-256-GCM under a key the
// controller reads from a file (--ca-key-encryption-key-file), so that
// the database (its dumps, backups, replicas and whoever administers it)
// never holds it in clear. The CA certificate is public and stays in
// clear. Sealed form: sealVersion, a 12-byte random nonce, the
// ciphertext with its tag; the additional data binds it to this use.
const (
	sealVersion byte = 1
	sealAAD          = "eastguard ca key v1"
	// KeySize is the length of the sealing key.
	KeySize = 32
)

// ErrCAKeyWrongKey: the stored CA key cannot be unsealed with the given
// key (a wrong key file, or a changed row).
var ErrCAKeyWrongKey = errors.New("the CA key in the database cannot be decrypted with this key: wrong --ca-key-encryption-key-file?")

type cipherKey struct{ aead cipher.AEAD }

func newCipherKey(key []byte) (cipherKey, error) {
	if len(key) != KeySize {
		return cipherKey{}, fmt.Errorf("CA key encryption key: %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return cipherKey{}, fmt.Errorf("CA key encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return cipherKey{}, fmt.Errorf("CA key encryption key: %w", err)
	}
	return cipherKey{aead: aead}, nil
}

func (k cipherKey) seal(plain []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal CA key: %w", err)
	}
	out := append([]byte{sealVersion}, nonce...)
	return k.aead.Seal(out, nonce, plain, []byte(sealAAD)), nil
}

func (k cipherKey) open(sealed []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < 1+n+k.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("CA key in the database: not a sealed key of version %d", sealVersion)
	}
	plain, err := k.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(sealAAD))
	if err != nil {
		return nil, ErrCAKeyWrongKey
	}
	return plain, nil
}

// LoadKeyFile reads a CA key encryption key: a file of exactly 32 bytes
// (raw), or of 64 hex digits (a trailing newline allowed). Make one with
// `head -c 32 /dev/urandom > FILE` or `openssl rand -hex 32 > FILE`.
func LoadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-key-encryption-key-file: %w", err)
	}
	if len(b) == KeySize {
		return b, nil
	}
	h := bytes.TrimSpace(b)
	if len(h) == 2*KeySize {
		key := make([]byte, KeySize)
		if _, err := hex.Decode(key, h); err == nil {
			return key, nil
		}
	}
	return nil, fmt.Errorf("--ca-key-encryption-key-file %s: want %d random bytes, raw or as %d hex digits (openssl rand -hex %d)",
		path, KeySize, 2*KeySize, KeySize)
}

// checkCAKey unseals the stored CA key, if there is one, so that a wrong
// key is refused at start, before anything is written.
func (s *Postgres) checkCAKey(ctx context.Context) error {
	v, err := schemaVersion(ctx, s.pool)
	if err != nil || v == 0 {
		return err
	}
	if _, _, err := s.CA(ctx); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("postgres store: %w", err)
	}
	return nil
}

func (s *Postgres) CA(ctx context.Context) ([]byte, []byte, error) {
	var cert, sealed []byte
	err := s.pool.QueryRow(ctx, "SELECT cert_pem, key_sealed FROM ca WHERE id = 1").Scan(&cert, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, store.ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read CA: %w", classify(err))
	}
	key, err := s.cakey.open(sealed)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA: %w", err)
	}
	return cert, key, nil
}

func (s *Postgres) InitCA(ctx context.Context, certPEM, keyPEM []byte) error {
	sealed, err := s.cakey.seal(keyPEM)
	if err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, "INSERT INTO ca (id, cert_pem, key_sealed) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING", certPEM, sealed)
	if err != nil {
		return fmt.Errorf("store CA: %w", classify(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("store CA: %w", store.ErrExists)
	}
	return nil
}
