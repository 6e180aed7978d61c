package fleet

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// Device state bits.
const (
	stAccepted = 1 << iota // authenticated at least once
	stPending              // the last auth request got 401
	stFailing              // the last exchange failed
)

// maxDeployAttempts is how often one deployment step is tried.
const maxDeployAttempts = 5

// device is one virtual device: its credential, identity, client and the
// timers of its two jobs.
type device struct {
	f     *Fleet
	index int
	mac   string
	c     *client.Client
	state atomic.Uint32

	// steps[job] is touched only by the job's running step; a job's timer
	// is re-armed after its step ends, so steps of one job never overlap.
	steps [2]client.StepState

	mu            sync.Mutex
	stopped       bool
	launched      bool
	updateStarted bool
	timers        [2]*time.Timer
}

// arm schedules job after the wait, unless the device is stopped.
func (d *device) arm(job client.Job, after time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.f.inflight.Add(1)
	d.timers[job] = time.AfterFunc(after, func() {
		defer d.f.inflight.Done()
		d.fire(job)
	})
}

// fire runs one step of job and schedules the next one; after an
// inventory step it starts the update checks once the device is
// authenticated, as client.Run does.
func (d *device) fire(job client.Job) {
	ctx := d.f.runCtx
	if ctx.Err() != nil {
		return
	}
	if job == client.JobInventory {
		d.mu.Lock()
		first := !d.launched
		d.launched = true
		d.mu.Unlock()
		if first {
			d.f.started.Add(1)
		}
	}
	wait := d.c.Step(ctx, job, &d.steps[job])
	if ctx.Err() != nil {
		return
	}
	if job == client.JobInventory && d.c.Authenticated() {
		d.mu.Lock()
		start := !d.updateStarted
		d.updateStarted = true
		d.mu.Unlock()
		if start {
			d.arm(client.JobUpdate, 0)
		}
	}
	d.arm(job, wait)
}

// stop prevents any further step; steps in progress end with the run's
// context.
func (d *device) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	for _, t := range d.timers {
		if t != nil && t.Stop() {
			d.f.inflight.Done() // the step will never run
		}
	}
}

func (d *device) identity(context.Context) (menderapi.Attributes, error) {
	return identityAttributes(d.mac, d.f.opts.IdentityAttrs), nil
}

func (d *device) inventory(context.Context) (menderapi.Attributes, error) {
	return inventoryAttributes(d.index, d.f.opts.InventoryAttrs), nil
}

// observe is the client's Observer: it feeds the collector and updates
// the device state.
func (d *device) observe(ev client.Event) {
	failed, canceled := d.f.col.record(ev)
	if canceled {
		return
	}
	auth := ev.Op == client.OpAuth && ev.Err == nil
	accepted := auth && ev.Status == http.StatusOK
	pending := auth && ev.Status == http.StatusUnauthorized
	for {
		old := d.state.Load()
		s := old
		switch {
		case accepted:
			s = (s | stAccepted) &^ stPending
		case pending:
			s |= stPending
		}
		if failed && !pending {
			s |= stFailing
		} else {
			s &^= stFailing
		}
		if d.state.CompareAndSwap(old, s) {
			if s&stAccepted != 0 && old&stAccepted == 0 {
				d.f.col.markAccepted()
			}
			return
		}
	}
}

// deployOutcome is how a deployment ended on the device.
type deployOutcome int

const (
	outcomeSucceeded deployOutcome = iota
	outcomeFailed
	outcomeAborted
	outcomeIncomplete
)

// onDeployment is the client's OnDeployment: it plays the deployment
// through and counts its outcome.
func (d *device) onDeployment(ctx context.Context, dep *menderapi.DeploymentInstructions) {
	col := d.f.col
	col.depStarted.Add(1)
	switch d.deploy(ctx, dep) {
	case outcomeSucceeded:
		col.depSucceeded.Add(1)
	case outcomeFailed:
		col.depFailed.Add(1)
	case outcomeAborted:
		col.depAborted.Add(1)
	default:
		col.depIncomplete.Add(1)
	}
}

// deploy reports downloading, downloads and checks the artifact, reports
// installing and rebooting, then success (and the new artifact name in
// inventory) or, at the fail rate, failure with a log. A 409 ends it as
// aborted.
func (d *device) deploy(ctx context.Context, dep *menderapi.DeploymentInstructions) deployOutcome {
	report := func(status string) error {
		return d.retry(ctx, func() error { return d.c.ReportStatus(ctx, dep.ID, status) })
	}
	if err := report(menderapi.StatusDownloading); err != nil {
		return stopped(err)
	}
	var (
		n   int64
		sum []byte
	)
	err := d.retry(ctx, func() error {
		w := &artifactSink{h: sha256.New(), bytes: &d.f.col.depBytes}
		got, err := d.c.Download(ctx, dep.Artifact.Source.URI, w)
		n, sum = got, w.h.Sum(nil)
		return err
	})
	if err != nil {
		return stopped(err)
	}
	if size := dep.Artifact.Size; size > 0 && n != size {
		return d.fail(ctx, dep, fmt.Sprintf("artifact length %d differs from the announced %d bytes", n, size))
	}
	if want := dep.Artifact.Checksum; want != "" && !strings.EqualFold(want, hex.EncodeToString(sum)) {
		return d.fail(ctx, dep, fmt.Sprintf("artifact checksum sha256:%x differs from the announced %s", sum, want))
	}
	for _, st := range []string{menderapi.StatusInstalling, menderapi.StatusRebooting} {
		if err := report(st); err != nil {
			return stopped(err)
		}
	}
	if d.f.opts.FailRate > 0 && d.f.rand() < d.f.opts.FailRate {
		out := d.fail(ctx, dep, "simulated installation failure (fail rate "+fmt.Sprint(d.f.opts.FailRate)+")")
		if out == outcomeFailed {
			d.f.col.depFailedOnPurpose.Add(1)
		}
		return out
	}
	if err := report(menderapi.StatusSuccess); err != nil {
		return stopped(err)
	}
	d.c.SetArtifactName(dep.Artifact.ArtifactName)
	// The new name also goes out with every later poll; a failed inventory
	// send is retried here and anyway by the inventory schedule.
	_ = d.retry(ctx, func() error { return d.c.SendInventory(ctx) })
	return outcomeSucceeded
}

// fail reports failure and uploads a log explaining why.
func (d *device) fail(ctx context.Context, dep *menderapi.DeploymentInstructions, why string) deployOutcome {
	if err := d.retry(ctx, func() error { return d.c.ReportStatus(ctx, dep.ID, menderapi.StatusFailure) }); err != nil {
		return stopped(err)
	}
	msgs := []menderapi.LogMessage{
		{Timestamp: time.Now().UTC(), Level: "info", Message: "installing artifact " + dep.Artifact.ArtifactName},
		{Timestamp: time.Now().UTC(), Level: "error", Message: why},
	}
	if err := d.retry(ctx, func() error { return d.c.UploadLog(ctx, dep.ID, msgs) }); err != nil && errors.Is(err, client.ErrAborted) {
		return outcomeAborted
	}
	return outcomeFailed
}

func stopped(err error) deployOutcome {
	if errors.Is(err, client.ErrAborted) {
		return outcomeAborted
	}
	return outcomeIncomplete
}

// retry runs fn up to maxDeployAttempts times while it fails transiently
// (transport errors, 429, 5xx, a refused token), waiting a jittered
// backoff (or the server's Retry-After, capped at RetryInterval). A 409,
// a permanent error or the end of the run stop it at once.
func (d *device) retry(ctx context.Context, fn func() error) error {
	o := &d.f.opts
	bo := retry.Backoff{Base: max(min(o.RetryInterval, time.Minute)/8, time.Millisecond), Max: o.RetryInterval, Rand: d.f.rand}
	for attempt := 0; ; attempt++ {
		err := fn()
		if err == nil || ctx.Err() != nil || errors.Is(err, client.ErrAborted) || attempt+1 >= maxDeployAttempts || !transient(err) {
			return err
		}
		wait := bo.Delay(attempt)
		if ae, ok := errors.AsType[*client.APIError](err); ok && ae.RetryAfter > 0 {
			wait = min(ae.RetryAfter, o.RetryInterval)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// transient reports whether err is worth retrying soon.
func transient(err error) bool {
	if ae, ok := errors.AsType[*client.APIError](err); ok {
		switch retry.Classify(&http.Response{StatusCode: ae.StatusCode}, nil) {
		case retry.DecisionBackoff, retry.DecisionReauth:
			return true
		}
		return false
	}
	return retry.Classify(nil, err) == retry.DecisionBackoff
}

// artifactSink hashes and counts the artifact bytes.
type artifactSink struct {
	h     hash.Hash
	bytes *atomic.Uint64
}

// Write hashes and counts p; it never fails.
func (s *artifactSink) Write(p []byte) (int, error) {
	s.h.Write(p) // never fails
	s.bytes.Add(uint64(len(p)))
	return len(p), nil
}

// derCredential is a device's mTLS credential holding the certificate as
// DER only: it is parsed when the client asks for it (at full TLS
// handshakes and inventory sends), which saves the parsed form per device.
type derCredential struct {
	crypto.Signer
	der []byte
}

// CertificateChain parses the certificate; nil (no certificate) if it
// does not parse, which LoadCredentials already ruled out.
func (c *derCredential) CertificateChain() []*x509.Certificate {
	cert, err := x509.ParseCertificate(c.der)
	if err != nil {
		return nil
	}
	return []*x509.Certificate{cert}
}
