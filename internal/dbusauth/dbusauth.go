//go:build !nodbus

package dbusauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// Service is the running D-Bus service. Its methods are safe for
// concurrent use.
type Service struct {
	opts    Options
	log     *slog.Logger
	conn    *dbus.Conn
	backoff retry.Backoff
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	// closeOnce makes Close idempotent.
	closeOnce sync.Once

	mu       sync.Mutex
	token    string // "" = none
	emitted  uint64 // count of signals sent
	fetching bool
	retryNow chan struct{} // non-nil while a retry waits: a send starts it at once
	attempt  int           // consecutive failed fetches
}

// Start connects to the bus, exports the object and requests the name
// (without queueing). When another process owns the name the error wraps
// [ErrNameTaken] and names the owner. The service runs until [Service.Close].
func Start(opts Options) (*Service, error) {
	if opts.Fetch == nil {
		return nil, errors.New("dbusauth options: Fetch is nil: set the function that authenticates")
	}
	if opts.ServerURL == "" {
		return nil, errors.New("dbusauth options: ServerURL is empty: set the forwarder URL handed out with the token")
	}
	if opts.Address == "" {
		opts.Address = DefaultSystemBusAddress
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = DefaultRetryBase
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background()) // ended by Close
	conn, err := dbus.Connect(opts.Address, dbus.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("connect to the D-Bus system bus at %s: %w (is dbus running? DBUS_SYSTEM_BUS_ADDRESS names another bus)", opts.Address, err)
	}
	s := &Service{
		opts: opts, log: log, conn: conn, ctx: ctx, cancel: cancel,
		backoff: retry.Backoff{Base: opts.RetryBase, Max: opts.RetryMax, Rand: opts.Rand},
	}
	fail := func(err error) (*Service, error) {
		_ = conn.Close()
		cancel()
		return nil, err
	}
	// Method tables, not conn.Export: Export finds methods with
	// reflect.Type.Method, which makes the linker keep every exported method
	// of every type in the binary (1.6 MB more on armv7).
	if err := conn.ExportMethodTable(map[string]any{
		"GetJwtToken":   s.getJwtToken,
		"FetchJwtToken": s.fetchJwtToken,
	}, ObjectPath, Interface); err != nil {
		return fail(fmt.Errorf("export %s on D-Bus: %w", Interface, err))
	}
	if err := conn.ExportMethodTable(map[string]any{
		"Introspect": func() (string, *dbus.Error) { return IntrospectXML, nil },
	}, ObjectPath, "org.freedesktop.DBus.Introspectable"); err != nil {
		return fail(fmt.Errorf("export introspection on D-Bus: %w", err))
	}
	reply, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fail(fmt.Errorf("request the D-Bus name %s: %w (the bus policy must let this user own it: install io.mender.AuthenticationManager.conf in /usr/share/dbus-1/system.d)", BusName, err))
	}
	if reply != dbus.RequestNameReplyPrimaryOwner && reply != dbus.RequestNameReplyAlreadyOwner {
		return fail(fmt.Errorf("%w by %s; stop it first (systemctl stop mender-authd, or the other device-agent)", ErrNameTaken, describeOwner(conn, BusName)))
	}
	log.Info("D-Bus service ready", "name", BusName, "object", string(ObjectPath), "server_url", opts.ServerURL)
	return s, nil
}

// Close releases the name, stops a running fetch or a pending retry and
// waits for them, and closes the bus connection. It is idempotent and
// always returns nil: there is nothing left to do about a bus that is gone.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		if s.conn.Connected() {
			_, _ = s.conn.ReleaseName(BusName)
		}
		s.cancel() // also closes the connection (dbus.WithContext)
		s.wg.Wait()
		_ = s.conn.Close()
	})
	return nil
}

// Done is closed when the bus connection is lost (the bus stopped) or the
// service closed; a daemon then exits so that its supervisor restarts it.
func (s *Service) Done() <-chan struct{} { return s.conn.Context().Done() }

// Session returns what GetJwtToken answers: the cached token and the
// server URL, or "" and "" without a token.
func (s *Service) Session() (token, serverURL string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token == "" {
		return "", ""
	}
	return s.token, s.opts.ServerURL
}

// Publish caches token, a new token the agent got on its own (its daemon
// loop re-authenticated), and signals it when it differs from the cached
// one. "" is ignored: a dropped token is not a failed authentication.
func (s *Service) Publish(token string) {
	if token == "" {
		return
	}
	s.mu.Lock()
	if token == s.token {
		s.mu.Unlock()
		return
	}
	s.token = token
	s.emitted++
	s.mu.Unlock()
	s.emit(token, s.opts.ServerURL)
}

// Fetch starts one authentication unless one is running (single flight) and
// returns true; it returns false only when the service is closed. A retry
// waiting for its backoff starts at once.
func (s *Service) Fetch() bool {
	if s.ctx.Err() != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetching {
		return true
	}
	if s.retryNow != nil {
		select {
		case s.retryNow <- struct{}{}:
		default:
		}
		return true
	}
	s.fetching = true
	s.wg.Add(1)
	go s.fetchLoop()
	return true
}

// fetchLoop authenticates, and after a failure retries with backoff until
// one succeeds or the service closes.
func (s *Service) fetchLoop() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		before := s.emitted
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.FetchTimeout)
		start := time.Now()
		token, err := s.opts.Fetch(ctx)
		cancel()
		if s.ctx.Err() != nil {
			s.endFetch(nil)
			return
		}
		if err == nil && token != "" {
			s.mu.Lock()
			// The agent's OnToken hook may have published it already.
			dup := s.token == token && s.emitted != before
			s.token, s.attempt, s.fetching = token, 0, false
			if !dup {
				s.emitted++
			}
			s.mu.Unlock()
			s.log.Info("D-Bus: token fetched", "token", menderapi.TokenFingerprint(token), "took", time.Since(start).Round(time.Millisecond))
			if !dup {
				s.emit(token, s.opts.ServerURL)
			}
			return
		}
		if err == nil {
			err = errors.New("the server issued an empty token")
		}
		s.mu.Lock()
		s.token = ""
		s.emitted++
		wait := s.backoff.Delay(s.attempt)
		s.attempt++
		attempt := s.attempt
		retryNow := make(chan struct{}, 1)
		s.fetching, s.retryNow = false, retryNow
		s.mu.Unlock()
		s.log.Warn("D-Bus: authentication failed; consumers get an empty token", "error", err,
			"attempt", attempt, "retry_in", wait.Round(time.Millisecond))
		s.emit("", "")
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-retryNow:
		case <-s.ctx.Done():
		}
		t.Stop()
		if !s.endFetch(retryNow) {
			return
		}
	}
}

// endFetch leaves the retry wait; it reports whether to fetch again (false
// once the service is closed).
func (s *Service) endFetch(retryNow chan struct{}) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retryNow == retryNow {
		s.retryNow = nil
	}
	if s.ctx.Err() != nil {
		s.fetching = false
		return false
	}
	s.fetching = true
	return true
}

// emit sends the signal; the caller has counted it in s.emitted.
func (s *Service) emit(token, serverURL string) {
	if err := s.conn.Emit(ObjectPath, Interface+"."+Signal, token, serverURL); err != nil {
		s.log.Warn("D-Bus: send "+Signal, "error", err)
		return
	}
	s.log.Debug("D-Bus: "+Signal+" sent", "token", menderapi.TokenFingerprint(token), "server_url", serverURL)
}

// getJwtToken is the GetJwtToken method: the cached token and the server URL.
func (s *Service) getJwtToken() (string, string, *dbus.Error) {
	token, url := s.Session()
	return token, url, nil
}

// fetchJwtToken is the FetchJwtToken method: it starts an authentication
// (single flight) and answers at once.
func (s *Service) fetchJwtToken() (bool, *dbus.Error) {
	return s.Fetch(), nil
}

// describeOwner names the owner of name: its unique name, PID and command
// when the bus tells them, else "another process".
func describeOwner(conn *dbus.Conn, name string) string {
	var unique string
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetNameOwner", 0, name).Store(&unique); err != nil {
		return "another process"
	}
	var pid uint32
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, unique).Store(&pid); err != nil {
		return unique
	}
	desc := fmt.Sprintf("%s (PID %d", unique, pid)
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		desc += ", " + strings.TrimSpace(string(comm))
	}
	return desc + ")"
}
