package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
)

// EncodeCertsPEM encodes certs as consecutive "CERTIFICATE" PEM blocks, in
// the order given (leaf first for a chain).
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // writes to a bytes.Buffer cannot fail
	}
	return buf.Bytes()
}

// ParseCertsPEM parses every "CERTIFICATE" PEM block in data, in order, and
// ignores blocks of other types. Data without any certificate gives an error
// wrapping ErrNoPEM; a certificate that does not parse gives an error naming
// its position.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for n := 1; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate #%d: %w", n, err)
		}
		certs = append(certs, c)
		n++
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: expected at least one \"CERTIFICATE\" PEM block", ErrNoPEM)
	}
	return certs, nil
}

// CertFingerprint returns "sha256:" and the hex of the first 8 bytes of the
// SHA-256 of the certificate's DER encoding: a short name for logs.
func CertFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
