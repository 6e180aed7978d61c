package client

import (
	"context"
	"time"
)

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
