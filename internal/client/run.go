package client

import (
	"context"
	"errors"
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
// A deployment offered is logged once per deployment id (at warn when
// Options.OnDeployment is nil: nobody installs it) and passed to
// Options.OnDeployment at every check. After every auth exchange and job
// attempt Options.OnState gets the new [Client.State].
//
// Run returns nil once ctx is cancelled, or [Client.Stop] was called and
// the job attempts in flight finished, and all its goroutines have exited;
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

	stop := c.stopCh()
	if !waitOrStop(ctx, stop, c.FirstContactDelay()) {
		return nil
	}
	inventoryTried := make(chan struct{})
	inventory, update := c.jobSchedule(JobInventory), c.jobSchedule(JobUpdate)

	var wg sync.WaitGroup
	wg.Go(func() { c.poll(ctx, stop, inventory, inventoryTried) })
	wg.Go(func() {
		for _, ready := range []chan struct{}{inventoryTried, c.authOK} {
			select {
			case <-ready:
			case <-ctx.Done():
				return
			case <-stop:
				return
			}
		}
		c.poll(ctx, stop, update, nil)
	})
	wg.Wait()
	return nil
}

// checkAndReport is the update schedule's job.
func (c *Client) checkAndReport(ctx context.Context) error {
	d, err := c.CheckUpdate(ctx)
	if err != nil {
		return err
	}
	// Logged once per deployment id, not at every check.
	isNew := c.noteDeployment(d)
	switch {
	case d == nil:
		return nil
	case isNew && c.opts.OnDeployment == nil:
		c.log.Warn("deployment offered, but this agent does not install artifacts (standalone mode): install it with mender-update, or abort the deployment on the server",
			"deployment_id", d.ID, "artifact_name", d.Artifact.ArtifactName)
	case isNew:
		c.log.Info("deployment offered", "deployment_id", d.ID, "artifact_name", d.Artifact.ArtifactName)
	default:
		c.log.Debug("deployment still offered", "deployment_id", d.ID, "artifact_name", d.Artifact.ArtifactName)
	}
	if c.opts.OnDeployment != nil {
		c.opts.OnDeployment(ctx, d)
	}
	return nil
}

// poll runs s until ctx is done or stop is closed (checked between
// attempts). tried, when not nil, is closed after the first attempt.
func (c *Client) poll(ctx context.Context, stop <-chan struct{}, s schedule, tried chan struct{}) {
	attempt := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		err := s.run(ctx)
		if tried != nil {
			close(tried)
			tried = nil
		}
		if ctx.Err() != nil {
			return
		}
		if !waitOrStop(ctx, stop, c.nextWait(s, err, &attempt)) {
			return
		}
	}
}

// nextWait decides how long s waits after an attempt that returned err, logs
// the failure once, and updates the consecutive-failure counter.
func (c *Client) nextWait(s schedule, err error, attempt *int) time.Duration {
	c.recordJob(s.name, err)
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
	attrs := []any{"schedule", s.name, "attempt", *attempt, "retry_in", wait, "error", err}
	if d := Diagnose(err); d.Problem != "" { // e.g. a TLS alert: the server refused our certificate
		attrs = append(attrs, "hint", d.String())
	}
	c.log.Warn("request failed, will retry", attrs...)
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

// hint returns an actionable suggestion for a permanent failure: the
// problem and fix from Diagnose, the classifier `device-agent check` uses.
func hint(err error) string { return Diagnose(err).String() }

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
