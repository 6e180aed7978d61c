package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

func TestServeFaultFlags(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name    string
		flags   serveFlags
		wantErr string
		want503 bool // the device request is answered 503 (else it passes on to a 401)
		mgmtOK  bool
	}{
		{name: "fail-rate 1 answers 503 on device paths only", flags: serveFlags{failRate: 1}, want503: true, mgmtOK: true},
		{name: "latency delays but answers", flags: serveFlags{latency: time.Millisecond}},
		{name: "fail-rate out of range", flags: serveFlags{failRate: 1.5}, wantErr: "--fail-rate 1.5"},
		{name: "drop-rate out of range", flags: serveFlags{dropRate: -0.1}, wantErr: "--drop-rate -0.1"},
		{name: "negative latency", flags: serveFlags{latency: -time.Second}, wantErr: "--latency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := fakemender.New(fakemender.Options{})
			require.NoError(t, err)
			err = addServeFaults(b, &tt.flags, log)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			rec := httptest.NewRecorder()
			b.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, menderapi.PathNextV1, nil))
			// Without the fault a GET next without a token is 401; the
			// latency fault passes the request on (then 401).
			if tt.want503 {
				assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
			} else {
				assert.Equal(t, http.StatusUnauthorized, rec.Code)
			}
			assert.Equal(t, 1, b.Stats().FaultsApplied, "the fault applied to the device request")
			if tt.mgmtOK {
				rec := httptest.NewRecorder()
				b.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, menderapi.PathDevauthDevices, nil))
				assert.Equal(t, http.StatusUnauthorized, rec.Code, "management paths get no fault")
				assert.Equal(t, 1, b.Stats().FaultsApplied)
			}
		})
	}
}

func TestBackendListenWarning(t *testing.T) {
	for addr, warn := range map[string]bool{
		"127.0.0.1:0": false, "127.0.0.5:9000": false, "[::1]:0": false, "localhost:0": false,
		"0.0.0.0:9000": true, ":9000": true, "192.168.1.10:443": true, "[::]:1": true, "mender.example.com:443": true,
	} {
		got := backendListenWarning(addr)
		if warn {
			assert.Contains(t, got, "without mTLS", addr)
		} else {
			assert.Empty(t, got, addr)
		}
	}
}

// startServeCmd runs cmdServe until the test ends and returns its stdout
// once the ready message is complete.
func startServeCmd(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb syncBuffer
	done := make(chan error, 1)
	go func() { done <- cmdServe(ctx, args, &out, &errb) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "stderr: %s", errb.String())
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	})
	require.Eventually(t, func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
		}
		return strings.Contains(out.String(), "  CA:")
	}, 15*time.Second, 10*time.Millisecond)
	require.Contains(t, out.String(), "  CA:", "stderr: %s", errb.String())
	return out.String()
}

// writeGuideDir writes what the openssl commands of Mender's mTLS guide
// leave in a directory: a self-signed v1 CA (ca.crt, ca-private.key) and a
// v1 server certificate whose only name is the common name (server.crt,
// server.key).
func writeGuideDir(t *testing.T, dir, serverCN string) (*pkitest.CA, []byte) {
	t.Helper()
	v1 := pkitest.NewV1CA(t)
	keyPEM, err := pki.MarshalPrivateKeyPEM(v1.Key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), v1.CertPEM(), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca-private.key"), keyPEM, 0o600))
	tc, _ := v1.LegacyServerCert(t, serverCN)
	srvKey, err := pki.MarshalPrivateKeyPEM(tc.PrivateKey.(crypto.Signer))
	require.NoError(t, err)
	crtPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tc.Certificate[0]})
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.crt"), crtPEM, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.key"), srvKey, 0o600))
	return v1, crtPEM
}

// serve --dir never replaces a server certificate it did not make: the
// guide's CN-only certificate for localhost is served as it is on
// 127.0.0.1, and serve says devices use https://localhost:PORT. With
// --mtls the backend stays reachable at its address and the guide's v1 CA
// signs the CRL.
func TestServeKeepsGuideServerCertificate(t *testing.T) {
	for _, mtls := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "mtls"}[mtls], func(t *testing.T) {
			dir := t.TempDir()
			v1, crtPEM := writeGuideDir(t, dir, "localhost")
			args := []string{"--dir", dir, "--listen", "127.0.0.1:0", "--state", "none", "--log-level", "error", "--password", "s3cret-pw"}
			if mtls {
				args = append(args, "--mtls", "--status-listen", "127.0.0.1:0")
			}
			out := startServeCmd(t, args...)
			assert.Equal(t, crtPEM, readFile(t, filepath.Join(dir, "server.crt")), "server.crt is served as it is")
			assert.NoFileExists(t, filepath.Join(dir, pki.ServerCertMarkerName))
			assert.Regexp(t, `URL: +https://localhost:\d+`, out, "the device URL uses the certificate's name")
			assert.Contains(t, out, "does not cover 127.0.0.1: devices must use one of its names in ServerURL: localhost")
			assert.Contains(t, out, "not made by serve: served as it is")
			assert.NotContains(t, out, "/etc/hosts", "localhost needs no hosts entry")
			assert.NotContains(t, out, "s3cret-pw", "a password given with --password is not printed")
			assert.Contains(t, out, "password as given with --password")
			if mtls {
				blk, _ := pem.Decode(readFile(t, filepath.Join(dir, "crl.pem")))
				require.NotNil(t, blk)
				crl, err := x509.ParseRevocationList(blk.Bytes)
				require.NoError(t, err)
				assert.NoError(t, crl.CheckSignatureFrom(v1.Cert), "the guide's v1 CA signs the CRL")
				m := regexp.MustCompile(`backend: +(https://\S+)`).FindStringSubmatch(out)
				require.Len(t, m, 2, out)
				client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: v1.Pool()}}}
				resp, err := client.Get(m[1] + menderapi.PathDevauthDevices)
				require.NoError(t, err, "the backend's address verifies against the device CA")
				resp.Body.Close()
				assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			}
		})
	}
}

// A name other than localhost must resolve to the server on the devices;
// serve says so. A certificate serve made is reissued, with a log line,
// when --listen needs a name it lacks; and paths are printed absolute.
func TestServeCertificateMessages(t *testing.T) {
	t.Run("guide certificate for a domain", func(t *testing.T) {
		dir := t.TempDir()
		writeGuideDir(t, dir, "local-domain-1993028.com")
		out := startServeCmd(t, "--dir", dir, "--listen", "127.0.0.1:0", "--state", "none")
		assert.Regexp(t, `URL: +https://local-domain-1993028\.com:\d+`, out)
		assert.Contains(t, out, "local-domain-1993028.com must resolve to this host on the devices")
	})
	t.Run("serve's own certificate reissued for a new name", func(t *testing.T) {
		dir := t.TempDir()
		first, err := pki.EnsureServerPKI(dir, []string{"localhost"})
		require.NoError(t, err)
		var out, errb syncBuffer
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- cmdServe(ctx, []string{"--dir", dir, "--listen", "127.0.0.2:0", "--state", "none"}, &out, &errb)
		}()
		require.Eventually(t, func() bool { return strings.Contains(out.String(), "  CA:") }, 15*time.Second, 10*time.Millisecond, errb.String())
		cancel()
		require.NoError(t, <-done)
		assert.Contains(t, errb.String(), "reissued the server certificate serve made")
		assert.Contains(t, errb.String(), "it does not cover 127.0.0.2")
		assert.NotEqual(t, pki.CertFingerprint(first.Cert), pki.CertFingerprint(readCert(t, filepath.Join(dir, "server.crt"))))
		assert.Regexp(t, `URL: +https://127\.0\.0\.2:\d+\n  CA:`, out.String(), "no note: the certificate covers the address")
	})
	t.Run("relative --dir", func(t *testing.T) {
		tmp := t.TempDir()
		t.Chdir(tmp)
		out := startServeCmd(t, "--dir", "data", "--listen", "127.0.0.1:0")
		abs := filepath.Join(tmp, "data")
		assert.Contains(t, out, "CA:          "+filepath.Join(abs, "ca.crt"))
		assert.Contains(t, out, "state:       "+filepath.Join(abs, "state.json"))
		assert.Contains(t, out, "password mender-test", "the documented default is shown")
	})
}

// serve keeps artifacts in DIR/artifacts and bounds uploads by
// --max-upload-size; a bad value is refused before anything starts.
func TestServeArtifactDirAndUploadLimit(t *testing.T) {
	var out, errb syncBuffer
	err := cmdServe(t.Context(), []string{"--dir", t.TempDir(), "--max-upload-size", "0"}, &out, &errb)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--max-upload-size")

	dir := t.TempDir()
	text := startServeCmd(t, "--dir", dir, "--listen", "127.0.0.1:0", "--log-level", "error", "--max-upload-size", "20000")
	m := regexp.MustCompile(`URL: +(https://\S+)`).FindStringSubmatch(text)
	require.Len(t, m, 2, text)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "ca.crt"))))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	login, err := http.NewRequestWithContext(t.Context(), http.MethodPost, m[1]+menderapi.PathLogin, nil)
	require.NoError(t, err)
	login.SetBasicAuth(fakemender.DefaultUser, fakemender.DefaultPassword)
	resp, err := client.Do(login)
	require.NoError(t, err)
	tok, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	upload := func(payload int) *http.Response {
		resp, _ := uploadTestArtifact(t, client, m[1], string(tok), payload)
		return resp
	}
	resp = upload(100)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/api/management/v1/deployments/artifacts/")
	assert.FileExists(t, filepath.Join(dir, "artifacts", id+".mender"))
	assert.Equal(t, http.StatusRequestEntityTooLarge, upload(30000).StatusCode)
}

// uploadTestArtifact uploads a single-file artifact named r<payload> for
// device type qemu with a payload of that many bytes through the
// management API at base, and returns the answer and the artifact's bytes.
func uploadTestArtifact(t *testing.T, client *http.Client, base, token string, payload int) (*http.Response, []byte) {
	t.Helper()
	var art bytes.Buffer
	require.NoError(t, artifact.Write(&art, artifact.WriteOptions{Name: "r" + strconv.Itoa(payload), DeviceTypes: []string{"qemu"}, Type: "single-file",
		Compression: artifact.None, Files: []artifact.InputFile{artifact.FileFromBytes("f.bin", bytes.Repeat([]byte{'x'}, payload))}}))
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, err := mw.CreateFormFile("artifact", "a.mender")
	require.NoError(t, err)
	_, err = fw.Write(art.Bytes())
	require.NoError(t, err)
	require.NoError(t, mw.Close())
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/api/management/v1/deployments/artifacts", &form)
	require.NoError(t, err)
	r.Header.Set("Content-Type", mw.FormDataContentType())
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(r)
	require.NoError(t, err)
	resp.Body.Close()
	return resp, art.Bytes()
}

// serve --mtls hands device traffic to the backend in process; the backend
// still builds download links on the ambassador's https URL (the device's
// scheme and host, from the ambassador's X-Forwarded-* headers), and the
// artifact downloads through the ambassador. Management clients still use
// the backend's own TLS listener.
func TestServeMTLSDeviceTrafficInProcess(t *testing.T) {
	dir := t.TempDir()
	out := startServeCmd(t, "--dir", dir, "--listen", "127.0.0.1:0", "--state", "none", "--mtls",
		"--status-listen", "127.0.0.1:0", "--log-level", "error")
	assert.Contains(t, out, "device link: in process")
	devURL := regexp.MustCompile(`URL: +(https://\S+)`).FindStringSubmatch(out)
	require.Len(t, devURL, 2, out)
	backendURL := regexp.MustCompile(`backend: +(https://\S+)`).FindStringSubmatch(out)
	require.Len(t, backendURL, 2, out)

	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	leaf, err := ca.IssueClient(key.Public(), "dev-1", time.Hour)
	require.NoError(t, err)
	device := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}}}}}
	mgmt := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	body, err := menderapi.BuildAuthRequest(`{"mac":"52:54:00:00:00:01"}`, key.Public(), "")
	require.NoError(t, err)
	sig, err := menderapi.Sign(key, body)
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, devURL[1]+menderapi.PathAuthRequests, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	req.Header.Set(menderapi.HeaderSignature, sig)
	resp, err := device.Do(req)
	require.NoError(t, err)
	jwt, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "the ambassador preauthorizes and the device is accepted: %s", jwt)

	login, err := http.NewRequestWithContext(t.Context(), http.MethodPost, backendURL[1]+menderapi.PathLogin, nil)
	require.NoError(t, err)
	login.SetBasicAuth(fakemender.DefaultUser, defaultServePassword)
	resp, err = mgmt.Do(login)
	require.NoError(t, err)
	tok, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "management login on the backend's TLS listener")
	resp, art := uploadTestArtifact(t, mgmt, backendURL[1], string(tok), 300)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	dep, err := http.NewRequestWithContext(t.Context(), http.MethodPost, backendURL[1]+"/api/management/v1/deployments/deployments",
		strings.NewReader(`{"name":"in-process","artifact_name":"r300","all_devices":true}`))
	require.NoError(t, err)
	dep.Header.Set("Content-Type", "application/json")
	dep.Header.Set("Authorization", "Bearer "+string(tok))
	resp, err = mgmt.Do(dep)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)

	deviceGet := func(u string) (int, []byte) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+string(jwt))
		resp, err := device.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	code, next := deviceGet(devURL[1] + menderapi.PathNextV1 + "?artifact_name=r0&device_type=qemu")
	require.Equal(t, http.StatusOK, code, "next through the ambassador: %s", next)
	var instr menderapi.DeploymentInstructions
	require.NoError(t, json.Unmarshal(next, &instr))
	assert.True(t, strings.HasPrefix(instr.Artifact.Source.URI, devURL[1]+"/"),
		"the download link is on the ambassador's https URL %s, not the in-process link: %s", devURL[1], instr.Artifact.Source.URI)
	code, got := deviceGet(instr.Artifact.Source.URI)
	require.Equal(t, http.StatusOK, code, "download through the ambassador")
	assert.Equal(t, art, got, "the artifact arrives whole")
}

// serve --mtls serves the ambassador through its connection-bounding
// listener, with the bounds given on the command line.
func TestServeMTLSConnectionBounds(t *testing.T) {
	out := startServeCmd(t, "--dir", t.TempDir(), "--listen", "127.0.0.1:0", "--state", "none", "--mtls",
		"--status-listen", "127.0.0.1:0", "--max-conns", "3", "--max-handshakes", "2",
		"--handshake-wait", "750ms", "--idle-timeout", "90s")
	statusURL := regexp.MustCompile(`status:\s+(http://\S+/status)`).FindStringSubmatch(out)
	require.NotNil(t, statusURL, out)
	devURL := regexp.MustCompile(`URL:\s+https://(\S+)`).FindStringSubmatch(out)
	require.NotNil(t, devURL, out)
	_, port, err := net.SplitHostPort(devURL[1])
	require.NoError(t, err)

	type limits struct {
		MaxConns      int64   `json:"max_conns"`
		ConnCeiling   int64   `json:"conn_ceiling"`
		OpenConns     int64   `json:"open_conns"`
		MaxHandshakes int     `json:"max_handshakes"`
		Handshaking   int64   `json:"handshakes_in_progress"`
		FilesSoft     uint64  `json:"files_soft"`
		IdleTimeoutS  float64 `json:"idle_timeout_s"`
	}
	get := func() limits {
		resp, err := http.Get(statusURL[1])
		require.NoError(t, err)
		defer resp.Body.Close()
		var b struct {
			Limits limits `json:"limits"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&b))
		return b.Limits
	}
	l := get()
	assert.Equal(t, int64(3), l.MaxConns)
	assert.Equal(t, int64(11), l.ConnCeiling, "3 + 8")
	assert.Equal(t, 2, l.MaxHandshakes)
	assert.Equal(t, 90.0, l.IdleTimeoutS)
	assert.NotZero(t, l.FilesSoft)

	// A client that never sends its ClientHello is counted by the listener.
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.Eventually(t, func() bool { l := get(); return l.OpenConns == 1 && l.Handshaking == 1 },
		5*time.Second, 10*time.Millisecond, "the device listener bounds connections")

	resp, err := http.Get(strings.TrimSuffix(statusURL[1], "/status") + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, want := range []string{"mtls_connections_max 3\n", "mtls_open_connections 1\n", "\ngo_goroutines ", "\nprocess_open_fds "} {
		assert.Contains(t, string(text), want)
	}
}

func TestServeConnectionBoundFlagErrors(t *testing.T) {
	var out, errb bytes.Buffer
	err := cmdServe(t.Context(), []string{"--dir", t.TempDir(), "--max-conns", "-1", "--idle-timeout", "-5s"}, &out, &errb)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--max-conns -1")
	assert.Contains(t, err.Error(), "--idle-timeout -5s")
}
