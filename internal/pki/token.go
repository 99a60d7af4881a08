package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
)

// Tokens are "<prefix>.<id>.<secret>[...]": the id finds the record, the
// secret proves possession. Only the SHA-256 of a secret is stored (secrets
// are 128 random bits: a slow hash would add nothing), and compared in
// constant time.

const (
	joinPrefix  = "eg1"
	adminPrefix = "egadm1"
	idBytes     = 6
	secretBytes = 16
)

// JoinToken is a one-time join token: "eg1.<id>.<secret>.<ca-fingerprint>".
// The controller keeps the id, the hash of the secret, the node the token
// is bound to and its expiry; the CA fingerprint lets the agent verify the
// controller on first contact, before it trusts anything the controller
// says (kubeadm's --discovery-token-ca-cert-hash, carried in the token).
type JoinToken struct {
	ID, Secret    string
	CAFingerprint string
}

// NewJoinToken returns a fresh token for the CA with the given fingerprint.
func NewJoinToken(caFingerprint string) (JoinToken, error) {
	id, secret, err := newIDSecret()
	if err != nil {
		return JoinToken{}, err
	}
	return JoinToken{ID: id, Secret: secret, CAFingerprint: caFingerprint}, nil
}

func (t JoinToken) String() string {
	return joinPrefix + "." + t.ID + "." + t.Secret + "." + t.CAFingerprint
}

// ParseJoinToken checks a join token's form; it says what is wrong
// without echoing the secret.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != joinPrefix {
		return JoinToken{}, fmt.Errorf("join token: want %s.<id>.<secret>.<ca-sha256>, got %d dot-separated parts starting %q",
			joinPrefix, len(parts), parts[0])
	}
	t := JoinToken{ID: parts[1], Secret: parts[2], CAFingerprint: parts[3]}
	if err := checkHex("id", t.ID, idBytes); err != nil {
		return JoinToken{}, fmt.Errorf("join token: %w", err)
	}
	if err := checkHex("secret", t.Secret, secretBytes); err != nil {
		return JoinToken{}, fmt.Errorf("join token: %w", err)
	}
	if err := checkHex("CA fingerprint", t.CAFingerprint, sha256.Size); err != nil {
		return JoinToken{}, fmt.Errorf("join token: %w", err)
	}
	return t, nil
}

// AdminToken is the controller's admin credential: "egadm1.<id>.<secret>",
// sent as an HTTP bearer token.
type AdminToken struct {
	ID, Secret string
}

// NewAdminToken returns a fresh admin token.
func NewAdminToken() (AdminToken, error) {
	id, secret, err := newIDSecret()
	return AdminToken{ID: id, Secret: secret}, err
}

func (t AdminToken) String() string { return adminPrefix + "." + t.ID + "." + t.Secret }

// ParseAdminToken checks an admin token's form.
func ParseAdminToken(s string) (AdminToken, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != adminPrefix {
		return AdminToken{}, fmt.Errorf("admin token: want %s.<id>.<secret>", adminPrefix)
	}
	t := AdminToken{ID: parts[1], Secret: parts[2]}
	if err := checkHex("id", t.ID, idBytes); err != nil {
		return AdminToken{}, fmt.Errorf("admin token: %w", err)
	}
	if err := checkHex("secret", t.Secret, secretBytes); err != nil {
		return AdminToken{}, fmt.Errorf("admin token: %w", err)
	}
	return t, nil
}

// HashSecret is what is stored of a token secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches compares a secret with a stored hash in constant time.
func SecretMatches(hash, secret string) bool {
	return subtle.ConstantTimeCompare([]byte(hash), []byte(HashSecret(secret))) == 1
}

func newIDSecret() (id, secret string, err error) {
	b := make([]byte, idBytes+secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("random token: %w", err)
	}
	return hex.EncodeToString(b[:idBytes]), hex.EncodeToString(b[idBytes:]), nil
}

func checkHex(what, s string, n int) error {
	if len(s) != 2*n {
		return fmt.Errorf("%s is %d characters long, want %d", what, len(s), 2*n)
	}
	if _, err := hex.DecodeString(s); err != nil || strings.ToLower(s) != s {
		return fmt.Errorf("%s is not lower-case hexadecimal", what)
	}
	return nil
}
