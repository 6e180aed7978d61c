package ambassador

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Errors of the management side; the handler maps them to 502.
var (
	// ErrLoginRejected means the upstream refused the management
	// credentials (401/403); check User and Password.
	ErrLoginRejected = errors.New("management login rejected")
	// ErrLoginFailed wraps every other failed management login.
	ErrLoginFailed = errors.New("management login failed")
	// ErrPreauthFailed means the preauthorization call answered neither 201
	// nor 409.
	ErrPreauthFailed = errors.New("preauthorization failed")
	// ErrUpstreamUnavailable wraps transport errors talking to the upstream.
	ErrUpstreamUnavailable = errors.New("upstream unavailable")
)

// Login backoff and refresh policy.
const (
	loginBackoffBase = time.Second
	loginBackoffMax  = 30 * time.Second
	refreshFraction  = 0.8 // refresh at 80% of the token lifetime
	minRefreshWait   = time.Second
	maxTokenBytes    = 64 << 10
)

// mgmtState is the management token and the last login outcome.
type mgmtState struct {
	token       string
	obtained    time.Time
	expires     time.Time // zero when the token has no readable exp claim
	refreshAt   time.Time // zero = refresh only on 401
	lastErr     error     // error of the last login, nil after a success
	lastFailure time.Time // when lastErr happened
}

func (a *Ambassador) mgmtSnapshot() mgmtState {
	a.mgmtMu.Lock()
	defer a.mgmtMu.Unlock()
	return a.mgmt
}

// usable reports whether m holds a token that has not expired at now.
func (m mgmtState) usable(now time.Time) bool {
	return m.token != "" && (m.expires.IsZero() || now.Before(m.expires))
}

// jwtExpiry reads the exp claim of a JWT without verifying it.
func jwtExpiry(tok string) (time.Time, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("token is not a JWT (want three dot-separated parts)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, fmt.Errorf("decode JWT payload: %w", err)
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}, fmt.Errorf("decode JWT claims: %w", err)
	}
	if claims.Exp == nil || *claims.Exp <= 0 || *claims.Exp > 1<<40 {
		return time.Time{}, errors.New("JWT has no usable exp claim")
	}
	return time.Unix(int64(*claims.Exp), 0), nil
}

// refreshTime is when a token obtained at obtained and expiring at expires
// should be replaced: at 80% of its lifetime.
func refreshTime(obtained, expires time.Time) time.Time {
	if expires.IsZero() {
		return time.Time{}
	}
	life := expires.Sub(obtained)
	return obtained.Add(time.Duration(float64(life) * refreshFraction))
}

// loginBackoff returns the wait before login attempt n+1 after n failures:
// exponential from 1s, capped at 30s, with jitter in [d/2, d).
func loginBackoff(failures int) time.Duration {
	d := loginBackoffBase
	for i := 1; i < failures && d < loginBackoffMax; i++ {
		d *= 2
	}
	d = min(d, loginBackoffMax)
	return d/2 + rand.N(d/2)
}

// loginLocked obtains a new management token. Callers hold loginMu.
func (a *Ambassador) loginLocked(ctx context.Context) error {
	u := a.opts.Upstream.JoinPath(menderapi.PathLogin)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), http.NoBody)
	if err != nil {
		return fmt.Errorf("%w: build request for %s: %v", ErrLoginFailed, u.Redacted(), err)
	}
	req.SetBasicAuth(a.opts.User, a.opts.Password)
	req.Header.Set(menderapi.HeaderRequestID, newRequestID())
	tok, err := a.doLogin(req)
	if ctx.Err() != nil {
		return err // shutting down: not a login failure to report
	}
	now := a.now()
	a.mgmtMu.Lock()
	defer a.mgmtMu.Unlock()
	if err != nil {
		a.mgmt.lastErr, a.mgmt.lastFailure = err, now
		a.stats.loginFailures.Add(1)
		return err
	}
	exp, expErr := jwtExpiry(tok)
	if expErr == nil && !exp.After(now) {
		err := fmt.Errorf("%w: the upstream issued a token that expired at %s; check the clocks", ErrLoginFailed, exp.UTC().Format(time.RFC3339))
		a.mgmt.lastErr, a.mgmt.lastFailure = err, now
		a.stats.loginFailures.Add(1)
		return err
	}
	a.mgmt = mgmtState{token: tok, obtained: now, expires: exp, refreshAt: refreshTime(now, exp)}
	a.stats.logins.Add(1)
	select {
	case a.tokenChanged <- struct{}{}:
	default:
	}
	attrs := []any{"token", menderapi.TokenFingerprint(tok), "user", a.opts.User}
	if expErr != nil {
		attrs = append(attrs, "note", "no exp claim; refreshing on 401 only")
	} else {
		attrs = append(attrs, "expires", exp.UTC(), "refresh_at", a.mgmt.refreshAt.UTC())
	}
	a.log.Info("management login ok", attrs...)
	return nil
}

func (a *Ambassador) doLogin(req *http.Request) (string, error) {
	resp, err := a.mgmtClient.Do(req)
	if err != nil {
		a.noteUpstreamErr(req.Context(), err)
		return "", fmt.Errorf("%w: %w: %v", ErrLoginFailed, ErrUpstreamUnavailable, err)
	}
	defer resp.Body.Close()
	a.setUpstreamErr(nil)
	if resp.StatusCode != http.StatusOK {
		msg := menderapi.DecodeError(resp.Body)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return "", fmt.Errorf("%w: upstream answered %d (%s); check the management user and password",
				ErrLoginRejected, resp.StatusCode, msg)
		}
		return "", fmt.Errorf("%w: upstream answered %d (%s)", ErrLoginFailed, resp.StatusCode, msg)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("%w: read token: %w: %v", ErrLoginFailed, ErrUpstreamUnavailable, err)
	}
	tok := strings.TrimSpace(string(body))
	if tok == "" || len(body) > maxTokenBytes || strings.ContainsAny(tok, " \r\n\t") {
		return "", fmt.Errorf("%w: the login answer is not a bare token (%d bytes)", ErrLoginFailed, len(body))
	}
	return tok, nil
}

// refreshToken logs in again unless another goroutine already replaced the
// stale token, and returns the current token. Unless force is set (the
// background loop), a login that failed less than loginBackoffBase ago is
// not repeated: its error is returned, so a fleet of devices cannot hammer
// a failing login endpoint.
func (a *Ambassador) refreshToken(ctx context.Context, stale string, force bool) (string, error) {
	a.loginMu.Lock()
	defer a.loginMu.Unlock()
	m := a.mgmtSnapshot()
	now := a.now()
	if m.usable(now) && m.token != stale {
		return m.token, nil
	}
	if !force && m.lastErr != nil && now.Sub(m.lastFailure) < loginBackoffBase {
		return "", m.lastErr
	}
	if err := a.loginLocked(ctx); err != nil {
		return "", err
	}
	return a.mgmtSnapshot().token, nil
}

// mgmtToken returns a usable management token, logging in if there is none.
// The login is not cancelled with the device's request (other requests may
// be waiting for it); the client timeout bounds it.
func (a *Ambassador) mgmtToken(ctx context.Context) (string, error) {
	m := a.mgmtSnapshot()
	if m.usable(a.now()) {
		return m.token, nil
	}
	return a.refreshToken(context.WithoutCancel(ctx), m.token, false)
}

// loginLoop keeps a management token: it logs in at start (retrying with
// backoff), refreshes at 80% of the lifetime, and re-plans when a request
// refreshed the token after a 401.
func (a *Ambassador) loginLoop(ctx context.Context) {
	failures := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed below; Go ≥1.23 timers never deliver stale values after Stop/Reset
	defer timer.Stop()
	for {
		m := a.mgmtSnapshot()
		now := a.now()
		var wait time.Duration
		switch {
		case m.usable(now) && (m.refreshAt.IsZero() || now.Before(m.refreshAt)):
			wait = -1 // nothing due; wait for refreshAt or a change
			if !m.refreshAt.IsZero() {
				wait = max(m.refreshAt.Sub(now), minRefreshWait)
			}
		default:
			_, err := a.refreshToken(ctx, m.token, true)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				failures = 0
				continue
			}
			failures++
			wait = loginBackoff(failures)
			a.log.Warn("management login failed; will retry", "error", err, "attempt", failures, "retry_in", wait)
		}
		var timerC <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			timerC = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-timerC:
		case <-a.tokenChanged:
			timer.Stop()
		}
	}
}

// preauthCache remembers preauthorized (identity, key) pairs until expiry,
// at most a fixed number of them: the least recently used pair is dropped
// first, so a flood of new identities costs the oldest devices one extra
// preauthorization each, never the whole cache at once.
type preauthCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   *lru[string, time.Time] // key → expiry
}

func newPreauthCache(ttl time.Duration, size int) *preauthCache {
	return &preauthCache{ttl: ttl, m: newLRU[string, time.Time](size)}
}

func preauthCacheKey(req *menderapi.ParsedAuthRequest) string {
	sum := sha256.Sum256([]byte(req.NormalizedPubKey))
	return req.IdentityHash + "/" + hex.EncodeToString(sum[:])
}

func (c *preauthCache) hit(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m.get(key)
	if ok && !now.Before(exp) {
		c.m.remove(key)
		return false
	}
	return ok
}

func (c *preauthCache) put(key string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.put(key, now.Add(c.ttl))
}

func (c *preauthCache) forget(key string) {
	c.mu.Lock()
	c.m.remove(key)
	c.mu.Unlock()
}

func (c *preauthCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.len()
}

// preauthorize makes sure the upstream has a preauthorized auth set for
// req's identity and key: it calls the preauthorization API unless the pair
// is cached; 201 and 409 succeed; 401 triggers one re-login and retry. The
// key sent is req's normalised PEM, never the device's own text. It
// reports whether the answer came from the cache.
func (a *Ambassador) preauthorize(ctx context.Context, req *menderapi.ParsedAuthRequest, rid string, log *slog.Logger) (cached bool, err error) {
	key := preauthCacheKey(req)
	if a.cache.hit(key, a.now()) {
		a.stats.preauthCacheHits.Add(1)
		if log.Enabled(ctx, slog.LevelDebug) { // the fingerprint costs a key encoding and a hash
			log.Debug("preauthorization cached", "identity_hash", req.IdentityHash, "key", menderapi.Fingerprint(req.Key))
		}
		return true, nil
	}
	status, body, err := a.sendPreauth(ctx, menderapi.PreauthRequest{IdentityData: req.Identity, PubKey: req.NormalizedPubKey}, rid, log)
	if err != nil {
		return false, err
	}
	switch status {
	case http.StatusCreated, http.StatusConflict:
		a.cache.put(key, a.now())
		log.Info("device preauthorized", "status", status, "identity_hash", req.IdentityHash,
			"key", menderapi.Fingerprint(req.Key))
		return false, nil
	}
	return false, fmt.Errorf("%w: upstream answered %d (%s)", ErrPreauthFailed, status, menderapi.DecodeError(bytes.NewReader(body)))
}

// ErrDeviceBlocked means the upstream holds the device's auth set as
// rejected (or the device is being decommissioned), so the ambassador does
// not preauthorize it again: rejecting is how an operator blocks a
// certificate holder.
var ErrDeviceBlocked = errors.New("the device's auth set is rejected upstream")

// repreauthorize runs after the upstream refused (401) an auth request
// whose preauthorization came from the cache: the device was probably
// decommissioned, and the auth request just re-created it as pending, so a
// plain preauthorization would only answer 409. It preauthorizes again and,
// when the device exists with this key pending (or without this key),
// preauthorizes with force. A rejected auth set or a device being
// decommissioned is left alone (ErrDeviceBlocked).
func (a *Ambassador) repreauthorize(ctx context.Context, req *menderapi.ParsedAuthRequest, rid string, log *slog.Logger) error {
	pr := menderapi.PreauthRequest{IdentityData: req.Identity, PubKey: req.NormalizedPubKey}
	status, body, err := a.sendPreauth(ctx, pr, rid, log)
	if err != nil {
		return err
	}
	if status == http.StatusConflict {
		var dev menderapi.Device
		if err := json.Unmarshal(body, &dev); err != nil {
			return fmt.Errorf("%w: decode the 409 device: %v", ErrPreauthFailed, err)
		}
		if state := authSetState(dev, req); state != menderapi.DevStatusPending && state != "" {
			return fmt.Errorf("%w (device %s, auth set %s, decommissioning %t)", ErrDeviceBlocked, dev.ID, state, dev.Decommissioning)
		}
		pr.Force = true
		if status, body, err = a.sendPreauth(ctx, pr, rid, log); err != nil {
			return err
		}
	}
	if status != http.StatusCreated {
		return fmt.Errorf("%w: upstream answered %d (%s)", ErrPreauthFailed, status, menderapi.DecodeError(bytes.NewReader(body)))
	}
	a.cache.put(preauthCacheKey(req), a.now())
	log.Info("device preauthorized again after a refused cached preauthorization", "force", pr.Force,
		"identity_hash", req.IdentityHash, "key", menderapi.Fingerprint(req.Key))
	return nil
}

// authSetState returns the status of dev's auth set for req's key: "" when
// it has none, "decommissioning" when the device is being decommissioned.
func authSetState(dev menderapi.Device, req *menderapi.ParsedAuthRequest) string {
	if dev.Decommissioning {
		return "decommissioning"
	}
	for _, as := range dev.AuthSets {
		k, err := menderapi.ParsePublicKeyPEM(as.PubKey)
		if err == nil && menderapi.PublicKeysEqual(k, req.Key) {
			return as.Status
		}
	}
	return ""
}

// sendPreauth posts a preauthorization with the management token, logging
// in once more when the token is refused. It returns the status and up to
// 1 MiB of the answer.
func (a *Ambassador) sendPreauth(ctx context.Context, pr menderapi.PreauthRequest, rid string, log *slog.Logger) (int, []byte, error) {
	body, err := json.Marshal(pr)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: encode request: %v", ErrPreauthFailed, err)
	}
	tok, err := a.mgmtToken(ctx)
	if err != nil {
		return 0, nil, err
	}
	status, answer, err := a.postPreauth(ctx, tok, body, rid)
	if err == nil && status == http.StatusUnauthorized {
		log.Info("management token refused by preauthorization; logging in again", "token", menderapi.TokenFingerprint(tok))
		if tok, err = a.refreshToken(context.WithoutCancel(ctx), tok, false); err != nil {
			return 0, nil, err
		}
		status, answer, err = a.postPreauth(ctx, tok, body, rid)
	}
	return status, answer, err
}

func (a *Ambassador) postPreauth(ctx context.Context, tok string, body []byte, rid string) (int, []byte, error) {
	u := a.opts.Upstream.JoinPath(menderapi.PathDevauthDevices)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: build request: %v", ErrPreauthFailed, err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	req.Header.Set(menderapi.HeaderRequestID, rid)
	a.stats.preauths.Add(1)
	start := time.Now()
	resp, err := a.mgmtClient.Do(req)
	a.metrics.preauthDuration.Observe(time.Since(start).Seconds())
	if errors.Is(err, errUpstreamBusy) {
		return 0, nil, err // our own pool limit: the upstream is not down
	}
	if err != nil {
		a.noteUpstreamErr(ctx, err)
		return 0, nil, fmt.Errorf("%w: %v", ErrUpstreamUnavailable, err)
	}
	defer resp.Body.Close()
	a.setUpstreamErr(nil)
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.noteUpstreamErr(ctx, err)
		return 0, nil, fmt.Errorf("%w: read answer: %v", ErrUpstreamUnavailable, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // keep the connection reusable
	return resp.StatusCode, answer, nil
}
