package keystore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

func leafSerial(t *testing.T, k *keystore.Key) *big.Int {
	t.Helper()
	chain := k.CertificateChain()
	require.NotEmpty(t, chain)
	return chain[0].SerialNumber
}

// TestHotReload replaces the certificate file under an open Key in the ways
// that happen in the field and checks which chain the Key hands out.
func TestHotReload(t *testing.T) {
	ca := newCA(t)
	key := genKey(t, pki.ECDSAP256)
	dir := t.TempDir()
	keyPath, certPath := filepath.Join(dir, "device.key"), filepath.Join(dir, "device.crt")
	writeFile(t, keyPath, pkcs8(t, key), 0o600)
	certA := issue(t, ca, key.Public(), "device-1", time.Time{}, 365*day)
	writeFile(t, certPath, pki.EncodeCertsPEM(certA), 0o644)

	clk := newClock(time.Now())
	var logs logBuffer
	k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath, Now: clk.Now, Logger: newLogger(&logs)})
	require.NoError(t, err)
	require.Equal(t, certA.SerialNumber, leafSerial(t, k))

	// A renewed certificate for the same key, written atomically.
	certB := issue(t, ca, key.Public(), "device-1", time.Time{}, 365*day)
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(certB), 0o644))
	assert.Equal(t, certA.SerialNumber, leafSerial(t, k), "within a second of the last check the file is not re-read")
	clk.Advance(time.Second)
	assert.Equal(t, certB.SerialNumber, leafSerial(t, k), "the replaced certificate is used")
	assert.Equal(t, 1, logs.Count("reloaded certificate"))

	// A certificate for another key must not be used.
	foreign := issue(t, ca, genKey(t, pki.ECDSAP256).Public(), "device-2", time.Time{}, 365*day)
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(foreign), 0o644))
	clk.Advance(time.Second)
	assert.Equal(t, certB.SerialNumber, leafSerial(t, k), "a certificate for another key is ignored")
	clk.Advance(time.Second)
	assert.Equal(t, certB.SerialNumber, leafSerial(t, k))
	assert.Equal(t, 1, logs.Count("ignoring changed certificate file"), "one warning per change, not per check")
	assert.Contains(t, logs.String(), "does not match")

	// An in-place rewrite (same inode) for the same key is picked up too.
	certC := issue(t, ca, key.Public(), "device-1", time.Time{}, 365*day)
	writeFile(t, certPath, pki.EncodeCertsPEM(certC), 0o644)
	mtime := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(certPath, mtime, mtime))
	clk.Advance(time.Second)
	assert.Equal(t, certC.SerialNumber, leafSerial(t, k), "an in-place rewrite is used")

	// An expired certificate for the right key is not used either.
	expired := issue(t, ca, key.Public(), "device-1", time.Now().Add(-10*day), day)
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(expired), 0o644))
	clk.Advance(time.Second)
	assert.Equal(t, certC.SerialNumber, leafSerial(t, k), "an expired replacement is ignored")
	assert.Equal(t, 2, logs.Count("ignoring changed certificate file"))

	// A half-written file is ignored until it is complete.
	writeFile(t, certPath, []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o644)
	clk.Advance(time.Second)
	assert.Equal(t, certC.SerialNumber, leafSerial(t, k))
	certD := issue(t, ca, key.Public(), "device-1", time.Time{}, 365*day)
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(certD), 0o644))
	clk.Advance(time.Second)
	assert.Equal(t, certD.SerialNumber, leafSerial(t, k), "the completed file is used")

	// A deleted file keeps the last good chain, with one warning.
	require.NoError(t, os.Remove(certPath))
	clk.Advance(time.Second)
	assert.Equal(t, certD.SerialNumber, leafSerial(t, k))
	clk.Advance(time.Second)
	assert.Equal(t, certD.SerialNumber, leafSerial(t, k))
	assert.Equal(t, 1, logs.Count("cannot check certificate file"))

	assert.NotContains(t, logs.String(), "PRIVATE KEY", "key material never reaches the log")
}

// handshake runs one mutual-TLS connection on 127.0.0.1 and returns the
// client certificate chain the server verified.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) ([]*x509.Certificate, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	require.NoError(t, err)
	defer ln.Close()

	type result struct {
		chain []*x509.Certificate
		err   error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- result{err: err}
			return
		}
		var chain []*x509.Certificate
		if v := tc.ConnectionState().VerifiedChains; len(v) > 0 {
			chain = v[0]
		}
		_, err = tc.Write([]byte("ok"))
		done <- result{chain: chain, err: err}
	}()

	d := tls.Dialer{Config: clientCfg}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(conn, make([]byte, 2))
		conn.Close()
	}
	res := <-done
	if err != nil {
		return nil, err
	}
	return res.chain, res.err
}

func clientConfig(ca *pkitest.CA, k *keystore.Key, version uint16) *tls.Config {
	return &tls.Config{
		RootCAs:    ca.Pool(),
		ServerName: "localhost",
		MinVersion: version,
		MaxVersion: version,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return k.TLSCertificate()
		},
	}
}

// TestTLSHandshake completes real TLS 1.2 and 1.3 handshakes in which the
// client certificate and its signature come from a Key.
func TestTLSHandshake(t *testing.T) {
	ca := pkitest.NewCA(t)
	versions := map[string]uint16{"tls1.2": tls.VersionTLS12, "tls1.3": tls.VersionTLS13}
	for _, typ := range []pki.KeyType{pki.Ed25519, pki.ECDSAP256, pki.RSA2048} {
		dir := t.TempDir()
		certPath, keyPath := ca.WriteClient(t, dir, "device-"+string(typ), typ)
		k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath})
		require.NoError(t, err)
		for vname, v := range versions {
			t.Run(string(typ)+"/"+vname, func(t *testing.T) {
				chain, err := handshake(t, ca.MTLSServerConfig(t), clientConfig(ca, k, v))
				require.NoError(t, err)
				require.Len(t, chain, 2, "leaf and CA")
				assert.Equal(t, "device-"+string(typ), chain[0].Subject.CommonName)
				assert.True(t, equalKeys(chain[0].PublicKey, k.Public()), "the server saw the Key's certificate")
			})
		}
	}

	t.Run("intermediate sent by the client", func(t *testing.T) {
		inter, err := ca.IssueIntermediate("device intermediate", pki.ECDSAP256, 30*day)
		require.NoError(t, err)
		key := genKey(t, pki.ECDSAP256)
		leaf := issue(t, inter, key.Public(), "device-x", time.Time{}, 30*day)
		dir := t.TempDir()
		keyPath, certPath := filepath.Join(dir, "k.pem"), filepath.Join(dir, "c.pem")
		writeFile(t, keyPath, pkcs8(t, key), 0o600)
		writeFile(t, certPath, pki.EncodeCertsPEM(leaf, inter.Cert), 0o644)
		k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath})
		require.NoError(t, err)
		for vname, v := range versions {
			chain, err := handshake(t, ca.MTLSServerConfig(t), clientConfig(ca, k, v))
			require.NoError(t, err, vname)
			assert.Len(t, chain, 3, "%s: leaf, intermediate and root", vname)
		}
	})
}

// TestTLSUsesReplacedCertificate checks the end-to-end property the reload
// exists for: after the certificate file is replaced, the next handshake
// presents the new certificate without reopening the key.
func TestTLSUsesReplacedCertificate(t *testing.T) {
	ca := pkitest.NewCA(t)
	key := genKey(t, pki.ECDSAP256)
	dir := t.TempDir()
	keyPath, certPath := filepath.Join(dir, "device.key"), filepath.Join(dir, "device.crt")
	writeFile(t, keyPath, pkcs8(t, key), 0o600)
	first := issue(t, ca.CA, key.Public(), "device-1", time.Time{}, 365*day)
	writeFile(t, certPath, pki.EncodeCertsPEM(first), 0o644)

	clk := newClock(time.Now())
	k, err := keystore.Open(t.Context(), keyPath, keystore.Options{CertFile: certPath, Now: clk.Now})
	require.NoError(t, err)
	cfg := clientConfig(ca, k, tls.VersionTLS13)

	chain, err := handshake(t, ca.MTLSServerConfig(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, first.SerialNumber, chain[0].SerialNumber)

	second := issue(t, ca.CA, key.Public(), "device-1", time.Time{}, 365*day)
	require.NoError(t, atomicfile.Write(certPath, pki.EncodeCertsPEM(second), 0o644))
	clk.Advance(time.Second)
	chain, err = handshake(t, ca.MTLSServerConfig(t), cfg)
	require.NoError(t, err)
	assert.Equal(t, second.SerialNumber, chain[0].SerialNumber, "the renewed certificate is presented without a restart")
}
