package keystore_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// TestOpenSwappedOrWrongFiles: a certificate given as the key (usually with
// the key given as the certificate) is diagnosed from the files' content.
// A certificate file is world-readable, so the permission check alone would
// send the user to chmod 600 a certificate, which fixes nothing.
func TestOpenSwappedOrWrongFiles(t *testing.T) {
	ca := newCA(t)
	key := genKey(t, pki.ECDSAP256)
	leaf := issue(t, ca, key.Public(), "device-1", time.Now().Add(-time.Hour), 100*day)
	keyPEM, certPEM := pkcs8(t, key), pki.EncodeCertsPEM(leaf)

	tests := []struct {
		name        string
		keyFile     []byte // content of the file given as the key
		keyMode     os.FileMode
		certFile    []byte // content of the file given as the certificate; nil: no certificate configured
		sentinel    error
		contains    []string
		notContains []string
	}{
		{name: "swapped, certificate world-readable", keyFile: certPEM, keyMode: 0o644, certFile: keyPEM,
			sentinel:    keystore.ErrSwapped,
			contains:    []string{"look swapped", "holds a certificate", "holds a private key", "swap the two paths"},
			notContains: []string{"chmod"}},
		{name: "swapped, both 0600", keyFile: certPEM, keyMode: 0o600, certFile: keyPEM,
			sentinel: keystore.ErrSwapped, contains: []string{"look swapped"}},
		{name: "certificate as key, no certificate file", keyFile: certPEM, keyMode: 0o644,
			sentinel: keystore.ErrUnsupported, contains: []string{"not a private key"},
			notContains: []string{"chmod", "swapped"}},
		{name: "certificate as key and as certificate", keyFile: certPEM, keyMode: 0o644, certFile: certPEM,
			sentinel: keystore.ErrUnsupported, contains: []string{"not a private key"},
			notContains: []string{"chmod", "swapped"}},
		{name: "key as certificate too", keyFile: keyPEM, keyMode: 0o600, certFile: keyPEM,
			sentinel: pki.ErrNoPEM, contains: []string{"holds a private key, not a certificate"}},
		{name: "world-readable key still needs chmod", keyFile: keyPEM, keyMode: 0o644, certFile: certPEM,
			sentinel: keystore.ErrInsecurePermissions, contains: []string{"chmod 600"}, notContains: []string{"swapped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			keyPath, certPath := filepath.Join(dir, "given-as-key.pem"), filepath.Join(dir, "given-as-cert.pem")
			writeFile(t, keyPath, tt.keyFile, tt.keyMode)
			opts := keystore.Options{}
			if tt.certFile != nil {
				writeFile(t, certPath, tt.certFile, 0o600)
				opts.CertFile = certPath
			}
			k, err := keystore.Open(t.Context(), keyPath, opts)
			require.Error(t, err)
			assert.Nil(t, k)
			assert.ErrorIs(t, err, tt.sentinel)
			msg := err.Error()
			for _, s := range tt.contains {
				assert.Contains(t, msg, s)
			}
			for _, s := range tt.notContains {
				assert.NotContains(t, msg, s)
			}
			assert.NotContains(t, msg, "PRIVATE KEY-----", "no PEM content in messages")
		})
	}
}
