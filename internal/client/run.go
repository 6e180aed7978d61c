package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// schedule is one periodic job of Run.
type schedule struct {
	name     string
	interval time.Duration
	run      func(ctx context.Context) error
}

// Run is the daemon loop. After a random delay under one second it sends the
// inventory (which triggers the first authentication); update checks start
// once that first inventory attempt is over and the device has authenticated
// (so a pending device knocks once per retry, not once per schedule). From
// then on the two run on their own schedules, each wait jittered by
// ±PollJitter so a fleet that boots together does not poll together:
//
//   - success: wait the schedule's interval (UpdatePollInterval or
//     InventoryPollInterval);
//   - device pending acceptance: wait RetryPollInterval;
//   - 429 or 5xx with Retry-After: wait exactly that, at most 1h;
//   - other transient failures (transport errors, timeouts, 429, 5xx): back
//     off with full jitter from min(RetryPollInterval, 60s)/8, doubling up to
//     RetryPollInterval; reset on success;
//   - permanent failures (TLS certificate verification, a redirect, other
//     4xx): log an error with a hint and retry at UpdatePollInterval.
//
// Deployment instructions are logged and passed to Options.OnDeployment.
// Run returns nil once ctx is cancelled and all its goroutines have exited;
// it returns an error only when the Client is already running.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("run: this client is already running; call Run once per Client")
	}
	defer c.running.Store(false)
	c.log.Info("starting", "servers", c.servers, "device_type", c.opts.DeviceType, "key", c.keyFP,
		"update_poll", c.opts.UpdatePollInterval, "inventory_poll", c.opts.InventoryPollInterval,
		"retry_poll", c.opts.RetryPollInterval)
	defer c.log.Info("stopped")

	if !sleepCtx(ctx, c.FirstContactDelay()) {
		return nil
	}
	inventoryTried := make(chan struct{})
	inventory, update := c.jobSchedule(JobInventory), c.jobSchedule(JobUpdate)

	var wg sync.WaitGroup
	wg.Go(func() { c.poll(ctx, inventory, inventoryTried) })
	wg.Go(func() {
		for _, ready := range []chan struct{}{inventoryTried, c.authOK} {
			select {
			case <-ready:
			case <-ctx.Done():
				return
			}
		}
		c.poll(ctx, update, nil)
	})
	wg.Wait()
	return nil
}

// checkAndReport is the update schedule's job.
func (c *Client) checkAndReport(ctx context.Context) error {
	d, err := c.CheckUpdate(ctx)
	if err != nil || d == nil {
		return err
	}
	c.log.Info("deployment available; this agent does not install artifacts",
		"deployment_id", d.ID, "artifact_name", d.Artifact.ArtifactName)
	if c.opts.OnDeployment != nil {
		c.opts.OnDeployment(ctx, d)
	}
	return nil
}

// poll runs s until ctx is done. tried, when not nil, is closed after the
// first attempt.
func (c *Client) poll(ctx context.Context, s schedule, tried chan struct{}) {
	attempt := 0
	for {
		err := s.run(ctx)
		if tried != nil {
			close(tried)
			tried = nil
		}
		if ctx.Err() != nil {
			return
		}
		if !sleepCtx(ctx, c.nextWait(s, err, &attempt)) {
			return
		}
	}
}

// nextWait decides how long s waits after an attempt that returned err, logs
// the failure once, and updates the consecutive-failure counter.
func (c *Client) nextWait(s schedule, err error, attempt *int) time.Duration {
	switch decide(err) {
	case retry.DecisionDone:
		wait := retry.Jitter(s.interval, c.opts.PollJitter, c.rand)
		// Inventory runs hours apart: worth a line. Update checks run every
		// few minutes: debug only, so a healthy device stays quiet.
		logf := c.log.Debug
		if s.name == "inventory" || *attempt > 0 {
			logf = c.log.Info
		}
		logf("done", "schedule", s.name, "failed_attempts_before", *attempt, "next_in", wait.Round(time.Millisecond))
		*attempt = 0
		return wait
	case retry.DecisionPending:
		*attempt = 0
		wait := retry.Jitter(c.opts.RetryPollInterval, c.opts.PollJitter, c.rand)
		msg := ""
		if ae, ok := errors.AsType[*APIError](err); ok {
			msg = ae.Message // e.g. "dev auth: unauthorized", or "signature verification failed"
		}
		c.log.Info("device is not accepted yet, waiting", "schedule", s.name, "key", c.keyFP, "retry_in", wait,
			"server_said", msg,
			"hint", "accept the device in the Mender UI, or preauthorize its identity and public key; if the server said \"signature verification failed\", the auth key is not the certificate's key")
		return wait
	case retry.DecisionPermanent:
		*attempt = 0
		wait := retry.Jitter(c.opts.UpdatePollInterval, c.opts.PollJitter, c.rand)
		c.log.Error("request failed and retrying soon will not help", "schedule", s.name, "error", err,
			"hint", hint(err), "retry_in", wait)
		return wait
	}
	*attempt++
	if ae, ok := errors.AsType[*APIError](err); ok && ae.RetryAfter > 0 {
		wait := min(ae.RetryAfter, maxRetryAfter)
		c.log.Warn("server asked to retry later", "schedule", s.name, "status", ae.StatusCode,
			"attempt", *attempt, "retry_in", wait)
		return wait
	}
	wait := c.backoff.Delay(*attempt - 1)
	c.log.Warn("request failed, will retry", "schedule", s.name, "attempt", *attempt, "retry_in", wait, "error", err)
	return wait
}

// decide classifies the outcome of one scheduled job.
func decide(err error) retry.Decision {
	if err == nil {
		return retry.DecisionDone
	}
	if errors.Is(err, ErrPending) {
		return retry.DecisionPending
	}
	if d := retry.Classify(nil, err); d == retry.DecisionPermanent {
		return d
	}
	if ae, ok := errors.AsType[*APIError](err); ok {
		if d := retry.Classify(&http.Response{StatusCode: ae.StatusCode}, nil); d != retry.DecisionReauth {
			return d
		}
	}
	// Transport errors, timeouts, local failures, and a 401 that survived a
	// fresh authentication (the token is already dropped): back off.
	return retry.DecisionBackoff
}

// hint returns an actionable suggestion for a permanent failure.
func hint(err error) string {
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return "the server certificate is not signed by a trusted CA: set ServerCertificate to the PEM file of the server's CA (or of the server certificate)"
	}
	if he, ok := errors.AsType[x509.HostnameError](err); ok {
		san := "DNS:" + he.Host
		if net.ParseIP(he.Host) != nil {
			san = "IP:" + he.Host
		}
		return fmt.Sprintf("the server certificate is not valid for %q: reissue it with subjectAltName=%s, or use the name it was issued for in the server URL", he.Host, san)
	}
	if ie, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		if ie.Reason == x509.Expired {
			return "the server certificate is expired or not yet valid: check the device clock (NTP) and the certificate dates"
		}
		return "the server certificate chain is not valid for TLS server authentication: check its key usage and CA constraints"
	}
	if ae, ok := errors.AsType[*APIError](err); ok {
		if ae.StatusCode >= 300 && ae.StatusCode < 400 {
			return "the server redirects API calls and the agent does not follow redirects: set ServerURL to the https address the server redirects to, or remove the redirect on the server or proxy"
		}
		switch ae.StatusCode {
		case http.StatusNotFound:
			return "the endpoint does not exist on this server: check the server URL"
		case http.StatusConflict:
			return "the server refused a change during an active deployment: artifact name or device type must not change mid-deployment"
		case http.StatusUnsupportedMediaType, http.StatusBadRequest:
			return "the server refused the request as malformed: check DeviceType, ArtifactName and inventory values"
		}
		return fmt.Sprintf("the server refused the request with %d: check the server logs for request_id %q", ae.StatusCode, ae.RequestID)
	}
	return "check the agent configuration"
}

// sleepCtx waits d or until ctx is done; it reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
