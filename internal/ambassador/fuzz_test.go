package ambassador

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
		b, err := os.ReadFile(filepath.Join(recordedDir, kind, "body.bin"))
		require.NoError(f, err, "the recorded Mender 3.5 requests seed the corpus")
		f.Add(b, "")
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

// FuzzIdentityPolicy drives the identity policy with arbitrary id_data.
// Properties: it never panics; whatever passes holds only allowed keys and
// each bound attribute is exactly the certificate's CN as a string.
func FuzzIdentityPolicy(f *testing.F) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "dev1"}, SerialNumber: big.NewInt(7)}
	p := newIdentityPolicy([]Binding{{Attr: "mac", Field: FieldCN}}, []string{"serial_no"})
	for _, s := range []string{`{"mac":"dev1"}`, `{"mac":["dev1"]}`, `{"mac":"dev1","serial_no":"x"}`,
		`{"mac":"dev1","other":1}`, `{"MAC":"dev1"}`, `{}`, `[]`, `{"mac":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, idData string) {
		ident, _, _, err := menderapi.CanonicalIdentity(idData)
		if err != nil {
			return
		}
		if err := p.check(ident, cert); err != nil {
			assert.True(t, errors.Is(err, ErrIdentityMismatch) || errors.Is(err, ErrIdentityKeyNotAllowed), "%v", err)
			return
		}
		assert.Equal(t, "dev1", ident["mac"], "the bound attribute is the CN, as a string")
		for k := range ident {
			assert.Contains(t, []string{"mac", "serial_no"}, k)
		}
	})
}

// FuzzPubKeyPEM checks the auth pubkey rule: what passes is exactly one
// PUBLIC KEY block, so the key preauthorized (the normalised PEM of the
// parsed key) is the only key in the text.
func FuzzPubKeyPEM(f *testing.F) {
	key := genKey(f, "p256")
	norm, err := menderapi.MarshalPublicKeyPEM(key.Public())
	require.NoError(f, err)
	for _, s := range []string{norm, norm + norm, "x\n" + norm, norm + "x", strings.ReplaceAll(norm, "\n", "\r\n"),
		"-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END PUBLIC KEY-----\n", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkSinglePublicKeyPEM(s) != nil {
			return
		}
		blk, rest := pem.Decode([]byte(s))
		require.NotNil(t, blk)
		assert.Equal(t, "PUBLIC KEY", blk.Type)
		assert.Empty(t, blk.Headers)
		assert.Empty(t, bytes.TrimSpace(rest), "nothing after the block")
		if k, err := menderapi.ParsePublicKeyPEM(s); err == nil {
			n, err := menderapi.MarshalPublicKeyPEM(k)
			require.NoError(t, err)
			again, err := menderapi.ParsePublicKeyPEM(n)
			require.NoError(t, err)
			assert.True(t, menderapi.PublicKeysEqual(k, again), "normalisation keeps the key")
		}
	})
}
