package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestClassifyConnectError: internal/client wraps every server verification
// failure in a *tls.CertificateVerificationError (as crypto/tls does), so a
// hostname mismatch (for example a certificate whose subjectAltName has no
// DNS name, which is never accepted on its Common Name) must still get the
// hostname fix, not the "not trusted" one.
func TestClassifyConnectError(t *testing.T) {
	leaf := &x509.Certificate{}
	verify := func(err error) error {
		return fmt.Errorf("auth: Post \"https://mender.local/\": %w", &tls.CertificateVerificationError{Err: err})
	}
	tests := []struct {
		name     string
		err      error
		wantName string
		wantFix  string
	}{
		{"hostname mismatch", verify(x509.HostnameError{Certificate: leaf, Host: "mender.local"}), "tls", "does not name the host in ServerURL"},
		{"unknown authority", verify(x509.UnknownAuthorityError{Cert: leaf}), "tls", "set ServerCertificate"},
		{"expired", verify(x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired}), "tls", "set ServerCertificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, fix := classifyConnectError(tt.err)
			assert.Equal(t, tt.wantName, name)
			assert.Contains(t, fix, tt.wantFix)
		})
	}
}
