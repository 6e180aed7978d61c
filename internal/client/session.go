package client

import "net/http"

// Session returns the current device token verbatim and the base URL of
// the server that issued it; both are "" when the client holds no token.
// It is for handing the token on (the D-Bus GetJwtToken answer); never log
// it, log menderapi.TokenFingerprint instead. Safe for concurrent use.
func (c *Client) Session() (token, server string) { return c.current() }

// Servers returns the normalised server base URLs in failover order.
func (c *Client) Servers() []string { return append([]string(nil), c.servers...) }

// Transport returns the round tripper the client's API calls use: with the
// default transport, TLS with the mTLS client certificate read from
// Options.TLSCredential at every handshake (a file or TPM key), HTTP/1.1
// only, and proxies from the environment. A local forwarder sends other
// processes' requests through it so that they present the device's
// certificate. It follows no redirects (that is http.Client's job) and
// supports protocol upgrades (a 101 answer's Body is the raw connection).
func (c *Client) Transport() http.RoundTripper {
	if c.hc.Transport == nil {
		return http.DefaultTransport
	}
	return c.hc.Transport
}
