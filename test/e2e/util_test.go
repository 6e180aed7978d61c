package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

type testCA struct{ *pkitest.CA }

func newTestCA(t *testing.T) *testCA { return &testCA{pkitest.NewCA(t)} }

func (c *testCA) writeCA(t *testing.T, dir string) string { return c.WriteCA(t, dir) }

func (c *testCA) writeClient(t *testing.T, dir, cn string) (string, string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return c.WriteClient(t, dir, cn, pki.ECDSAP256)
}

// writeExpiredClient writes a client certificate that expired yesterday.
func (c *testCA) writeExpiredClient(t *testing.T, dir, cn string) (string, string) {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	cert, err := c.Issue(key.Public(), pki.LeafOptions{CN: cn, NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	require.NoError(t, err)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	certPath, keyPath := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	require.NoError(t, atomicfile.Write(keyPath, keyPEM, 0o600))
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(cert), 0o644))
	return certPath, keyPath
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m))
	return m
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	js, err := json.MarshalIndent(v, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, js, 0o644))
}
