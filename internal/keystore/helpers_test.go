package keystore_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

const day = 24 * time.Hour

// clock is a manually advanced clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *clock { return &clock{now: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects log output for assertions; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(b *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// writeFile writes data with exactly mode perm (no umask).
func writeFile(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, data, perm))
	require.NoError(t, os.Chmod(path, perm))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	p, err := pki.MarshalPrivateKeyPEM(k)
	require.NoError(t, err)
	return p
}

func genKey(t *testing.T, typ pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(typ)
	require.NoError(t, err)
	return k
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("keystore test CA", pki.ECDSAP256, 3650*day)
	require.NoError(t, err)
	return ca
}

// issue issues a client certificate for pub valid from notBefore for validity.
func issue(t *testing.T, ca *pki.CA, pub crypto.PublicKey, cn string, notBefore time.Time, validity time.Duration) *x509.Certificate {
	t.Helper()
	c, err := ca.Issue(pub, pki.LeafOptions{CN: cn, NotBefore: notBefore, Validity: validity,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)
	return c
}

func equalKeys(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}
