package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// response is a fully read API answer.
type response struct {
	status   int
	header   http.Header
	body     []byte
	location string // redacted redirect target of a 3xx answer, "" otherwise
}

// Authenticate sends a signed auth request and keeps the returned token. The
// body (Mender 5.1's layout, with the device tier) is built once with
// menderapi.BuildAuthRequestTier and signed once; the
// same bytes go to each server in order until one answers 200, which becomes
// the API server. The 200 body is kept verbatim as the token.
//
// A 401 is returned as an *APIError matching ErrPending (the device must be
// accepted); when every server failed at the transport level the error
// matches ErrNoServer. Device API calls authenticate lazily, so calling this
// is only needed to authenticate eagerly.
func (c *Client) Authenticate(ctx context.Context) error {
	select {
	case c.authSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("auth: %w", ctx.Err())
	}
	defer func() { <-c.authSem }()
	return c.authenticate(ctx)
}

// session returns the current token and its server, authenticating first
// when there is none. Concurrent callers share one authentication.
func (c *Client) session(ctx context.Context) (token, server string, err error) {
	if token, server = c.current(); token != "" {
		return token, server, nil
	}
	select {
	case c.authSem <- struct{}{}:
	case <-ctx.Done():
		return "", "", fmt.Errorf("auth: %w", ctx.Err())
	}
	defer func() { <-c.authSem }()
	if token, server = c.current(); token != "" { // someone else authenticated meanwhile
		return token, server, nil
	}
	if err := c.authenticate(ctx); err != nil {
		return "", "", err
	}
	token, server = c.current()
	return token, server, nil
}

func (c *Client) current() (token, server string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, c.server
}

// dropSession forgets token (and its server) unless it was already replaced;
// the next call authenticates again, starting from the first server.
func (c *Client) dropSession(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == token {
		c.token, c.server = "", ""
	}
}

// authenticate does the work of Authenticate; the caller holds authSem.
func (c *Client) authenticate(ctx context.Context) error {
	ictx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	ident, err := c.opts.Identity(ictx)
	cancel()
	if err != nil {
		return fmt.Errorf("auth: collect identity: %w", err)
	}
	if len(ident) == 0 {
		return retry.Permanent(errors.New("auth: identity has no attributes (check the identity script output)"))
	}
	body, err := menderapi.BuildAuthRequestTier(ident.IdentityJSON(), c.opts.AuthKey.Public(), c.opts.TenantToken, c.opts.DeviceTier)
	if err != nil {
		return retry.Permanent(fmt.Errorf("auth: build request: %w", err))
	}
	sig, err := menderapi.Sign(c.opts.AuthKey, body)
	if err != nil {
		return fmt.Errorf("auth: sign request with key %s: %w", c.keyFP, err)
	}
	hdr := http.Header{}
	hdr.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
	hdr.Set(menderapi.HeaderSignature, sig)
	hdr.Set("Authorization", "Bearer "+c.opts.TenantToken)

	var errs []error
	answered := false
	for _, srv := range c.servers {
		res, err := c.exchange(ctx, OpAuth, srv, http.MethodPost, menderapi.PathAuthRequests, body, hdr)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
			continue
		}
		answered = true
		if res.status != http.StatusOK {
			errs = append(errs, c.apiError(OpAuth, res))
			continue
		}
		if len(res.body) == 0 {
			errs = append(errs, fmt.Errorf("auth: %s answered 200 with an empty token", srv))
			continue
		}
		token := string(res.body) // verbatim: no trimming, no JSON decoding
		c.mu.Lock()
		c.token, c.server = token, srv
		c.mu.Unlock()
		c.authOnce.Do(func() { close(c.authOK) })
		c.log.Info("authenticated", "server", srv, "key", c.keyFP, "tier", c.opts.DeviceTier, "token", menderapi.TokenFingerprint(token))
		if c.opts.OnToken != nil {
			c.opts.OnToken(token, srv)
		}
		return nil
	}
	err = errs[0]
	if len(errs) > 1 {
		err = errors.Join(errs...)
	}
	if !answered {
		return fmt.Errorf("%w: %w", ErrNoServer, err)
	}
	return err
}

// apiCall sends one device API request with the device token, authenticating
// first when there is none. On 401 it drops the token, authenticates again
// and retries the request once. On a transport error it drops the token and
// its server, so the next authentication starts from the first server.
func (c *Client) apiCall(ctx context.Context, op, method, path string, body []byte) (*response, error) {
	for attempt := 0; ; attempt++ {
		token, server, err := c.session(ctx)
		if err != nil {
			return nil, err
		}
		if !validHeaderValue(token) {
			c.dropSession(token)
			return nil, retry.Permanent(fmt.Errorf("%s: the token from %s (%s) has control characters and cannot be sent in an Authorization header; the server or a proxy altered the auth response",
				op, server, menderapi.TokenFingerprint(token)))
		}
		hdr := http.Header{}
		hdr.Set("Authorization", "Bearer "+token)
		if body != nil {
			hdr.Set(menderapi.HeaderContentType, menderapi.ContentTypeJSON)
		}
		res, err := c.exchange(ctx, op, server, method, path, body, hdr)
		if err != nil {
			if ctx.Err() == nil {
				c.dropSession(token)
			}
			return nil, err
		}
		if res.status == http.StatusUnauthorized {
			// Drop a refused token even on the retry, so the next call
			// authenticates first instead of sending it again.
			c.dropSession(token)
			if attempt == 0 {
				c.log.Debug("token refused, authenticating again", "op", op, "server", server,
					"token", menderapi.TokenFingerprint(token))
				continue
			}
		}
		return res, nil
	}
}

// exchange sends one request under the request timeout, reads the whole
// answer and reports it to the Observer.
func (c *Client) exchange(ctx context.Context, op, server, method, path string, body []byte, hdr http.Header) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	start := time.Now()
	res, err := c.roundTrip(ctx, op, method, server+path, body, hdr)
	ev := Event{Op: op, Err: err, Duration: time.Since(start), Server: server}
	if res != nil {
		ev.Status = res.status
	}
	c.observe(ev)
	if err == nil { // failures are returned, and logged once by whoever handles them
		c.log.Debug("request done", "op", op, "method", method, "server", server, "status", res.status,
			"request_id", res.header.Get(menderapi.HeaderRequestID))
	}
	return res, err
}

func (c *Client) roundTrip(ctx context.Context, op, method, target string, body []byte, hdr http.Header) (*response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("%s: build request: %w", op, err))
	}
	req.Header = hdr
	req.Header.Set("User-Agent", c.opts.UserAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read answer of %s %s: %w", op, method, target, err)
	}
	if len(data) > maxResponseBody {
		return nil, fmt.Errorf("%s: answer of %s %s is larger than %d bytes", op, method, target, maxResponseBody)
	}
	res := &response{status: resp.StatusCode, header: resp.Header, body: data}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 { // not followed: see refuseRedirect
		if loc, err := resp.Location(); err == nil {
			res.location = redactURL(loc)
		}
	}
	return res, nil
}

// apiError turns an unexpected answer into an *APIError.
func (c *Client) apiError(op string, res *response) *APIError {
	e := &APIError{
		Op:         op,
		StatusCode: res.status,
		RequestID:  res.header.Get(menderapi.HeaderRequestID),
		Location:   res.location,
	}
	if e.Location == "" { // a redirect's body is HTML that may repeat the full Location
		e.Message = menderapi.DecodeError(bytes.NewReader(res.body))
	}
	if e.RequestID == "" {
		var eb menderapi.ErrorBody
		if json.Unmarshal(res.body, &eb) == nil {
			e.RequestID = eb.RequestID
		}
	}
	if res.status == http.StatusTooManyRequests || res.status >= 500 {
		if d, ok := retry.ParseRetryAfter(res.header.Get(menderapi.HeaderRetryAfter), time.Now()); ok {
			e.RetryAfter = d
		}
	}
	return e
}

// validHeaderValue reports whether v can be sent as an HTTP header value
// (no control characters other than horizontal tab), as net/http requires.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; (b < 0x20 && b != '\t') || b == 0x7f {
			return false
		}
	}
	return true
}
