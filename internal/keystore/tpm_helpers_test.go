package keystore_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// tpmBackend is one TPM the shared suite runs against: the in-process
// simulator or an swtpm process.
type tpmBackend struct {
	// open returns a new *keystore.TPM for the backend's TPM; the backend
	// closes it at cleanup.
	open func(t *testing.T) *keystore.TPM
	// raw returns a raw connection for setting up foreign objects; it must
	// not be used while a keystore command runs. done releases it.
	raw func(t *testing.T) (tp transport.TPM, done func())
	// restart reboots the TPM (simulator reset, swtpm process restart) and
	// returns a TPM opened after the reboot.
	restart func(t *testing.T) *keystore.TPM
}

// Handles the suite uses; each subtest uses its own.
const (
	hECDSA     = 0x81000100
	hRSA       = 0x81000101
	hReplace   = 0x81000102
	hForeign   = 0x81000103
	hEmpty     = 0x81000104
	hPersist   = 0x81000105
	hPlatform  = 0x81800000
	authIDData = `{"mac":"52:54:00:ab:cd:ef"}`
)

func handleRef(h uint32) string { return fmt.Sprintf("handle:0x%08x", h) }

// assertNoTransients fails when the TPM holds transient objects: every
// keystore operation must flush what it loads.
func assertNoTransients(t *testing.T, tp *keystore.TPM) {
	t.Helper()
	info, err := tp.Info(t.Context())
	require.NoError(t, err)
	assert.Zero(t, info.TransientObjects, "transient objects left loaded in %s", info.Device)
}

// runTPMSuite runs the keystore TPM tests against one backend.
func runTPMSuite(t *testing.T, b tpmBackend) {
	tp := b.open(t)

	for _, tc := range []struct {
		kt     pki.KeyType
		handle uint32
	}{{pki.ECDSAP256, hECDSA}, {pki.RSA2048, hRSA}} {
		t.Run("generate and sign "+string(tc.kt), func(t *testing.T) {
			testGenerateAndSign(t, tp, tc.kt, tc.handle)
			assertNoTransients(t, tp)
		})
	}
	t.Run("replace only our own key", func(t *testing.T) {
		testReplace(t, tp, b)
		assertNoTransients(t, tp)
	})
	t.Run("open errors", func(t *testing.T) {
		testOpenErrors(t, tp)
		assertNoTransients(t, tp)
	})
	t.Run("concurrent signing", func(t *testing.T) {
		testConcurrentSigning(t, tp)
		assertNoTransients(t, tp)
	})
	outer := t
	t.Run("key survives a TPM restart", func(t *testing.T) {
		k, err := keystore.Generate(t.Context(), handleRef(hPersist), keystore.GenerateOptions{TPM: tp})
		require.NoError(t, err)
		want := k.Public()
		require.NoError(t, k.Close())

		after := b.restart(outer) // lives until the suite's cleanup
		k2, err := keystore.Open(t.Context(), handleRef(hPersist), keystore.Options{TPM: after})
		require.NoError(t, err, "the persisted key opens after the restart")
		defer k2.Close()
		assert.True(t, equalKeys(k2.Public(), want), "the same key is at the handle after the restart")
		body := []byte(`{"after":"restart"}`)
		sig, err := menderapi.Sign(k2, body)
		require.NoError(t, err)
		assert.NoError(t, menderapi.Verify(want, body, sig))
		info, ok := k2.TPMKeyInfo()
		require.True(t, ok)
		assert.True(t, info.Ours)
		assertNoTransients(t, after)
	})
}

func testGenerateAndSign(t *testing.T, tp *keystore.TPM, kt pki.KeyType, handle uint32) {
	ref := handleRef(handle)
	k, err := keystore.Generate(t.Context(), ref, keystore.GenerateOptions{KeyType: kt, TPM: tp})
	require.NoError(t, err)
	defer k.Close()

	info, ok := k.TPMKeyInfo()
	require.True(t, ok, "a TPM key reports TPM details")
	assert.Equal(t, kt, info.KeyType)
	assert.Equal(t, handle, info.Handle)
	assert.True(t, info.Ours, "keygen's own template is recognised")
	assert.True(t, info.TLS, "the key is usable for TLS client authentication")
	switch kt {
	case pki.ECDSAP256:
		assert.IsType(t, &ecdsa.PublicKey{}, k.Public())
		assert.Equal(t, "ecdsa-sha256", info.Scheme)
	case pki.RSA2048:
		require.IsType(t, &rsa.PublicKey{}, k.Public())
		assert.Equal(t, 2048, k.Public().(*rsa.PublicKey).N.BitLen())
		assert.Equal(t, "null", info.Scheme, "RSA keys choose PKCS#1 v1.5 or PSS per signature")
		assert.Equal(t, "hash length", info.PSSSalt)
	}

	t.Run("auth request signature", func(t *testing.T) {
		body, err := menderapi.BuildAuthRequest(authIDData, k.Public(), "")
		require.NoError(t, err)
		sig, err := menderapi.Sign(k, body)
		require.NoError(t, err)
		assert.NoError(t, menderapi.Verify(k.Public(), body, sig), "deviceauth's verifier accepts the TPM signature")
		req, err := menderapi.VerifyAuthRequest(body, sig)
		require.NoError(t, err)
		assert.True(t, equalKeys(req.Key, k.Public()))
		tampered := append([]byte{}, body...)
		tampered[len(tampered)-2] ^= 1
		assert.ErrorIs(t, menderapi.Verify(k.Public(), tampered, sig), menderapi.ErrBadSignature)
	})

	t.Run("self-test", func(t *testing.T) {
		assert.NoError(t, k.SelfTest(t.Context()))
	})

	t.Run("csr", func(t *testing.T) {
		algs := []x509.SignatureAlgorithm{x509.UnknownSignatureAlgorithm}
		if kt == pki.RSA2048 {
			algs = append(algs, x509.SHA256WithRSAPSS)
		}
		for _, alg := range algs {
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
				Subject: pkix.Name{CommonName: "device-tpm"}, SignatureAlgorithm: alg}, k)
			require.NoError(t, err, "CSR with %v", alg)
			csr, err := x509.ParseCertificateRequest(der)
			require.NoError(t, err)
			assert.NoError(t, csr.CheckSignature(), "the CSR signature (%v) verifies", csr.SignatureAlgorithm)
			assert.Equal(t, "device-tpm", csr.Subject.CommonName)
			assert.True(t, equalKeys(csr.PublicKey, k.Public()))
		}
	})

	t.Run("mtls handshake", func(t *testing.T) {
		ca := pkitest.NewCA(t)
		cert := issue(t, ca.CA, k.Public(), "device-tpm-"+string(kt), time.Time{}, 30*day)
		certPath := filepath.Join(t.TempDir(), "device.crt")
		writeFile(t, certPath, pki.EncodeCertsPEM(cert), 0o644)
		tk, err := keystore.Open(t.Context(), ref, keystore.Options{TPM: tp, CertFile: certPath})
		require.NoError(t, err)
		defer tk.Close()
		for name, v := range map[string]uint16{"tls1.2": tls.VersionTLS12, "tls1.3": tls.VersionTLS13} {
			chain, err := handshake(t, ca.MTLSServerConfig(t), clientConfig(ca, tk, v))
			require.NoError(t, err, "%s handshake signed in the TPM", name)
			require.NotEmpty(t, chain)
			assert.True(t, equalKeys(chain[0].PublicKey, k.Public()), "%s: the server saw the TPM key's certificate", name)
		}
	})

	t.Run("sign options", func(t *testing.T) {
		d := sha256.Sum256([]byte("x"))
		_, err := k.Sign(rand.Reader, d[:20], crypto.SHA256)
		assert.ErrorIs(t, err, keystore.ErrUnsupported, "a digest of the wrong length is refused")
		_, err = k.Sign(rand.Reader, d[:], crypto.MD5)
		assert.ErrorIs(t, err, keystore.ErrUnsupported, "MD5 is refused")
		if pub, isRSA := k.Public().(*rsa.PublicKey); isRSA {
			sig, err := k.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
			require.NoError(t, err)
			assert.NoError(t, rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
			_, err = k.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: 20, Hash: crypto.SHA256})
			assert.ErrorIs(t, err, keystore.ErrUnsupported, "a salt length the TPM does not make is refused")
		}
	})

	t.Run("closed", func(t *testing.T) {
		k2, err := keystore.Open(t.Context(), ref, keystore.Options{TPM: tp})
		require.NoError(t, err)
		require.NoError(t, k2.Close())
		_, err = menderapi.Sign(k2, []byte("x"))
		assert.ErrorIs(t, err, keystore.ErrClosed)
		assert.ErrorIs(t, k2.SelfTest(t.Context()), keystore.ErrClosed)
		_, err = menderapi.Sign(k, []byte("x"))
		assert.NoError(t, err, "closing a key opened with Options.TPM leaves the shared TPM open")
	})
}

func testReplace(t *testing.T, tp *keystore.TPM, b tpmBackend) {
	ctx := t.Context()
	ref := handleRef(hReplace)
	first, err := keystore.Generate(ctx, ref, keystore.GenerateOptions{TPM: tp})
	require.NoError(t, err)
	require.NoError(t, first.Close())

	_, err = keystore.Generate(ctx, ref, keystore.GenerateOptions{TPM: tp})
	require.ErrorIs(t, err, keystore.ErrExists, "an existing key is not replaced without Force")
	assert.Contains(t, err.Error(), "--force")

	second, err := keystore.Generate(ctx, ref, keystore.GenerateOptions{TPM: tp, Force: true, KeyType: pki.RSA2048})
	require.NoError(t, err, "our own key is replaced with Force, also by another key type")
	defer second.Close()
	assert.False(t, equalKeys(second.Public(), first.Public()), "a new key was created")
	reopened, err := keystore.Open(ctx, ref, keystore.Options{TPM: tp})
	require.NoError(t, err)
	defer reopened.Close()
	assert.True(t, equalKeys(reopened.Public(), second.Public()), "the new key is the one persisted")

	// A foreign object: the storage root key persisted at a handle, as
	// platforms do. It must survive Generate, even with Force.
	raw, done := b.raw(t)
	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(raw)
	require.NoError(t, err)
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		PersistentHandle: hForeign,
	}.Execute(raw)
	require.NoError(t, err)
	_, err = tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(raw)
	require.NoError(t, err)
	done()

	for _, force := range []bool{false, true} {
		_, err = keystore.Generate(ctx, handleRef(hForeign), keystore.GenerateOptions{TPM: tp, Force: force})
		require.ErrorIs(t, err, keystore.ErrForeignObject, "force=%v", force)
		assert.Contains(t, err.Error(), "tpm2_evictcontrol", "the error says how to free the handle")
	}
	info, err := tp.Info(ctx)
	require.NoError(t, err)
	assert.Contains(t, info.PersistentHandles, uint32(hForeign), "the foreign object is still there")

	_, err = keystore.Open(ctx, handleRef(hForeign), keystore.Options{TPM: tp})
	assert.ErrorIs(t, err, keystore.ErrUnsupported, "a storage key cannot be opened for signing")
	assert.ErrorContains(t, err, "not a signing key")

	_, err = keystore.Generate(ctx, handleRef(hPlatform), keystore.GenerateOptions{TPM: tp})
	assert.ErrorIs(t, err, keystore.ErrInvalidHandle, "platform handles are refused")
	_, err = keystore.Generate(ctx, handleRef(hEmpty), keystore.GenerateOptions{TPM: tp, KeyType: pki.Ed25519})
	assert.ErrorIs(t, err, keystore.ErrUnsupported, "a TPM cannot hold Ed25519 keys")
	assert.ErrorContains(t, err, "ecdsa-p256")
}

func testOpenErrors(t *testing.T, tp *keystore.TPM) {
	_, err := keystore.Open(t.Context(), handleRef(hEmpty), keystore.Options{TPM: tp})
	require.ErrorIs(t, err, keystore.ErrNotFound, "an empty handle")
	assert.Contains(t, err.Error(), "device-agent keygen --key "+handleRef(hEmpty), "the error says how to create the key")
	assert.Contains(t, err.Error(), tp.Name(), "the error names the TPM")

	_, err = keystore.Open(t.Context(), "handle:", keystore.Options{TPM: tp})
	assert.ErrorIs(t, err, keystore.ErrInvalidHandle)
	_, err = keystore.Open(t.Context(), "handle:0x80000001", keystore.Options{TPM: tp})
	assert.ErrorIs(t, err, keystore.ErrInvalidHandle, "a transient handle is not a key reference")
}

func testConcurrentSigning(t *testing.T, tp *keystore.TPM) {
	k, err := keystore.Open(t.Context(), handleRef(hECDSA), keystore.Options{TPM: tp})
	require.NoError(t, err)
	defer k.Close()
	other, err := keystore.Open(t.Context(), handleRef(hRSA), keystore.Options{TPM: tp})
	require.NoError(t, err)
	defer other.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		key := k
		if i%2 == 1 {
			key = other
		}
		wg.Go(func() {
			body := []byte{byte(i)}
			sig, err := menderapi.Sign(key, body)
			if err == nil {
				err = menderapi.Verify(key.Public(), body, sig)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err, "concurrent signatures through one TPM are serialised and valid")
	}
}

// benchmarkTPMSign measures one auth-request signature in the TPM.
func benchmarkTPMSign(b *testing.B, tp *keystore.TPM, kt pki.KeyType, handle uint32) {
	ctx := context.Background()
	k, err := keystore.Generate(ctx, handleRef(handle), keystore.GenerateOptions{TPM: tp, KeyType: kt, Force: true})
	require.NoError(b, err)
	defer k.Close()
	body, err := menderapi.BuildAuthRequest(authIDData, k.Public(), "")
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := menderapi.Sign(k, body); err != nil {
			b.Fatal(err)
		}
	}
}
