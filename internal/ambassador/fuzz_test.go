package ambassador

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// FuzzAuthRequest drives the auth request path with arbitrary bodies and
// signatures. Property: whatever the ambassador forwards is the exact input,
// parses as an auth request carrying the certificate's key, and verifies
// with that key; everything else reaches the upstream not at all.
func FuzzAuthRequest(f *testing.F) {
	up := newFakeUpstream()
	ca := newTestCA(f, "Fuzz CA")
	caFile := writeFile(f, filepath.Join(f.TempDir(), "fuzz-ca.pem"), ca.pem())
	a := newOfflineAmbassador(f, up, func(o *Options) { o.ClientCAFiles = []string{caFile} })
	cert, key := ca.issue(f, leafOpts{cn: "fuzz"})

	body, sig := authBody(f, testIDData, key)
	f.Add(body, sig)
	f.Add(body[:len(body)-1], sig)
	f.Add([]byte(`{"id_data":"[]","pubkey":""}`), sig)
	f.Add([]byte(`{}`), "")
	other, osig := authBody(f, testIDData, genKey(f, "p256"))
	f.Add(other, osig)
	for _, kind := range []string{"ecdsa-p256", "ed25519", "rsa2048"} {
		if b, err := os.ReadFile(filepath.Join(recordedDir, kind, "body.bin")); err == nil {
			f.Add(b, "")
		}
	}

	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		before := up.counts()
		r := httptest.NewRequest(http.MethodPost, menderapi.PathAuthRequests, bytes.NewReader(body))
		r.Header.Set(menderapi.HeaderSignature, sig)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, r)

		forwarded := up.counts().auths > before.auths
		if !forwarded {
			assert.NotEqual(t, http.StatusOK, w.Code, "nothing forwarded, so no token")
			assert.Equal(t, before.device, up.counts().device)
			return
		}
		assert.Equal(t, body, up.lastAuth().Body, "forwarded unchanged")
		req, err := menderapi.ParseAuthRequest(body)
		require.NoError(t, err, "only parsable requests are forwarded")
		assert.True(t, menderapi.PublicKeysEqual(cert.PublicKey, req.Key), "only the certificate's key is forwarded")
		assert.NoError(t, menderapi.Verify(cert.PublicKey, body, sig), "only verified requests are forwarded")
	})
}

// FuzzParseBlacklist checks that parsing never panics and that every parsed
// serial is in canonical form and parses back to itself.
func FuzzParseBlacklist(f *testing.F) {
	f.Add([]byte("# c\n0x00ABcd\r\n5E:D4\n\n"))
	f.Add([]byte("zz\n"))
	f.Add([]byte("0x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bl, err := parseBlacklist(data)
		if err != nil {
			return
		}
		for k := range bl {
			n, err := pki.ParseSerial(k)
			require.NoError(t, err, "key %q parses", k)
			assert.Equal(t, k, serialKey(n), "key is canonical")
		}
	})
}

// FuzzParseBinding checks that ParseBinding never panics and that a parsed
// binding round-trips through String.
func FuzzParseBinding(f *testing.F) {
	for _, s := range []string{"mac=CN", "a=serial", "=", "x=SAN-DNS=y", "ou=OU"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBinding(s)
		if err != nil {
			assert.ErrorIs(t, err, ErrBadBinding)
			return
		}
		again, err := ParseBinding(b.String())
		require.NoError(t, err)
		assert.Equal(t, b, again)
	})
}
