// Package forwarder is the local HTTP forwarder that Mender's mender-auth
// hands out as the server URL: an HTTP server on 127.0.0.1 that sends every
// request on to the current Mender server (or mTLS ambassador) over the
// device's TLS transport, so mender-update, mender-connect and the other
// add-ons reach the server with the device's client certificate without
// ever loading its key (a TPM key included).
//
// Requests and answers stream both ways (httputil.ReverseProxy), headers
// pass unchanged (Authorization included: the consumer sets the Bearer
// token itself), websocket upgrades are spliced, and time is bounded: the
// answer's headers must come within HeaderTimeout and the transfer must not
// stall for longer than IdleTimeout, however long a download takes. Only
// loopback peers naming this forwarder in Host are served.
//
// mender-update downloads an artifact straight from the source.uri of the
// deployments/next answer. When that link points at the server itself (an
// mTLS ambassador serves the artifact), a direct download would need the
// client certificate, so the forwarder rewrites such links into its own
// /download/ URLs and streams them over the device's TLS transport, Range
// requests included. Links to other hosts (object storage) stay as they are.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults applied by [Listen] for zero Options fields.
const (
	DefaultAddr          = "127.0.0.1:0"
	DefaultHeaderTimeout = 60 * time.Second
	DefaultIdleTimeout   = 60 * time.Second
)

// downloadPrefix starts the path of a rewritten artifact link; the rest is
// the original URL in unpadded base64url.
const downloadPrefix = "/download/"

// Target is where requests go at the moment of one request.
type Target struct {
	// Servers are the configured server base URLs; download links whose
	// scheme and host match one of them are rewritten, and only such links
	// are served under /download/.
	Servers []string
	// Current is the base URL requests go to now: the server that issued
	// the device token. "" means Servers[0].
	Current string
	// Transport sends the requests: the device's mTLS transport. nil means
	// http.DefaultTransport (no client certificate).
	Transport http.RoundTripper
}

// Options configure a [Forwarder].
type Options struct {
	// Addr is the listen address; it must be a loopback address. "" means
	// 127.0.0.1:0, a random free port.
	Addr string
	// Target returns where to send each request; it is called once per
	// request and must be safe for concurrent use. Required.
	Target func() Target
	// HeaderTimeout bounds the wait for the upstream answer's headers. 0
	// means 60s.
	HeaderTimeout time.Duration
	// IdleTimeout bounds any stall of a transfer (no byte read from the
	// request body or from the answer body) once the headers arrived; a
	// long download that keeps moving is never cut. Upgraded connections
	// (websockets) are not bounded: their peers ping. 0 means 60s.
	IdleTimeout time.Duration
	// Logger receives one debug line per request and warnings for failed
	// ones, never a header value or a query string. nil discards them.
	Logger *slog.Logger
}

// Forwarder is a running local forwarder. Its methods are safe for
// concurrent use.
type Forwarder struct {
	opts  Options
	log   *slog.Logger
	ln    net.Listener
	url   string
	proxy *httputil.ReverseProxy
	srv   *http.Server
	wg    sync.WaitGroup // handlers in flight, hijacked ones included
}

// Listen validates opts and binds the listener; [Forwarder.Run] serves.
func Listen(opts Options) (*Forwarder, error) {
	if opts.Target == nil {
		return nil, errors.New("forwarder options: Target is nil: set the function that names the server")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("forwarder address %q: %w (use 127.0.0.1:PORT)", opts.Addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("forwarder address %q: not a loopback address; the forwarder serves this device only (use 127.0.0.1:PORT)", opts.Addr)
	}
	if opts.HeaderTimeout < 0 || opts.IdleTimeout < 0 {
		return nil, errors.New("forwarder options: HeaderTimeout and IdleTimeout must not be negative (0 means the default)")
	}
	if opts.HeaderTimeout == 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("forwarder: listen on %s: %w", opts.Addr, err)
	}
	f := &Forwarder{opts: opts, log: log, ln: ln, url: "http://" + ln.Addr().String()}
	f.proxy = &httputil.ReverseProxy{
		Rewrite:        f.rewrite,
		Transport:      roundTripperFunc(f.roundTrip),
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.errorHandler,
		FlushInterval:  -1, // stream: flush after every write
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	f.srv = &http.Server{
		Handler:           http.HandlerFunc(f.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return f, nil
}

// URL returns the forwarder's base URL, "http://127.0.0.1:PORT": the
// server_url handed out over D-Bus.
func (f *Forwarder) URL() string { return f.url }

// Run serves until ctx is done, then closes the listener and every
// connection (upgraded ones included) and returns once all handlers have
// returned. It returns an error only when serving fails.
func (f *Forwarder) Run(ctx context.Context) error {
	f.srv.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- f.srv.Serve(f.ln) }()
	var err error
	select {
	case <-ctx.Done():
		_ = f.srv.Close()
		<-errc
	case err = <-errc:
		_ = f.srv.Close()
	}
	f.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("forwarder on %s: %w", f.url, err)
	}
	return nil
}

// reqState is what one request carries through the proxy hooks.
type reqState struct {
	target Target
	next   bool // a deployments/next request: its answer's links are rewritten
	dog    *watchdog
	start  time.Time
}

type stateKey struct{}

func stateOf(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// serveHTTP checks the peer and the Host, then proxies under a watchdog.
func (f *Forwarder) serveHTTP(w http.ResponseWriter, r *http.Request) {
	f.wg.Add(1)
	defer f.wg.Done()
	if !loopbackPeer(r.RemoteAddr) {
		f.log.Warn("forwarder: request from a non-loopback peer refused", "peer", r.RemoteAddr)
		http.Error(w, "forwarder: only local clients are served", http.StatusForbidden)
		return
	}
	if !f.forUs(r) {
		f.log.Warn("forwarder: request for another host refused", "host", r.Host, "method", r.Method)
		http.Error(w, fmt.Sprintf("forwarder: requests must name this forwarder (%s), not %q; it is not a general proxy", strings.TrimPrefix(f.url, "http://"), r.Host), http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	st := &reqState{
		target: f.opts.Target(),
		next:   isNextRequest(r),
		dog:    newWatchdog(f.opts.HeaderTimeout, f.opts.IdleTimeout, cancel),
		start:  time.Now(),
	}
	defer st.dog.stop()
	f.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, stateKey{}, st)))
}

// forUs reports whether r names this forwarder: origin-form, with a Host
// that is a loopback address or localhost. Absolute-form requests for other
// hosts and DNS-rebinding style Host names are refused.
func (f *Forwarder) forUs(r *http.Request) bool {
	if r.URL.Host != "" && !strings.EqualFold(r.URL.Host, r.Host) {
		return false
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func loopbackPeer(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// rewrite points the outgoing request at the current server, or for a
// /download/ link at the original artifact URL.
func (f *Forwarder) rewrite(pr *httputil.ProxyRequest) {
	st := stateOf(pr.In.Context())
	if enc, ok := strings.CutPrefix(pr.In.URL.Path, downloadPrefix); ok {
		u, err := decodeDownload(enc, st.target.Servers)
		if err != nil {
			// errorHandler answers; the request never leaves.
			pr.Out.URL = &url.URL{Scheme: "invalid", Opaque: err.Error()}
			return
		}
		pr.Out.URL = u
		pr.Out.Host = ""
	} else {
		base, err := currentServer(st.target)
		if err != nil {
			pr.Out.URL = &url.URL{Scheme: "invalid", Opaque: err.Error()}
			return
		}
		pr.SetURL(base)
	}
	if st.next {
		// The answer is read and rewritten here: keep it uncompressed.
		pr.Out.Header.Del("Accept-Encoding")
	}
	if pr.Out.Body != nil && pr.Out.Body != http.NoBody {
		pr.Out.Body = &progressBody{ReadCloser: pr.Out.Body, dog: st.dog}
	}
}

// roundTrip sends the request with the target's transport; a request that
// rewrite marked invalid fails here with its reason.
func (f *Forwarder) roundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "invalid" {
		return nil, &refusedError{msg: r.URL.Opaque}
	}
	st := stateOf(r.Context())
	rt := st.target.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	return rt.RoundTrip(r)
}

// refusedError is a request the forwarder will not send.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

func (f *Forwarder) modifyResponse(resp *http.Response) error {
	st := stateOf(resp.Request.Context())
	if resp.StatusCode == http.StatusSwitchingProtocols {
		st.dog.stop() // an upgraded connection lives as long as its peers want
		f.log.Debug("forwarder: connection upgraded", "path", resp.Request.URL.Path,
			"upgrade", resp.Header.Get("Upgrade"))
		return nil
	}
	st.dog.kick()
	if st.next && resp.StatusCode == http.StatusOK {
		if err := f.rewriteNext(resp, st.target.Servers); err != nil {
			return err
		}
	}
	resp.Body = &progressBody{ReadCloser: resp.Body, dog: st.dog}
	f.log.Debug("forwarder: request forwarded", "method", resp.Request.Method, "path", resp.Request.URL.Path,
		"status", resp.StatusCode, "upstream", resp.Request.URL.Host, "headers_in", time.Since(st.start).Round(time.Millisecond))
	return nil
}

func (f *Forwarder) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	st := stateOf(r.Context())
	status, msg := http.StatusBadGateway, "forwarder: upstream request failed: "+oneLine(err.Error())
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		status, msg = http.StatusForbidden, "forwarder: "+refused.msg
	case st.dog.fired():
		status, msg = http.StatusGatewayTimeout, "forwarder: "+st.dog.reason()
	case r.Context().Err() != nil:
		// The local client went away: nobody reads an answer.
		f.log.Debug("forwarder: client went away", "method", r.Method, "path", r.URL.Path)
		return
	}
	f.log.Warn("forwarder: request failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", oneLine(err.Error()))
	http.Error(w, msg, status)
}

// currentServer returns the base URL to forward to.
func currentServer(t Target) (*url.URL, error) {
	s := t.Current
	if s == "" {
		if len(t.Servers) == 0 {
			return nil, errors.New("no server configured")
		}
		s = t.Servers[0]
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("server URL %q is not a URL with a host", s)
	}
	return u, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (fn roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return fn(r) }
