package main

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

func sim(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(t.Context(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestPKICommands(t *testing.T) {
	dir := t.TempDir()
	_, stderr, code := sim(t, "pki", "init", "--dir", dir, "--key-type", "ecdsa-p384", "--cn", "Factory CA")
	require.Equal(t, 0, code, stderr)
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	require.NoError(t, err)
	assert.Equal(t, "Factory CA", ca.Cert.Subject.CommonName)
	assertMode(t, filepath.Join(dir, "ca.key"), 0o600)

	_, stderr, code = sim(t, "pki", "init", "--dir", dir)
	assert.Equal(t, 1, code, "an existing CA is never overwritten without --force")
	assert.Contains(t, stderr, "--force")
	_, _, code = sim(t, "pki", "init", "--dir", dir, "--force")
	assert.Equal(t, 0, code)
	ca, err = pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	require.NoError(t, err)

	_, stderr, code = sim(t, "pki", "server", "--dir", dir, "--dns", "mender.local,localhost", "--ip", "127.0.0.1")
	require.Equal(t, 0, code, stderr)
	srv := readCert(t, filepath.Join(dir, "server.crt"))
	assert.Equal(t, []string{"mender.local", "localhost"}, srv.DNSNames)
	_, err = srv.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: "mender.local", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	assert.NoError(t, err)

	for _, kt := range []string{"rsa2048", "ecdsa-p256", "ed25519"} {
		out := filepath.Join(t.TempDir(), kt)
		_, stderr, code = sim(t, "pki", "device", "--dir", dir, "--cn", "dev-"+kt, "--out", out, "--key-type", kt)
		require.Equal(t, 0, code, stderr)
		cert := readCert(t, filepath.Join(out, "mender-cert.pem"))
		_, err = cert.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		assert.NoError(t, err)
		keyPEM, err := os.ReadFile(filepath.Join(out, "mender-cert-private.pem"))
		require.NoError(t, err)
		key, err := pki.ParsePrivateKeyPEM(keyPEM)
		require.NoError(t, err)
		assert.True(t, menderapi.PublicKeysEqual(key.Public(), cert.PublicKey), "the certificate is for the written key")
		assertMode(t, filepath.Join(out, "mender-cert-private.pem"), 0o600)
		var frag map[string]map[string]string
		data, err := os.ReadFile(filepath.Join(out, "mender.conf.fragment"))
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(data, &frag))
		assert.Equal(t, "/data/mender/mender-cert.pem", frag["HttpsClient"]["Certificate"])
		assert.Equal(t, frag["HttpsClient"]["Key"], frag["Security"]["AuthPrivateKey"], "the mTLS key signs auth requests")
	}

	// sign-csr: a valid CSR is signed; a tampered one is refused.
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tpm-dev"}}, key)
	require.NoError(t, err)
	csrPath := filepath.Join(t.TempDir(), "dev.csr")
	require.NoError(t, os.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644))
	certOut := filepath.Join(t.TempDir(), "dev.crt")
	_, stderr, code = sim(t, "pki", "sign-csr", "--dir", dir, "--csr", csrPath, "--out", certOut)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, "tpm-dev", readCert(t, certOut).Subject.CommonName)

	bad := append([]byte(nil), der...)
	bad[len(bad)-5] ^= 0xff
	badPath := filepath.Join(t.TempDir(), "bad.csr")
	require.NoError(t, os.WriteFile(badPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: bad}), 0o644))
	_, stderr, code = sim(t, "pki", "sign-csr", "--dir", dir, "--csr", badPath, "--out", filepath.Join(t.TempDir(), "x.crt"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, badPath)

	// revoke: blacklist and CRL.
	stdout, stderr, code := sim(t, "pki", "revoke", "--dir", dir, "--serial", srv.SerialNumber.Text(16))
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "revoked")
	list, err := pki.ReadBlacklist(filepath.Join(dir, "blacklist"))
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, 0, list[0].Cmp(srv.SerialNumber))
	crlPEM, err := os.ReadFile(filepath.Join(dir, "crl.pem"))
	require.NoError(t, err)
	blk, _ := pem.Decode(crlPEM)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	require.NoError(t, err)
	require.NoError(t, crl.CheckSignatureFrom(ca.Cert))
}

func TestPKIUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pki"}, 2, "Commands:"},
		{[]string{"pki", "nope"}, 2, "unknown command"},
		{[]string{"pki", "init"}, 1, "--dir is required"},
		{[]string{"pki", "init", "--dir", "x", "--key-type", "dsa"}, 1, "--key-type"},
		{[]string{"pki", "device", "--dir", "x", "--out", "y"}, 1, "--cn is required"},
		{[]string{"pki", "server", "--dir", "x"}, 1, "--dns is required"},
		{[]string{"pki", "device", "--dir", "/nonexistent", "--cn", "a", "--out", "y"}, 1, "simulator pki init"},
		{[]string{"pki", "revoke", "--dir", "x"}, 1, "--serial is required"},
		{[]string{"bogus"}, 2, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, stderr, code := sim(t, tt.args...)
			assert.Equal(t, tt.code, code)
			assert.Contains(t, stdout+stderr, tt.want)
			assert.NotContains(t, stderr, "goroutine")
		})
	}
}

func TestAmbassadorFlagErrors(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(t.Context(), []string{"ambassador"}, &out, &errb)
	assert.Equal(t, 1, code)
	assert.Contains(t, errb.String(), "--backend (MTLS_MENDER_BACKEND) is required")
	assert.Contains(t, errb.String(), "MTLS_MENDER_USER")
	assert.Equal(t, 2, strings.Count(errb.String(), "simulator:"), "one line per problem")
}

func TestParseHelpers(t *testing.T) {
	for in, want := range map[string]uint16{"1.2": 0x0303, "1.3": 0x0304, "TLS1.3": 0x0304, "": 0x0303} {
		got, err := parseTLSVersion(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	_, err := parseTLSVersion("1.0")
	assert.Error(t, err, "TLS 1.0 is refused")
	assert.Equal(t, ":8080", listenAddr("8080", "127.0.0.1:8443"), "a bare port (Mender's MTLS_LISTEN) means all interfaces")
	assert.Equal(t, "127.0.0.1:8443", listenAddr("", "127.0.0.1:8443"))
	assert.Equal(t, "10.1.1.1:443", listenAddr("10.1.1.1:443", "x"))
	assert.Equal(t, []string{"localhost", "127.0.0.1", "mender.local"}, hostsFor("mender.local"))
	assert.Equal(t, []string{"localhost", "127.0.0.1"}, hostsFor("0.0.0.0"))
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	certs, err := pki.ParseCertsPEM(data)
	require.NoError(t, err)
	return certs[0]
}

func pool(ca *pki.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, want, fi.Mode().Perm(), path)
}

func TestAmbassadorCAFlagReplacesEnvironment(t *testing.T) {
	env := map[string]string{"MTLS_TENANT_CA_PEM": "/env/ca.pem"}
	getenv := func(k string) string { return env[k] }
	assert.Equal(t, listFlag{"/flag/a.pem", "/flag/b.pem"}, deviceCAs(listFlag{"/flag/a.pem", "/flag/b.pem"}, getenv),
		"--ca replaces MTLS_TENANT_CA_PEM; it never adds to it")
	assert.Equal(t, listFlag{"/env/ca.pem"}, deviceCAs(nil, getenv))
	assert.Equal(t, listFlag{"/etc/mtls/certs/tenant-ca/tenant.ca.pem"}, deviceCAs(nil, func(string) string { return "" }))
}

func TestAmbassadorRefusesCredentialsInURL(t *testing.T) {
	env := map[string]string{"MTLS_MENDER_BACKEND": "https://u:secret@mender.example.com", "MTLS_MENDER_USER": "u", "MTLS_MENDER_PASS": "p"}
	var out, errb bytes.Buffer
	err := cmdAmbassador(t.Context(), nil, &out, &errb, func(k string) string { return env[k] })
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no credentials in the URL")
	assert.NotContains(t, err.Error(), "secret", "the password in the URL is redacted")
}

func TestAmbassadorIdentityFlags(t *testing.T) {
	f := ambassadorFlags{backend: "https://mender.example.com", user: "u", password: "p", tlsMin: "1.2",
		bind: listFlag{"mac=CN"}, identityKeys: "serial_no, hw_rev", separateAuthKey: true, newIdentitiesPerHour: 5}
	o, err := f.options()
	require.NoError(t, err)
	assert.Equal(t, []string{"serial_no", "hw_rev"}, o.IdentityKeys)
	assert.True(t, o.AllowSeparateAuthKey)
	assert.Equal(t, 5, o.NewIdentitiesPerHour)

	env := map[string]string{"MTLS_MENDER_BACKEND": "https://mender.example.com", "MTLS_MENDER_USER": "u",
		"MTLS_MENDER_PASS": "p", "MTLS_ALLOW_SEPARATE_AUTH_KEY": "true", "MTLS_TENANT_CA_PEM": "/nonexistent/ca.pem"}
	var out, errb bytes.Buffer
	err = cmdAmbassador(t.Context(), []string{"--identity-keys", "serial_no,,x"}, &out, &errb, func(k string) string { return env[k] })
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--identity-keys")

	err = cmdAmbassador(t.Context(), []string{"--server-cert", "/nonexistent/s.crt", "--server-key", "/nonexistent/s.key"},
		&out, &errb, func(k string) string { return env[k] })
	require.Error(t, err, "the files do not exist")
	assert.Contains(t, errb.String(), "auth keys that differ from the certificate key are accepted",
		"MTLS_ALLOW_SEPARATE_AUTH_KEY is honoured and the trade-off is logged")
}

// Every signing command records what it issued; pki list shows it with
// its state; pki revoke refuses a serial the CA never issued unless
// --force.
func TestPKIIssuedIndexListAndRevoke(t *testing.T) {
	dir := t.TempDir()
	_, stderr, code := sim(t, "pki", "init", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	stdout, stderr, code := sim(t, "pki", "server", "--dir", dir, "--dns", "mender.local")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, filepath.Join(dir, "server.crt"), "absolute paths")
	srv := readCert(t, filepath.Join(dir, "server.crt"))
	out := filepath.Join(t.TempDir(), "dev")
	_, stderr, code = sim(t, "pki", "device", "--dir", dir, "--cn", "dev-1", "--out", out)
	require.Equal(t, 0, code, stderr)
	dev := readCert(t, filepath.Join(out, "mender-cert.pem"))
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "tpm-dev"}}, key)
	require.NoError(t, err)
	csrPath := filepath.Join(t.TempDir(), "dev.csr")
	require.NoError(t, os.WriteFile(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644))
	signed := filepath.Join(t.TempDir(), "tpm.crt")
	_, stderr, code = sim(t, "pki", "sign-csr", "--dir", dir, "--csr", csrPath, "--out", signed)
	require.Equal(t, 0, code, stderr)
	tpm := readCert(t, signed)

	// An expired device, issued through the library and recorded as the commands do.
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	require.NoError(t, err)
	old, err := ca.Issue(key.Public(), pki.LeafOptions{CN: "old-dev", NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour})
	require.NoError(t, err)
	require.NoError(t, pki.RecordIssued(dir, ca, pki.KindDevice, "", old))

	_, stderr, code = sim(t, "pki", "revoke", "--dir", dir, "--serial", "deadbeef")
	assert.Equal(t, 1, code, "a serial this CA never issued is refused")
	assert.Contains(t, stderr, "serial deadbeef was not issued by the CA")
	assert.Contains(t, stderr, "--force")
	assert.Contains(t, stderr, "simulator pki list")
	assert.NoFileExists(t, filepath.Join(dir, "blacklist"), "nothing written")

	stdout, stderr, code = sim(t, "pki", "revoke", "--dir", dir, "--serial", pki.FormatSerial(dev.SerialNumber))
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "(CN=dev-1) revoked")
	stdout, stderr, code = sim(t, "pki", "revoke", "--dir", dir, "--serial", "deadbeef", "--force")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "not in this CA's index; --force")
	list, err := pki.ReadBlacklist(filepath.Join(dir, "blacklist"))
	require.NoError(t, err)
	assert.Len(t, list, 2)

	stdout, stderr, code = sim(t, "pki", "list", "--dir", dir)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "4 certificate(s) issued")
	state := map[string][]string{}
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			state[f[0]] = f[1:]
		}
	}
	assert.Equal(t, []string{"valid", srv.NotAfter.UTC().Format(time.DateOnly), "server", "CN=mender.local"}, state[pki.FormatSerial(srv.SerialNumber)])
	assert.Equal(t, "revoked", state[pki.FormatSerial(dev.SerialNumber)][0])
	assert.Equal(t, "valid", state[pki.FormatSerial(tpm.SerialNumber)][0])
	assert.Equal(t, "expired", state[pki.FormatSerial(old.SerialNumber)][0])

	// A new CA in the same directory does not list the old CA's certificates.
	_, _, code = sim(t, "pki", "init", "--dir", dir, "--force")
	require.Equal(t, 0, code)
	stdout, _, code = sim(t, "pki", "list", "--dir", dir)
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "0 certificate(s) issued")
	assert.Contains(t, stdout, "4 entries of an earlier CA")
}

// The directory the openssl commands of Mender's mTLS guide make (a
// self-signed version-1 CA in ca.crt, its key in ca-private.key) works
// with every pki command.
func TestPKIWithGuideCA(t *testing.T) {
	v1 := pkitest.NewV1CA(t)
	dir := t.TempDir()
	keyPEM, err := pki.MarshalPrivateKeyPEM(v1.Key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), v1.CertPEM(), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca-private.key"), keyPEM, 0o600))

	out := filepath.Join(t.TempDir(), "dev")
	_, stderr, code := sim(t, "pki", "device", "--dir", dir, "--cn", "dev-guide", "--out", out)
	require.Equal(t, 0, code, stderr)
	dev := readCert(t, filepath.Join(out, "mender-cert.pem"))
	_, err = dev.Verify(x509.VerifyOptions{Roots: v1.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err)

	srvDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(srvDir, "ca.crt"), v1.CertPEM(), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(srvDir, "ca-private.key"), keyPEM, 0o600))
	_, stderr, code = sim(t, "pki", "server", "--dir", srvDir, "--dns", "mender.local")
	require.Equal(t, 0, code, stderr)
	_, err = readCert(t, filepath.Join(srvDir, "server.crt")).Verify(x509.VerifyOptions{Roots: v1.Pool(), DNSName: "mender.local"})
	assert.NoError(t, err)

	stdout, stderr, code := sim(t, "pki", "revoke", "--dir", dir, "--serial", pki.FormatSerial(dev.SerialNumber))
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "CRL #1 written")
	blk, _ := pem.Decode(readFile(t, filepath.Join(dir, "crl.pem")))
	require.NotNil(t, blk)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	require.NoError(t, err)
	assert.NoError(t, crl.CheckSignatureFrom(v1.Cert))
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
