package fleet

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

func macName(i int) string { return DefaultMACPrefix.MAC(i) }

// checkCreds asserts that creds are devices lo..hi-1 with distinct keys
// and, with ca, certificates for them signed by ca.
func checkCreds(t *testing.T, creds []*Credential, lo, hi int, ca *pki.CA) {
	t.Helper()
	require.Len(t, creds, hi-lo)
	seen := map[string]bool{}
	for i, c := range creds {
		require.Equal(t, lo+i, c.Index)
		fp := menderapi.Fingerprint(c.Public())
		assert.False(t, seen[fp], "device %d shares a key", c.Index)
		seen[fp] = true
		if ca == nil {
			assert.Nil(t, c.Cert)
			assert.Empty(t, c.CertificateChain())
			continue
		}
		require.NotNil(t, c.Cert, "device %d has a certificate", c.Index)
		assert.NoError(t, c.Cert.CheckSignatureFrom(ca.Cert))
		assert.Equal(t, macName(c.Index), c.Cert.Subject.CommonName)
		assert.Contains(t, c.Cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		assert.True(t, menderapi.PublicKeysEqual(c.Cert.PublicKey, c.Public()), "certificate of device %d holds its key", c.Index)
		assert.Equal(t, []*x509.Certificate{c.Cert}, c.CertificateChain())
	}
}

func TestLoadCredentialsCachesAndReuses(t *testing.T) {
	ca := pkitest.NewCA(t)
	dir := t.TempDir()
	o := StoreOptions{Dir: dir, CA: ca.CA, Name: macName}

	first, res, err := LoadCredentials(t.Context(), o, 990, 1020)
	require.NoError(t, err)
	checkCreds(t, first, 990, 1020, ca.CA)
	assert.Equal(t, StoreResult{MintedKeys: 30, FilesWritten: 2}, res, "indices 990..1019 span two block files")
	for _, name := range []string{"devices-000000.pem", "devices-001000.pem"} {
		st, err := os.Stat(filepath.Join(dir, "ecdsa-p256", name))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "cache files hold private keys")
	}

	again, res, err := LoadCredentials(t.Context(), o, 990, 1020)
	require.NoError(t, err)
	assert.Equal(t, StoreResult{Loaded: 30}, res, "a rerun mints and writes nothing")
	for i := range first {
		assert.True(t, menderapi.PublicKeysEqual(first[i].Public(), again[i].Public()), "device %d keeps its key", first[i].Index)
		assert.Equal(t, first[i].Cert.Raw, again[i].Cert.Raw)
	}

	// A neighbouring shard adds to the shared block file without losing
	// what the first one cached.
	_, res, err = LoadCredentials(t.Context(), o, 1020, 1030)
	require.NoError(t, err)
	assert.Equal(t, StoreResult{MintedKeys: 10, FilesWritten: 1}, res)
	_, res, err = LoadCredentials(t.Context(), o, 990, 1030)
	require.NoError(t, err)
	assert.Equal(t, StoreResult{Loaded: 40}, res)
}

func TestLoadCredentialsRepairsOnlyWhatIsInvalid(t *testing.T) {
	ca := pkitest.NewCA(t)
	tests := []struct {
		name   string
		first  func(o *StoreOptions) // options of the first load, nil = as is
		change func(t *testing.T, o *StoreOptions, file string)
		want   StoreResult
	}{
		{name: "another CA reissues certificates for the same keys",
			change: func(t *testing.T, o *StoreOptions, _ string) { o.CA = pkitest.NewCA(t).CA },
			want:   StoreResult{ReissuedCerts: 5, FilesWritten: 1}},
		{name: "another name reissues certificates",
			change: func(t *testing.T, o *StoreOptions, _ string) {
				o.Name = func(i int) string { return "other-" + macName(i) }
			},
			want: StoreResult{ReissuedCerts: 5, FilesWritten: 1}},
		{name: "certificates close to expiry are reissued",
			first:  func(o *StoreOptions) { o.Validity = CertRenewBefore - time.Hour },
			change: func(t *testing.T, o *StoreOptions, _ string) { o.Validity = 0 },
			want:   StoreResult{ReissuedCerts: 5, FilesWritten: 1}},
		{name: "another key type mints new keys",
			change: func(t *testing.T, o *StoreOptions, file string) {
				o.KeyType = pki.Ed25519
				o.Dir, o.File = "", file // the same file, so the P-256 keys are seen and replaced
			},
			want: StoreResult{MintedKeys: 5, FilesWritten: 1}},
		{name: "a garbled file is replaced",
			change: func(t *testing.T, _ *StoreOptions, file string) {
				require.NoError(t, os.WriteFile(file, []byte("not PEM at all"), 0o600))
			},
			want: StoreResult{MintedKeys: 5, FilesWritten: 1}},
		{name: "keys only: cached certificates are not needed",
			change: func(t *testing.T, o *StoreOptions, _ string) { o.CA = nil },
			want:   StoreResult{Loaded: 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "ecdsa-p256", "devices-000000.pem")
			o := StoreOptions{Dir: dir, CA: ca.CA, Name: macName}
			if tt.first != nil {
				tt.first(&o)
			}
			_, _, err := LoadCredentials(t.Context(), o, 0, 5)
			require.NoError(t, err)
			tt.change(t, &o, file)
			creds, res, err := LoadCredentials(t.Context(), o, 0, 5)
			require.NoError(t, err)
			assert.Equal(t, tt.want, res)
			for _, c := range creds {
				if o.KeyType != "" {
					assert.Equal(t, o.KeyType, keyTypeOf(c.Key))
				}
				if o.CA != nil {
					assert.NoError(t, c.Cert.CheckSignatureFrom(o.CA.Cert))
					assert.Equal(t, o.Name(c.Index), c.Cert.Subject.CommonName)
				}
			}
			_, res, err = LoadCredentials(t.Context(), o, 0, 5)
			require.NoError(t, err)
			assert.Equal(t, StoreResult{Loaded: 5}, res, "the repaired cache is reused as is")
		})
	}
}

func TestLoadCredentialsKeyFileWithoutCA(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.pem")
	creds, res, err := LoadCredentials(t.Context(), StoreOptions{File: file}, 0, 40)
	require.NoError(t, err)
	checkCreds(t, creds, 0, 40, nil)
	assert.Equal(t, StoreResult{MintedKeys: 40, FilesWritten: 1}, res)
	_, res, err = LoadCredentials(t.Context(), StoreOptions{File: file}, 10, 50)
	require.NoError(t, err)
	assert.Equal(t, StoreResult{Loaded: 30, MintedKeys: 10, FilesWritten: 1}, res)
}

func TestLoadCredentialsWithoutCacheAndErrors(t *testing.T) {
	creds, res, err := LoadCredentials(t.Context(), StoreOptions{KeyType: pki.Ed25519}, 0, 600)
	require.NoError(t, err)
	checkCreds(t, creds, 0, 600, nil)
	assert.Equal(t, StoreResult{MintedKeys: 600}, res, "nothing written without Dir or File")

	_, _, err = LoadCredentials(t.Context(), StoreOptions{}, 5, 2)
	assert.ErrorIs(t, err, ErrInvalid)
	_, _, err = LoadCredentials(t.Context(), StoreOptions{KeyType: "dsa"}, 0, 1)
	assert.ErrorIs(t, err, pki.ErrUnknownKeyType)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err = LoadCredentials(ctx, StoreOptions{}, 0, 100)
	assert.ErrorIs(t, err, context.Canceled)

	blocker := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o600))
	_, _, err = LoadCredentials(t.Context(), StoreOptions{Dir: filepath.Join(blocker, "sub")}, 0, 1)
	assert.ErrorContains(t, err, "credential cache", "a directory that cannot be created is reported")
}
