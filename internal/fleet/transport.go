package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"
)

// Transport settings of the devices, as the device client's own
// transport has them.
const (
	tlsHandshakeTimeout = 10 * time.Second
	defaultIdleTimeout  = 90 * time.Second
)

// noHTTP2 is the transports' TLSNextProto: non-nil and empty, so net/http
// never speaks HTTP/2 (Mender's clients speak HTTP/1.1). One map serves
// every device; net/http only reads it.
var noHTTP2 = map[string]func(string, *tls.Conn) http.RoundTripper{}

// deviceTransport is the HTTP transport a device's client is given. The
// net/http transport behind it exists only while the device needs one:
// it is built at the first request of a step and, without
// Options.KeepAlive, dropped with its connections when the device's last
// step ends. An idle device therefore holds no transport, no TLS
// configuration and no connection, only its session ticket (for
// resumption) and its credential.
//
// Each device has its own transport and TLS configuration, so a
// connection never carries another device's certificate.
type deviceTransport struct{ d *device }

// RoundTrip sends req through the device's current transport.
func (t deviceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.d.transport().RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of the current
// transport, if any (http.Client.CloseIdleConnections calls it).
func (t deviceTransport) CloseIdleConnections() {
	t.d.mu.Lock()
	tr := t.d.tr
	t.d.mu.Unlock()
	if tr != nil {
		tr.CloseIdleConnections()
	}
}

// transport returns the device's net/http transport, building it when
// there is none.
func (d *device) transport() *http.Transport {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tr == nil {
		d.tr = d.f.newTransport(d)
	}
	return d.tr
}

// dropTransport closes the device's connections and forgets its
// transport.
func (d *device) dropTransport() {
	d.mu.Lock()
	tr, conns := d.detach()
	d.mu.Unlock()
	closeAll(tr, conns)
}

// detach takes the device's transport and open connections away from it;
// d.mu is held.
func (d *device) detach() (*http.Transport, []*trackedConn) {
	tr := d.tr
	d.tr = nil
	return tr, slices.Clone(d.conns)
}

// closeAll closes the idle connections of tr (nil: none) and conns.
func closeAll(tr *http.Transport, conns []*trackedConn) {
	if tr != nil {
		tr.CloseIdleConnections()
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// newTransport builds a transport for device d: HTTP/1.1 only, TCP
// connections from the fleet's connection pool (source address, cap,
// byte counts), and TLS with the device's certificate and session cache.
// No proxy is used: the fleet talks to its server directly.
func (f *Fleet) newTransport(d *device) *http.Transport {
	o := &f.opts
	idle := o.IdleConnTimeout
	if idle <= 0 {
		idle = defaultIdleTimeout
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return f.pool.dial(ctx, d, network, addr)
		},
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		DisableKeepAlives:     o.DisableKeepAlives,
		IdleConnTimeout:       idle,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          noHTTP2,
		MaxIdleConns:          8,
		ExpectContinueTimeout: time.Second,
	}
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		raw, err := f.pool.dial(ctx, d, network, addr)
		if err != nil {
			return nil, err
		}
		conn := tls.Client(raw, f.tlsConfig(d, host))
		hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
		defer cancel()
		err = conn.HandshakeContext(hctx)
		d.leaveAdmission() // the costly part of a connection is done
		if err != nil {
			_ = raw.Close()
			return nil, err
		}
		f.col.handshake(conn.ConnectionState().DidResume)
		return conn, nil
	}
	return tr
}

// tlsConfig is the TLS configuration of one connection of device d to
// host: TLS 1.2 or later, the fleet's roots (shared, never copied), the
// device's certificate when it has one and its one-entry session cache
// unless resumption is off. crypto/tls verifies the server: the
// simulator's servers have certificates with subjectAltNames, so the
// device client's acceptance of legacy Common-Name-only certificates is
// not needed here.
func (f *Fleet) tlsConfig(d *device, host string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		RootCAs:    f.opts.RootCAs,
		ServerName: host,
	}
	if d.cred != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: [][]byte{d.cred.der}, PrivateKey: d.cred.Signer}, nil
		}
	}
	if !f.opts.DisableResumption {
		cfg.ClientSessionCache = (*sessionCache)(d)
	}
	return cfg
}

// sessionCache is a device's TLS session cache: one session, for the
// last server the device talked to (a fleet has one; an artifact host
// other than the server only displaces it for the download). It lives
// in the device itself, so it costs no allocation of its own.
type sessionCache device

// Get returns the session for key, if it is the one kept.
func (c *sessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	d := (*device)(c)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.session == nil || d.sessionKey != key {
		return nil, false
	}
	return d.session, true
}

// Put keeps cs for key in place of any other session; nil removes it.
func (c *sessionCache) Put(key string, cs *tls.ClientSessionState) {
	d := (*device)(c)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case cs != nil:
		d.sessionKey, d.session = key, cs
	case d.sessionKey == key:
		d.sessionKey, d.session = "", nil
	}
}
