package client

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// TransportTuning adjusts the default transport (the one [New] builds when
// Options.HTTPClient is nil) for a process that runs many clients at once,
// such as the fleet simulator: TLS session resumption, a handshake counter
// and connection reuse. The zero value changes nothing.
type TransportTuning struct {
	// SessionCache stores TLS sessions so that later connections to the
	// same server resume them (an abbreviated handshake without the client
	// certificate and its signature). nil means no resumption: every
	// connection makes a full handshake. Give each client its own cache
	// (tls.NewLRUClientSessionCache(1)): a session belongs to one device.
	SessionCache tls.ClientSessionCache
	// OnHandshake is called after every successful TLS handshake of a new
	// direct connection, with whether it resumed a session. It must be fast
	// and safe for concurrent use. nil means none. Connections through an
	// HTTP proxy (HTTPS_PROXY) are handshaken by net/http itself and are not
	// counted.
	OnHandshake func(resumed bool)
	// DisableKeepAlives closes each connection after one request, so no
	// idle connection is kept between polls. False keeps connections alive
	// (the default).
	DisableKeepAlives bool
	// IdleConnTimeout is how long an idle kept-alive connection stays open.
	// 0 means 90s.
	IdleConnTimeout time.Duration
	// DisableHTTP2 speaks HTTP/1.1 only, as Mender's own clients do. The
	// default transport already does (newTransport), so this only makes
	// it explicit; false does not turn HTTP/2 on.
	DisableHTTP2 bool
}

// apply tunes tr, which newTransport built, and returns it.
func (t TransportTuning) apply(tr *http.Transport) *http.Transport {
	if t.SessionCache != nil {
		// forHost clones this config per connection; the clone shares the cache.
		tr.TLSClientConfig.ClientSessionCache = t.SessionCache
	}
	tr.DisableKeepAlives = t.DisableKeepAlives
	if t.DisableHTTP2 {
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // non-nil and empty: no HTTP/2
	}
	if t.IdleConnTimeout > 0 {
		tr.IdleConnTimeout = t.IdleConnTimeout
	}
	if on := t.OnHandshake; on != nil {
		dial := tr.DialTLSContext
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if tc, ok := conn.(*tls.Conn); ok && err == nil {
				on(tc.ConnectionState().DidResume)
			}
			return conn, err
		}
	}
	return tr
}

// CloseIdleConnections closes the kept-alive connections that are idle,
// for example when the process stops many clients. Connections in use are
// not interrupted. Safe for concurrent use.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Job names one of the two periodic jobs of [Client.Run].
type Job int

// The jobs of Run.
const (
	// JobInventory sends the inventory (SendInventory); its first attempt
	// also authenticates.
	JobInventory Job = iota
	// JobUpdate checks for a deployment and hands instructions to
	// Options.OnDeployment. Run starts it once the first inventory attempt
	// is over and the client has authenticated.
	JobUpdate
)

// StepState is what Run keeps per job between attempts (the count of
// consecutive failures that drives the backoff). The zero value is the
// state before the first attempt; one StepState belongs to one job of one
// client and must not be shared.
type StepState struct {
	attempt int
}

// Step makes one attempt of job exactly as Run does and returns how long
// Run would wait before the next attempt: the job's interval with jitter
// after a success, RetryPollInterval while the device is pending, the
// server's Retry-After, the jittered backoff after transient failures, and
// UpdatePollInterval after permanent ones (logged as Run logs them). It
// returns 0 when ctx is done.
//
// Step lets a process that simulates many devices schedule their jobs on
// timers instead of running Run's three goroutines per device; the
// protocol, the retry policy and the logs are Run's own. A caller that
// does so must follow Run's order: wait [Client.FirstContactDelay], run
// JobInventory, and start JobUpdate after an inventory attempt once
// [Client.Authenticated] holds. Steps of the two jobs may run concurrently.
func (c *Client) Step(ctx context.Context, job Job, st *StepState) time.Duration {
	s := c.jobSchedule(job)
	err := s.run(ctx)
	if ctx.Err() != nil {
		return 0
	}
	return c.nextWait(s, err, &st.attempt)
}

// jobSchedule returns Run's schedule for job.
func (c *Client) jobSchedule(job Job) schedule {
	if job == JobUpdate {
		return schedule{name: "update", interval: c.opts.UpdatePollInterval, run: c.checkAndReport}
	}
	return schedule{name: "inventory", interval: c.opts.InventoryPollInterval, run: c.SendInventory}
}

// FirstContactDelay returns a random delay under one second, the wait Run
// makes before its first request so that a fleet that boots together does
// not knock at once.
func (c *Client) FirstContactDelay() time.Duration {
	return time.Duration(c.rand() * float64(firstContactSpread))
}

// Authenticated reports whether the client has authenticated successfully
// at least once.
func (c *Client) Authenticated() bool {
	select {
	case <-c.authOK:
		return true
	default:
		return false
	}
}
