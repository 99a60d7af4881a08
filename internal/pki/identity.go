package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// nodeURIPrefix starts the URI SAN that names a node certificate's node.
const nodeURIPrefix = "spiffe://eastguard/node/"

// NodeURI returns the URI SAN of node's certificates.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: "eastguard", Path: "/node/" + node}
}

// ErrNoNodeIdentity is matched by the error NodeOf returns for a
// certificate that names no node.
var ErrNoNodeIdentity = errors.New("certificate names no node")

// NodeOf returns the node a certificate speaks for: the one in its
// spiffe://eastguard/node/ URI SAN. A certificate with none, or more than
// one, names no node.
func NodeOf(cert *x509.Certificate) (string, error) {
	var node string
	for _, u := range cert.URIs {
		s := u.String()
		if !strings.HasPrefix(s, nodeURIPrefix) {
			continue
		}
		if node != "" {
			return "", fmt.Errorf("%w: several node URIs", ErrNoNodeIdentity)
		}
		node = strings.TrimPrefix(s, nodeURIPrefix)
	}
	if node == "" {
		return "", fmt.Errorf("%w: no %s URI SAN", ErrNoNodeIdentity, nodeURIPrefix+"NAME")
	}
	if err := ValidNodeName(node); err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoNodeIdentity, err)
	}
	return node, nil
}

// ValidNodeName checks a node name by the rule the policy language applies
// to spec.node: 1 to 253 letters, digits, '-', '_' and '.', starting with a
// letter or digit.
func ValidNodeName(name string) error {
	if name == "" {
		return errors.New("node name is empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("node name %.20q... is %d characters long (max 253)", name, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '-' && c != '_' && c != '.') {
			return fmt.Errorf("node name %q: want letters, digits, '-', '_' and '.', starting with a letter or digit", name)
		}
	}
	return nil
}

// Serial formats a certificate serial number the way the store and logs
// name certificates: lower-case hexadecimal.
func Serial(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }
