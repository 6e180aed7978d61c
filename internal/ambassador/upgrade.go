package ambassador

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// pathDeviceConnect is the only device path that may switch protocols, to
// websocket: Mender's deviceconnect (remote terminal, file transfer, port
// forwarding).
const pathDeviceConnect = "/api/devices/v1/deviceconnect/connect"

// msgUpgradeRefused is the device-facing error of a refused upgrade.
const msgUpgradeRefused = "protocol upgrade refused: only a websocket upgrade of GET " + pathDeviceConnect + " is allowed"

// upgradeClosedShutdown is the closing reason of closeAllUpgrades; it is
// logged at debug level and not counted.
const upgradeClosedShutdown = "shutdown"

// admitUpgrade refuses (400) a request that tries to switch protocols
// anywhere but a websocket upgrade of GET pathDeviceConnect, so that nothing
// of it goes upstream. It returns the writer to forward an admitted upgrade
// with (it tracks the hijacked connection), w itself for a plain request,
// and nil after answering.
func (a *Ambassador) admitUpgrade(w http.ResponseWriter, r *http.Request, cleanPath, rid string) http.ResponseWriter {
	if !isUpgradeAttempt(r.Header) {
		return w
	}
	if r.Method != http.MethodGet || cleanPath != pathDeviceConnect || !onlyWebsocket(r.Header) {
		a.stats.upgradesRefused.Add(1)
		// The request line is logged at info by serveHTTP.
		a.log.Debug("protocol upgrade refused", "request_id", rid,
			"upgrade", truncate(strings.Join(r.Header.Values("Upgrade"), ", "), 64))
		a.reject(w, http.StatusBadRequest, msgUpgradeRefused, rid)
		return nil
	}
	return &upgradeWriter{ResponseWriter: w, a: a, r: r}
}

// isUpgradeAttempt reports whether h asks to switch protocols: an Upgrade
// header, or "upgrade" among the Connection options.
func isUpgradeAttempt(h http.Header) bool {
	return len(h.Values("Upgrade")) > 0 || containsToken(h.Values("Connection"), "upgrade")
}

// onlyWebsocket reports whether the Upgrade header names websocket and
// nothing else.
func onlyWebsocket(h http.Header) bool {
	toks := headerTokens(h.Values("Upgrade"))
	return len(toks) == 1 && strings.EqualFold(toks[0], "websocket")
}

// headerTokens splits comma-separated header values into their trimmed,
// non-empty elements.
func headerTokens(values []string) []string {
	var toks []string
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				toks = append(toks, t)
			}
		}
	}
	return toks
}

// containsToken reports whether token is among the comma-separated
// elements of values, ignoring case.
func containsToken(values []string, token string) bool {
	for _, t := range headerTokens(values) {
		if strings.EqualFold(t, token) {
			return true
		}
	}
	return false
}

// upgradeWriter is the ResponseWriter of an admitted websocket upgrade.
// httputil.ReverseProxy hijacks the device connection through it when the
// upstream answers 101; the connection is then tracked until it closes.
type upgradeWriter struct {
	http.ResponseWriter
	a *Ambassador
	r *http.Request
}

func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack takes over the device connection, clears its deadlines (a
// ReadTimeout or WriteTimeout deadline of the request would cut a
// long-lived websocket; net/http's own Hijack clears them too, a wrapping
// writer's might not) and registers the connection, so that a revocation
// or the certificate's expiry closes it.
func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("clear deadlines of the upgraded connection: %w", err)
	}
	uc, err := w.a.trackUpgraded(conn, w.r)
	if err != nil {
		return nil, nil, err
	}
	setSwitched(w.ResponseWriter)
	return uc, brw, nil
}

// setSwitched records 101 in the statusWriter below w: the proxy writes the
// 101 on the hijacked connection, which the writer does not see.
func setSwitched(w http.ResponseWriter) {
	for w != nil {
		if sw, ok := w.(*statusWriter); ok {
			if sw.status == 0 {
				sw.status = http.StatusSwitchingProtocols
			}
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// upgradedConn is a hijacked device connection. Close deregisters it and
// stops its expiry timer; it may be called more than once.
type upgradedConn struct {
	net.Conn
	reg    *upgradeRegistry
	serial string
	certs  []*x509.Certificate
	chains [][]*x509.Certificate
	timer  *time.Timer // guarded by reg.mu

	closeOnce sync.Once
	closeErr  error
}

func (c *upgradedConn) Close() error {
	c.closeOnce.Do(func() {
		c.reg.remove(c)
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}

// CloseWrite keeps the half-close of tls.Conn visible to the proxy, which
// uses it when the upstream ends its side first.
func (c *upgradedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// upgradeRegistry tracks the upgraded connections by client certificate
// serial (serialKey). Its zero value is ready to use.
type upgradeRegistry struct {
	mu    sync.Mutex
	conns map[string]map[*upgradedConn]struct{}
}

// add registers c and arms f to run once after d (the certificate's expiry).
func (g *upgradeRegistry) add(c *upgradedConn, d time.Duration, f func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns == nil {
		g.conns = make(map[string]map[*upgradedConn]struct{})
	}
	set := g.conns[c.serial]
	if set == nil {
		set = make(map[*upgradedConn]struct{})
		g.conns[c.serial] = set
	}
	set[c] = struct{}{}
	c.timer = time.AfterFunc(d, f)
}

// remove deregisters c and reports whether it was registered, so that of
// several closers (revocation, expiry, the proxy) one reports the closing.
func (g *upgradeRegistry) remove(c *upgradedConn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dropLocked(c)
}

func (g *upgradeRegistry) dropLocked(c *upgradedConn) bool {
	set := g.conns[c.serial]
	if _, ok := set[c]; !ok {
		return false
	}
	delete(set, c)
	if len(set) == 0 {
		delete(g.conns, c.serial)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	return true
}

// takeIf deregisters and returns the connections for which fail returns
// an error, with their reasons and errors.
func (g *upgradeRegistry) takeIf(fail func(c *upgradedConn) (string, error)) []closing {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []closing
	for _, set := range g.conns {
		for c := range set {
			if reason, err := fail(c); err != nil {
				g.dropLocked(c)
				out = append(out, closing{c: c, reason: reason, err: err})
			}
		}
	}
	return out
}

// closing is an upgraded connection to close and why.
type closing struct {
	c      *upgradedConn
	reason string
	err    error
}

// trackUpgraded registers a hijacked connection of r and arms its expiry.
// The certificate is checked again once the connection is registered: a
// reload that ran since the request's check has either seen the
// registration or left its trust state for this check.
func (a *Ambassador) trackUpgraded(conn net.Conn, r *http.Request) (*upgradedConn, error) {
	var certs []*x509.Certificate
	var chains [][]*x509.Certificate
	if r.TLS != nil {
		certs, chains = r.TLS.PeerCertificates, r.TLS.VerifiedChains
	}
	if len(certs) == 0 { // the handler checked the certificate; this is not reached
		_ = conn.Close()
		return nil, ErrNoClientCert
	}
	leaf := certs[0]
	uc := &upgradedConn{Conn: conn, reg: &a.upgrades, serial: serialKey(leaf.SerialNumber), certs: certs, chains: chains}
	expired := fmt.Errorf("%w (valid until %s)", ErrCertNotValidNow, leaf.NotAfter.UTC().Format(time.RFC3339))
	a.upgrades.add(uc, leaf.NotAfter.Sub(a.now())+time.Millisecond, func() {
		if a.upgrades.remove(uc) {
			a.closeUpgraded([]closing{{c: uc, reason: reasonNotValidNow, err: expired}})
		}
	})
	if reason, err := a.checkPeer(a.trust.Load(), certs, chains); err != nil {
		if a.upgrades.remove(uc) {
			a.closeUpgraded([]closing{{c: uc, reason: reason, err: err}})
		}
		return nil, err
	}
	a.stats.upgrades.Add(1)
	a.log.Debug("connection upgraded to websocket", "serial", uc.serial, "remote", conn.RemoteAddr().String())
	return uc, nil
}

// closeRevokedUpgrades closes the upgraded connections whose certificate st
// no longer accepts (blacklisted, revoked by a CRL, CA removed, expired).
// Reload calls it with the state it installed.
func (a *Ambassador) closeRevokedUpgrades(st *trustState) {
	a.closeUpgraded(a.upgrades.takeIf(func(c *upgradedConn) (string, error) {
		return a.checkPeer(st, c.certs, c.chains)
	}))
}

// closeAllUpgrades closes every upgraded connection; Run calls it when it
// returns, because http.Server.Shutdown neither closes nor waits for
// hijacked connections.
func (a *Ambassador) closeAllUpgrades() {
	a.closeUpgraded(a.upgrades.takeIf(func(*upgradedConn) (string, error) {
		return upgradeClosedShutdown, errors.New("ambassador shutting down")
	}))
}

// closeUpgraded closes the connections in parallel and waits: closing a
// tls.Conn may wait up to 5 s to send its close_notify to a device that
// does not read.
func (a *Ambassador) closeUpgraded(cs []closing) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c.reason == upgradeClosedShutdown {
			a.log.Debug("upgraded connection closed", "serial", c.c.serial, "reason", c.reason)
		} else {
			a.log.Info("upgraded connection closed", "serial", c.c.serial, "reason", c.reason, "error", c.err)
			a.stats.upgradesClosed.Add(1)
			a.metrics.upgradeClosed(c.reason)
		}
		wg.Go(func() { _ = c.c.Close() })
	}
	wg.Wait()
}
