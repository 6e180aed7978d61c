package pkitest_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// handshake runs one TLS connection on 127.0.0.1 between serverCfg and
// clientCfg. The server answers "ok" after a successful handshake; the
// client reads it, so a certificate the server rejects after the client
// finished (TLS 1.3) still surfaces as a client error. It returns the
// client's and the server's errors and, on success, the client certificate
// the server saw.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (clientErr, serverErr error, peer *x509.Certificate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	require.NoError(t, err)
	defer ln.Close()

	type result struct {
		err  error
		peer *x509.Certificate
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
		var p *x509.Certificate
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			p = certs[0]
		}
		_, err = tc.Write([]byte("ok"))
		done <- result{err: err, peer: p}
	}()

	d := tls.Dialer{Config: clientCfg}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2)
		_, err = io.ReadFull(conn, buf)
		if err == nil && string(buf) != "ok" {
			err = errors.New("unexpected reply " + string(buf))
		}
		conn.Close()
	}
	res := <-done
	return err, res.err, res.peer
}

func TestMTLSHandshake(t *testing.T) {
	ca := pkitest.NewCA(t)
	other := pkitest.NewCA(t)

	tests := []struct {
		name       string
		serverName string
		version    uint16
		cert       func() []tls.Certificate
		roots      *x509.CertPool
		wantOK     bool
	}{
		{"tls1.3 ecdsa client", "mender.local", tls.VersionTLS13, func() []tls.Certificate {
			return []tls.Certificate{ca.Client(t, "dev-1", pki.ECDSAP256).TLSCertificate()}
		}, ca.Pool(), true},
		{"tls1.2 ed25519 client", "127.0.0.1", tls.VersionTLS12, func() []tls.Certificate {
			return []tls.Certificate{ca.Client(t, "dev-1", pki.Ed25519).TLSCertificate()}
		}, ca.Pool(), true},
		{"tls1.3 rsa client via localhost", "localhost", tls.VersionTLS13, func() []tls.Certificate {
			return []tls.Certificate{ca.Client(t, "dev-1", pki.RSA2048).TLSCertificate()}
		}, ca.Pool(), true},
		{"no client certificate", "mender.local", tls.VersionTLS13, func() []tls.Certificate { return nil }, ca.Pool(), false},
		{"client from another CA", "mender.local", tls.VersionTLS12, func() []tls.Certificate {
			return []tls.Certificate{other.Client(t, "dev-1", pki.ECDSAP256).TLSCertificate()}
		}, ca.Pool(), false},
		{"server not trusted", "mender.local", tls.VersionTLS13, func() []tls.Certificate {
			return []tls.Certificate{ca.Client(t, "dev-1", pki.ECDSAP256).TLSCertificate()}
		}, other.Pool(), false},
		{"server name not covered", "other.local", tls.VersionTLS13, func() []tls.Certificate {
			return []tls.Certificate{ca.Client(t, "dev-1", pki.ECDSAP256).TLSCertificate()}
		}, ca.Pool(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverCfg := ca.MTLSServerConfig(t, "mender.local")
			assert.Equal(t, tls.RequireAndVerifyClientCert, serverCfg.ClientAuth)
			clientCfg := &tls.Config{RootCAs: tt.roots, ServerName: tt.serverName, Certificates: tt.cert(),
				MinVersion: tt.version, MaxVersion: tt.version}
			cErr, sErr, peer := handshake(t, serverCfg, clientCfg)
			if !tt.wantOK {
				assert.Error(t, cErr, "client must fail")
				assert.Error(t, sErr, "server must fail")
				return
			}
			require.NoError(t, cErr)
			require.NoError(t, sErr)
			require.NotNil(t, peer)
			assert.Equal(t, "dev-1", peer.Subject.CommonName)
		})
	}
}

func TestServerTLSConfigWithoutClientAuth(t *testing.T) {
	ca := pkitest.NewCA(t)
	cfg := ca.ServerTLSConfig(t)
	assert.Equal(t, tls.NoClientCert, cfg.ClientAuth)
	leaf := cfg.Certificates[0].Leaf
	require.NotNil(t, leaf)
	assert.ElementsMatch(t, []string{"localhost"}, leaf.DNSNames)
	require.Len(t, leaf.IPAddresses, 1)
	assert.Equal(t, "127.0.0.1", leaf.IPAddresses[0].String())

	cErr, sErr, peer := handshake(t, cfg, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	require.NoError(t, cErr)
	require.NoError(t, sErr)
	assert.Nil(t, peer, "no client certificate was asked for")
}

func TestLegacyServerCert(t *testing.T) {
	ca := pkitest.NewCA(t)
	tlsCert, cert := ca.LegacyServerCert(t, "mender.local")

	assert.Equal(t, 1, cert.Version)
	assert.Equal(t, "mender.local", cert.Subject.CommonName)
	assert.Empty(t, cert.DNSNames)
	assert.Empty(t, cert.IPAddresses)
	assert.Empty(t, cert.Extensions, "a v1 certificate has no extensions")
	assert.Equal(t, cert.Raw, tlsCert.Certificate[0])

	_, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool()})
	require.NoError(t, err, "the chain verifies when no host name is asked for")
	_, err = cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "mender.local"})
	var hostErr x509.HostnameError
	require.ErrorAs(t, err, &hostErr, "Go ignores the common name, so the host check fails")

	// Over a real connection the client fails for the same reason.
	cfg := &tls.Config{Certificates: []tls.Certificate{tlsCert}, MinVersion: tls.VersionTLS12}
	cErr, _, _ := handshake(t, cfg, &tls.Config{RootCAs: ca.Pool(), ServerName: "mender.local", MinVersion: tls.VersionTLS12})
	require.ErrorAs(t, cErr, &hostErr)
}

func TestWriteFiles(t *testing.T) {
	ca := pkitest.NewCA(t)
	dir := t.TempDir()

	caPath := ca.WriteCA(t, dir)
	assert.Equal(t, filepath.Join(dir, "ca.crt"), caPath)
	data, err := os.ReadFile(caPath)
	require.NoError(t, err)
	assert.Equal(t, ca.CertPEM(), data)

	certPath, keyPath := ca.WriteClient(t, dir, "dev/1", pki.Ed25519)
	assert.Equal(t, filepath.Join(dir, "dev_1.crt"), certPath, "unsafe characters are replaced")
	fi, err := os.Stat(keyPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	certPEM, err := os.ReadFile(certPath)
	require.NoError(t, err)
	certs, err := pki.ParseCertsPEM(certPEM)
	require.NoError(t, err)
	keyPEM, err := os.ReadFile(keyPath)
	require.NoError(t, err)
	key, err := pki.ParsePrivateKeyPEM(keyPEM)
	require.NoError(t, err)
	_, err = tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err, "the written certificate and key belong together")
	assert.Equal(t, "dev/1", certs[0].Subject.CommonName)
	_, err = certs[0].Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err)
	assert.True(t, certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()))
}
