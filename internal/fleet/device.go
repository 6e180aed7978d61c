package fleet

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// Device state bits.
const (
	stAccepted = 1 << iota // authenticated at least once
	stPending              // the last auth request got 401
	stFailing              // the last exchange failed
	stStorm                // accepted at the reconnect storm, not polled since
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
	// admitted counts the admission slots the device holds: one from the
	// start of each of its steps until that step's first handshake.
	admitted atomic.Int32

	// steps[job] is touched only by the job's running step; a job's timer
	// is re-armed after its step ends, so steps of one job never overlap.
	steps [2]client.StepState

	mu            sync.Mutex
	stopped       bool
	launched      bool
	updateStarted bool
	running       uint8 // steps in progress
	parked        bool  // listed in connPool.idle
	timers        [2]*time.Timer
	conns         []*trackedConn  // open connections (see connPool)
	tr            *http.Transport // nil while idle (see deviceTransport)
	cred          *derCredential  // nil without mTLS
	session       *tls.ClientSessionState
	sessionKey    string
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

// rearm moves job's pending timer to fire after the wait. A job whose
// step is running is left alone: it arms itself when the step ends.
func (d *device) rearm(job client.Job, after time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.timers[job]; !d.stopped && t != nil && t.Stop() {
		t.Reset(after)
	}
}

// fire runs one step of job once the fleet admits it (see admission).
func (d *device) fire(job client.Job) {
	if d.f.adm.enter(d, job) {
		d.run(job)
	}
}

// run runs one step of job, holding an admission slot until its first
// handshake (or its end), and schedules the next one; after an inventory
// step it starts the update checks once the device is authenticated, as
// client.Run does. Without Options.KeepAlive, the device's connections are
// closed when no step of it is running any more.
func (d *device) run(job client.Job) {
	defer d.leaveAdmission()
	ctx := d.f.stepCtx(d)
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
	d.mu.Lock()
	d.running++
	d.mu.Unlock()
	wait := d.c.Step(ctx, job, &d.steps[job])
	// The first inventory step that authenticates starts the update
	// checks at once, as client.Run does; the device keeps its connection
	// for that first check instead of making a new one a moment later.
	startUpdate := job == client.JobInventory && ctx.Err() == nil && d.c.Authenticated()
	d.mu.Lock()
	if startUpdate {
		startUpdate = !d.updateStarted
		d.updateStarted = true
	}
	d.running--
	switch {
	case d.running > 0 || startUpdate:
		d.mu.Unlock()
	case d.f.opts.KeepAlive:
		d.f.pool.park(d)
		d.mu.Unlock()
	default:
		// Taken under the lock that counts the steps: a step that starts
		// from now on builds a transport of its own, whose connections
		// this does not touch.
		tr, conns := d.detach()
		d.mu.Unlock()
		closeAll(tr, conns)
	}
	if ctx.Err() != nil {
		return
	}
	if startUpdate {
		// At once and without admission: the step needs no handshake, and
		// queued behind the herd it would hold its idle connection open.
		d.f.inflight.Add(1)
		go func() {
			defer d.f.inflight.Done()
			d.run(client.JobUpdate)
		}()
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
	if failed {
		d.f.stormFailure()
	}
	polled := ev.Op == client.OpNext && !failed && ev.Err == nil &&
		(ev.Status == http.StatusOK || ev.Status == http.StatusNoContent)
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
		if polled {
			s &^= stStorm
		}
		if d.state.CompareAndSwap(old, s) {
			if s&stAccepted != 0 && old&stAccepted == 0 {
				d.f.col.markAccepted()
			}
			if old&stStorm != 0 && s&stStorm == 0 {
				d.f.stormRecovered()
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

// deploy reports downloading, then downloads the artifact while reading
// it as a Mender client does (see fetch) and checks it: the length and
// sha256 the instructions announce, the artifact format with every
// checksum of its manifest, the device type and the artifact name. Then it
// reports installing (held for Options.InstallDelay) and rebooting, then
// success (and the new artifact name in inventory) or, at the fail rate,
// failure with a log. A failed check is a failure with a log naming it. A
// 409 ends it as aborted. The download time (from the accepted
// downloading report to the last byte) and the install time (from there
// to the accepted final status report) go to the report.
func (d *device) deploy(ctx context.Context, dep *menderapi.DeploymentInstructions) deployOutcome {
	report := func(status string) error {
		return d.retry(ctx, func() error { return d.c.ReportStatus(ctx, dep.ID, status) })
	}
	if err := report(menderapi.StatusDownloading); err != nil {
		return stopped(err)
	}
	col := d.f.col
	began := time.Now()
	var got fetched
	err := d.retry(ctx, func() error {
		var err error
		got, err = d.fetch(ctx, dep.Artifact.Source.URI)
		return err
	})
	if err != nil {
		return stopped(err)
	}
	downloaded := time.Now()
	if got.complete {
		col.depDownload.record(downloaded.Sub(began))
		col.depCompletedBytes.Add(uint64(got.n))
	}
	if why := d.check(dep, got); why != "" {
		return d.fail(ctx, dep, why, time.Time{})
	}
	for _, st := range []string{menderapi.StatusInstalling, menderapi.StatusRebooting} {
		if err := report(st); err != nil {
			return stopped(err)
		}
		if st == menderapi.StatusInstalling && !wait(ctx, d.f.opts.InstallDelay) {
			return outcomeIncomplete
		}
	}
	if d.f.opts.FailRate > 0 && d.f.rand() < d.f.opts.FailRate {
		out := d.fail(ctx, dep, "simulated installation failure (fail rate "+fmt.Sprint(d.f.opts.FailRate)+")", downloaded)
		if out == outcomeFailed {
			col.depFailedOnPurpose.Add(1)
		}
		return out
	}
	if err := report(menderapi.StatusSuccess); err != nil {
		return stopped(err)
	}
	col.depInstall.record(time.Since(downloaded))
	d.c.SetArtifactName(dep.Artifact.ArtifactName)
	// The new name also goes out with every later poll; a failed inventory
	// send is retried here and anyway by the inventory schedule.
	_ = d.retry(ctx, func() error { return d.c.SendInventory(ctx) })
	return outcomeSucceeded
}

// check returns why the fetched artifact must not be installed, or "".
// The whole-file length and checksum come first: when they differ, the
// bytes are not the announced artifact, whatever else is wrong with them.
func (d *device) check(dep *menderapi.DeploymentInstructions, got fetched) string {
	a := &dep.Artifact
	if got.complete {
		if a.Size > 0 && got.n != a.Size {
			return fmt.Sprintf("artifact length %d differs from the announced %d bytes", got.n, a.Size)
		}
		if a.Checksum != "" && !strings.EqualFold(a.Checksum, hex.EncodeToString(got.sum)) {
			return fmt.Sprintf("artifact checksum sha256:%x differs from the announced %s", got.sum, a.Checksum)
		}
	}
	if got.bad != nil {
		return fmt.Sprintf("artifact rejected after %d bytes: %v", got.n, got.bad)
	}
	if !slices.Contains(got.art.DeviceTypes, d.f.opts.DeviceType) {
		return fmt.Sprintf("artifact %q is for device types %s, not this device's %q", got.art.Name,
			strings.Join(got.art.DeviceTypes, ", "), d.f.opts.DeviceType)
	}
	if got.art.Name != a.ArtifactName {
		return fmt.Sprintf("artifact name %q in the artifact header differs from the deployment's %q", got.art.Name, a.ArtifactName)
	}
	return ""
}

// wait waits for delay; false when ctx ended first.
func wait(ctx context.Context, delay time.Duration) bool {
	if delay <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// maxArtifactHeader bounds the artifact header (version, manifest and
// decompressed header tar) a device holds while reading an artifact. Real
// headers are a few KiB; the bound keeps a fleet's memory flat even
// against a hostile server.
const maxArtifactHeader = 1 << 20

// errArtifactRejected ends a download whose bytes artifact.Read refused:
// a real client stops downloading an artifact it cannot install.
var errArtifactRejected = errors.New("artifact rejected while downloading")

// fetched is what one download of an artifact found.
type fetched struct {
	// n is the number of bytes received and sum their sha256.
	n   int64
	sum []byte
	// complete means every byte arrived (Download succeeded).
	complete bool
	// art is what the artifact declares, when it read without error;
	// otherwise bad is the error of artifact.Read.
	art *artifact.Artifact
	bad error
}

// fetch downloads the artifact at uri and reads it with artifact.Read as
// the bytes arrive, through a pipe: Download writes into it (resuming into
// the same pipe, so the bytes stay in order), a goroutine reads from it.
// Payload contents are only checksummed, so a device holds no more than a
// bounded header and the readers' buffers, whatever the artifact's size.
// When artifact.Read fails, the download stops at once and fetch returns
// no error but a fetched with bad set. A download error is returned as is
// (the caller may retry), after the pipe is closed with it so the reading
// goroutine ends.
func (d *device) fetch(ctx context.Context, uri string) (fetched, error) {
	pr, pw := io.Pipe()
	type result struct {
		art *artifact.Artifact
		err error
	}
	done := make(chan result, 1)
	go func() {
		art, err := artifact.Read(pr, artifact.ReadOptions{MaxHeaderSize: maxArtifactHeader})
		if err != nil {
			pr.CloseWithError(errArtifactRejected)
		} else {
			// Whatever follows the end of the outer tar (padding) is
			// still part of the file, its length and checksum.
			_, _ = io.Copy(io.Discard, pr) // fails only when the download does
		}
		done <- result{art, err}
	}()
	sink := &artifactSink{h: sha256.New(), bytes: &d.f.col.depBytes, w: pw}
	n, err := d.c.Download(ctx, uri, sink)
	pw.CloseWithError(err) // nil: the reader sees the end of the file
	res := <-done
	got := fetched{n: n, sum: sink.h.Sum(nil), complete: err == nil, art: res.art, bad: res.err}
	if err != nil && !errors.Is(err, errArtifactRejected) {
		return got, err // res.err, if any, only echoes the cut download
	}
	return got, nil
}

// fail reports failure and uploads a log explaining why. A non-zero
// installing is when the install began: the install time then runs until
// the failure report is accepted.
func (d *device) fail(ctx context.Context, dep *menderapi.DeploymentInstructions, why string, installing time.Time) deployOutcome {
	if err := d.retry(ctx, func() error { return d.c.ReportStatus(ctx, dep.ID, menderapi.StatusFailure) }); err != nil {
		return stopped(err)
	}
	if !installing.IsZero() {
		d.f.col.depInstall.record(time.Since(installing))
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

// artifactSink hashes and counts the artifact bytes, then passes them on
// to w.
type artifactSink struct {
	h     hash.Hash
	bytes *atomic.Uint64
	w     io.Writer
}

// Write hashes and counts p and writes it to w; it fails when w does.
func (s *artifactSink) Write(p []byte) (int, error) {
	s.h.Write(p) // never fails
	s.bytes.Add(uint64(len(p)))
	return s.w.Write(p)
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
