package client

import (
	"crypto/x509"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// OnToken sees every new token with its server, and Session returns the
// same pair; a failed authentication calls nothing.
func TestOnTokenAndSession(t *testing.T) {
	f := newFakeServer(t)
	var mu sync.Mutex
	var got [][2]string
	c, _ := memClient(t, f, func(o *Options) {
		o.OnToken = func(token, server string) {
			mu.Lock()
			got = append(got, [2]string{token, server})
			mu.Unlock()
		}
	})
	tok, srv := c.Session()
	assert.Empty(t, tok, "no token before the first authentication")
	assert.Empty(t, srv)

	require.NoError(t, c.Authenticate(t.Context()))
	require.NoError(t, c.Authenticate(t.Context()))
	tok, srv = c.Session()
	assert.Equal(t, f.currentToken(), tok)
	assert.Equal(t, "https://mender.test", srv)
	mu.Lock()
	assert.Len(t, got, 2, "one call per successful authentication")
	assert.Equal(t, [2]string{tok, "https://mender.test"}, got[1], "the last call carries the current token")
	assert.NotEqual(t, got[0][0], got[1][0], "each authentication yields a new token")
	mu.Unlock()

	f.on(routeAuth, reply{status: http.StatusUnauthorized})
	require.Error(t, c.Authenticate(t.Context()))
	mu.Lock()
	assert.Len(t, got, 2, "a refused authentication does not call OnToken")
	mu.Unlock()
	assert.Equal(t, []string{"https://mender.test"}, c.Servers())
}

// Transport presents the client certificate: a request sent through it by
// someone else (the forwarder) passes a server that requires one.
func TestTransportPresentsClientCertificate(t *testing.T) {
	serverCA, deviceCA := newCA(t, "Server CA"), newCA(t, "Device CA")
	var peers []*x509.Certificate
	var mu sync.Mutex
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		peers = append(peers, r.TLS.PeerCertificates...)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	srv := startTLSServer(t, h, serverCA.serverCert(t, leafSpec{ips: []net.IP{net.IPv4(127, 0, 0, 1)}}), deviceCA.pool)
	key := newTestKey(t)
	cred := &testCred{Signer: key}
	cred.set(deviceCA.issue(t, leafSpec{cn: "device-1", serial: 7, usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey))
	opts, _ := baseOptions(key, srv.URL)
	opts.RootCAs = serverCA.pool
	opts.TLSCredential = cred
	c, err := New(opts)
	require.NoError(t, err)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/anything", nil)
	require.NoError(t, err)
	resp, err := c.Transport().RoundTrip(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, peers, "the server requires a client certificate")
	assert.Equal(t, "device-1", peers[0].Subject.CommonName)
}
