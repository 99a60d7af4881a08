package testutil

import (
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
)

// HugeRSACSR returns a DER certificate signing request whose public key is
// an RSA key with a modulus of modulusBytes bytes, and whose signature is
// as long as the modulus, so that checking it costs what an attacker
// wants it to cost (a 64 KiB modulus: seconds; no such key could be
// generated in a test's lifetime, so the CSR is assembled field by field).
// The signature is not valid: the modulus is no product of known primes.
func HugeRSACSR(modulusBytes int) []byte {
	n := new(big.Int).Lsh(big.NewInt(1), uint(8*modulusBytes-1))
	n.Add(n, big.NewInt(0x2b)) // odd, full length
	spki, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: 65537})
	if err != nil {
		panic(err)
	}
	subject, err := asn1.Marshal(pkix.Name{CommonName: "node-a"}.ToRDNSequence())
	if err != nil {
		panic(err)
	}
	// RFC 2986: CertificationRequestInfo, then the signature over it.
	type info struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}
	tbs, err := asn1.Marshal(info{Subject: asn1.RawValue{FullBytes: subject}, PublicKey: asn1.RawValue{FullBytes: spki}})
	if err != nil {
		panic(err)
	}
	sig := make([]byte, modulusBytes)
	sig[len(sig)-1] = 1
	der, err := asn1.Marshal(struct {
		Info      asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{
		Info: asn1.RawValue{FullBytes: tbs},
		// sha256WithRSAEncryption
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, Parameters: asn1.NullRawValue},
		Signature: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		panic(err)
	}
	return der
}
