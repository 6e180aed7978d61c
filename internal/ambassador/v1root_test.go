package ambassador

import (
	"crypto"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// Mender's mTLS guide makes its CA with `openssl req -new -x509 -config
// ca.conf`: a self-signed version-1 certificate without basic constraints,
// which OpenSSL treats as a CA. The ambassador does too, for devices signed
// by it (by `simulator pki device` or by the guide's `openssl x509 -req`).
// A version-1 certificate that is not self-signed (the guide's server
// certificate, put in the bundle by mistake) is no CA: it is ignored, so
// its key cannot mint device certificates.
func TestClientCABundleVersion1Roots(t *testing.T) {
	v1 := pkitest.NewV1CA(t)
	tlsLeaf, v1Leaf := v1.LegacyServerCert(t, "localhost")
	leafAsCA := &pki.CA{Cert: v1Leaf, Key: tlsLeaf.PrivateKey.(crypto.Signer)}

	var bundle string
	e := newEnv(t, envConfig{mutate: func(e *env, o *Options) {
		bundle = writeFile(t, filepath.Join(e.dir, "guide-ca.pem"), pki.EncodeCertsPEM(v1.Cert, v1Leaf))
		o.ClientCAFiles = []string{bundle}
	}})

	issue := func(ca *pki.CA, cn string) *device {
		key, err := pki.GenerateKey(pki.ECDSAP256)
		require.NoError(t, err)
		cert, err := ca.IssueClient(key.Public(), cn, time.Hour)
		require.NoError(t, err)
		return e.deviceWith(cert, key)
	}
	legacyTLS, legacyDev := v1.LegacyServerCert(t, "legacy-device") // version 1, as openssl x509 -req makes

	tests := []struct {
		name string
		dev  *device
		ok   bool
	}{
		{"device certificate from pki, signed by the v1 root", issue(v1.CA, "dev-1"), true},
		{"version-1 device certificate signed by the v1 root", e.deviceWith(legacyDev, legacyTLS.PrivateKey.(crypto.Signer)), true},
		{"certificate signed by a version-1 leaf of the bundle", issue(leafAsCA, "forged"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := e.get(tt.dev, "/api/devices/v1/inventory/device/attributes")
			if tt.ok {
				require.NoError(t, err, "the TLS handshake succeeds")
				assert.NotZero(t, a.status)
			} else {
				require.Error(t, err, "the TLS handshake fails")
			}
		})
	}

	t.Run("a bundle of leaves only is refused", func(t *testing.T) {
		o := e.opts
		o.ClientCAFiles = []string{writeFile(t, filepath.Join(t.TempDir(), "leaf.pem"), pki.EncodeCertsPEM(v1Leaf))}
		_, err := New(o)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "hold no CA certificate")
	})
}
