package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/ambassador"
	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/pki/pkitest"
)

// testEnv is a fake Mender backend on 127.0.0.1, optionally behind the
// mTLS ambassador, with a throwaway CA that signs the server and devices.
type testEnv struct {
	ca      *pkitest.CA
	backend *fakemender.Server
	// url is where devices connect: the ambassador, or the backend itself.
	url   string
	roots *x509.CertPool
	// viaAmbassador is true when url is the ambassador's.
	viaAmbassador bool
	// backendURL is the backend's own server, where the test artifact is
	// served (no client certificate needed).
	backendURL string
	// artifact, when set, replaces the artifact of every deployment the
	// backend hands out (see serve).
	artifact atomic.Pointer[testArtifact]
	// announced maps a deployment id to the artifact size its
	// instructions announced to the devices.
	announced sync.Map
}

// testArtifact is what a test serves instead of the backend's artifacts.
type testArtifact struct {
	// data is served for every deployment, with Range support.
	data []byte
	// checksum is announced in the instructions; "" means data's sha256.
	checksum string
}

// testArtifactPath is where the backend server serves testEnv.artifact.
const testArtifactPath = "/test-artifact"

// serve is the backend server's handler: the backend, except that it
// notes the artifact size of the deployment instructions it hands out in
// e.announced, and while e.artifact is set, the instructions point at the
// test artifact (with its length and checksum) and the server serves it.
func (e *testEnv) serve(w http.ResponseWriter, r *http.Request) {
	art := e.artifact.Load()
	switch r.URL.Path {
	case testArtifactPath:
		if art == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.mender-artifact")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(art.data))
		return
	case menderapi.PathNextV1, menderapi.PathNextV2:
	default:
		e.backend.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	e.backend.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		var dep menderapi.DeploymentInstructions
		if err := json.Unmarshal(body, &dep); err != nil {
			http.Error(w, "test: decode the backend's instructions: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if art == nil {
			e.announced.Store(dep.ID, dep.Artifact.Size)
			copyAnswer(w, rec, body)
			return
		}
		sum := sha256.Sum256(art.data)
		dep.Artifact.Source.URI = e.backendURL + testArtifactPath
		dep.Artifact.Size, dep.Artifact.Checksum = int64(len(art.data)), hex.EncodeToString(sum[:])
		if art.checksum != "" {
			dep.Artifact.Checksum = art.checksum
		}
		e.announced.Store(dep.ID, dep.Artifact.Size)
		var err error
		if body, err = json.Marshal(dep); err != nil {
			http.Error(w, "test: encode instructions: "+err.Error(), http.StatusInternalServerError)
			return
		}
	}
	copyAnswer(w, rec, body)
}

// copyAnswer writes the recorded answer with body instead of its own.
func copyAnswer(w http.ResponseWriter, rec *httptest.ResponseRecorder, body []byte) {
	for k, v := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

// announcedSize returns the artifact size the devices were told for
// deployment depID, 0 when none was handed out.
func (e *testEnv) announcedSize(depID string) int64 {
	v, _ := e.announced.Load(depID)
	n, _ := v.(int64)
	return n
}

// newEnv starts the backend (auto-accepting when there is no ambassador)
// and, with mtls, the ambassador in front of it. Everything stops at the
// end of the test.
func newEnv(t *testing.T, mtls bool) *testEnv {
	t.Helper()
	ca := pkitest.NewCA(t)
	backend, err := fakemender.New(fakemender.Options{AutoAccept: !mtls, ArtifactDir: t.TempDir()})
	require.NoError(t, err)
	env := &testEnv{ca: ca, backend: backend, roots: ca.Pool()}
	bsrv := httptest.NewUnstartedServer(http.HandlerFunc(env.serve))
	bsrv.TLS = ca.ServerTLSConfig(t)
	bsrv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut at the end of a run
	bsrv.StartTLS()
	t.Cleanup(bsrv.Close)
	env.url, env.backendURL = bsrv.URL, bsrv.URL
	if !mtls {
		return env
	}

	dir := t.TempDir()
	caFile := ca.WriteCA(t, dir)
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	cert, err := ca.IssueServer(key.Public(), "127.0.0.1", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	require.NoError(t, err)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	require.NoError(t, atomicfile.Write(certFile, pki.EncodeCertsPEM(cert), 0o644))
	require.NoError(t, atomicfile.Write(keyFile, keyPEM, 0o600))
	up, err := url.Parse(bsrv.URL)
	require.NoError(t, err)
	amb, err := ambassador.New(ambassador.Options{
		Upstream: up, UpstreamCAFile: caFile,
		User: fakemender.DefaultUser, Password: fakemender.DefaultPassword,
		ServerCertFile: certFile, ServerKeyFile: keyFile, ClientCAFiles: []string{caFile},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background()) // stopped by Cleanup, after the test's own context ends
	done := make(chan struct{})
	go func() { defer close(done); _ = amb.Run(ctx) }()
	asrv := httptest.NewUnstartedServer(amb.Handler())
	asrv.TLS = amb.TLSConfig()
	asrv.Config.ErrorLog = amb.ErrorLog()
	asrv.StartTLS()
	t.Cleanup(func() { asrv.Close(); cancel(); <-done })
	status := amb.StatusHandler()
	require.Eventually(t, func() bool {
		rec := httptest.NewRecorder()
		status.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
		return rec.Code == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond, "ambassador ready (management login)")
	env.url, env.viaAmbassador = asrv.URL, true
	return env
}

// creds mints n credentials in memory; with mtls each gets a certificate
// named after its MAC.
func (e *testEnv) creds(t *testing.T, n int, mtls bool) []*Credential {
	t.Helper()
	o := StoreOptions{Name: func(i int) string { return DefaultMACPrefix.MAC(i) }}
	if mtls {
		o.CA = e.ca.CA
	}
	cs, _, err := LoadCredentials(t.Context(), o, 0, n)
	require.NoError(t, err)
	return cs
}

// fastOptions are fleet options with short intervals for tests.
func (e *testEnv) fastOptions(creds []*Credential) Options {
	return Options{
		ServerURL:         e.url,
		RootCAs:           e.roots,
		Credentials:       creds,
		PollInterval:      300 * time.Millisecond,
		InventoryInterval: time.Second,
		RetryInterval:     200 * time.Millisecond,
		RequestTimeout:    20 * time.Second,
		SampleInterval:    100 * time.Millisecond,
	}
}

// runUntil runs f until cond holds (checked every 20 ms) or limit passes,
// and returns the report.
func runUntil(t *testing.T, f *Fleet, limit time.Duration, cond func(Progress) bool) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if cond(f.Progress()) {
					cancel()
					return
				}
			}
		}
	}()
	r, err := f.Run(ctx)
	require.NoError(t, err)
	require.NotNil(t, r)
	return r
}

// fmtSscanHex parses a hex octet.
func fmtSscanHex(s string, v *int) (int, error) { return fmt.Sscanf(s, "%x", v) }

func itoa(i int) string { return strconv.Itoa(i) }
