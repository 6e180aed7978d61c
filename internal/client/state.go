package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// State is a snapshot of what a [Client] knows about its session and its
// jobs, for a daemon's status file and readiness reporting. It never holds
// the device token or key material.
type State struct {
	// Authenticated reports whether the client holds a device token now.
	// It turns false when the token is dropped (a transport error, a 401)
	// until the next successful authentication.
	Authenticated bool
	// Pending reports that the last auth request was answered 401: the
	// device waits to be accepted (or was rejected) by the server.
	Pending bool
	// Server is the base URL that issued the current token, "" without one.
	Server string
	// TokenExpiry is the "exp" claim of the current token, zero without a
	// token or when the token is not a JWT with an exp claim.
	TokenExpiry time.Time
	// AuthAttempts counts the finished auth exchanges (any answer or a
	// transport error), across servers.
	AuthAttempts int
	// LastAuth is when the client last authenticated successfully; zero
	// before the first success.
	LastAuth time.Time
	// LastInventory is when the inventory was last sent successfully.
	LastInventory time.Time
	// LastUpdateCheck is when an update check last succeeded (whether or
	// not it offered a deployment).
	LastUpdateCheck time.Time
	// LastError is the last failed job attempt of Run or Step; nil before
	// the first failure. It is kept after later successes: compare its At
	// with LastInventory and LastUpdateCheck.
	LastError *JobError
	// Deployment is what the last successful update check offered, nil
	// when it offered nothing.
	Deployment *OfferedDeployment
	// Certificate describes the mTLS client certificate (the leaf of
	// Options.TLSCredential), nil without one.
	Certificate *CertificateInfo
}

// JobError is one failed job attempt.
type JobError struct {
	// Job is "inventory" or "update".
	Job string
	// At is when the attempt failed.
	At time.Time
	// Err is the error message (never holds a token or key).
	Err string
}

// OfferedDeployment is a deployment the server offered.
type OfferedDeployment struct {
	// ID is the deployment id.
	ID string
	// ArtifactName is the name of the artifact to install.
	ArtifactName string
	// Since is when this deployment id was first offered to this Client.
	Since time.Time
}

// CertificateInfo describes a client certificate without its key.
type CertificateInfo struct {
	// Subject is the certificate subject in RFC 2253 form, e.g. "CN=dev-1".
	Subject string
	// Serial is the serial number in lower-case hex.
	Serial string
	// NotAfter is the end of the certificate's validity.
	NotAfter time.Time
}

// stateRecord is what Run records for State; it has its own lock so that
// recording never waits on the session lock.
type stateRecord struct {
	mu              sync.Mutex
	pending         bool
	authAttempts    int
	lastAuth        time.Time
	lastInventory   time.Time
	lastUpdateCheck time.Time
	lastError       *JobError
	deployment      *OfferedDeployment

	stopMake  sync.Once
	stopClose sync.Once
	stop      chan struct{} // closed by Stop; made lazily by stopCh
}

// State returns a snapshot of the client's session and jobs. Safe for
// concurrent use.
func (c *Client) State() State {
	token, server := c.current()
	r := &c.rec
	r.mu.Lock()
	s := State{
		Authenticated:   token != "",
		Pending:         r.pending,
		Server:          server,
		AuthAttempts:    r.authAttempts,
		LastAuth:        r.lastAuth,
		LastInventory:   r.lastInventory,
		LastUpdateCheck: r.lastUpdateCheck,
	}
	if r.lastError != nil {
		e := *r.lastError
		s.LastError = &e
	}
	if r.deployment != nil {
		d := *r.deployment
		s.Deployment = &d
	}
	r.mu.Unlock()
	s.TokenExpiry = tokenExpiry(token)
	if cred := c.opts.TLSCredential; cred != nil {
		if chain := cred.CertificateChain(); len(chain) > 0 && chain[0] != nil {
			leaf := chain[0]
			s.Certificate = &CertificateInfo{
				Subject:  leaf.Subject.String(),
				Serial:   strings.ToLower(leaf.SerialNumber.Text(16)),
				NotAfter: leaf.NotAfter,
			}
		}
	}
	return s
}

// recordExchange notes the outcome of an auth exchange and reports the
// state (a daemon's readiness waits for the first auth attempt).
func (c *Client) recordExchange(ev Event) {
	if ev.Op != OpAuth {
		return
	}
	r := &c.rec
	r.mu.Lock()
	r.authAttempts++
	switch {
	case ev.Err != nil:
	case ev.Status == 200:
		r.pending = false
		r.lastAuth = time.Now()
	case ev.Status == 401:
		r.pending = true
	}
	r.mu.Unlock()
	c.reportState()
}

// recordJob notes the outcome of one job attempt and reports the state.
func (c *Client) recordJob(job string, err error) {
	now := time.Now()
	r := &c.rec
	r.mu.Lock()
	switch {
	case err != nil:
		r.lastError = &JobError{Job: job, At: now, Err: err.Error()}
	case job == "inventory":
		r.lastInventory = now
	default:
		r.lastUpdateCheck = now
	}
	r.mu.Unlock()
	c.reportState()
}

// noteDeployment records what a successful update check offered (nil for
// nothing) and reports whether d is a deployment id this Client has not
// seen offered just before.
func (c *Client) noteDeployment(d *menderapi.DeploymentInstructions) bool {
	r := &c.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	if d == nil {
		r.deployment = nil
		return false
	}
	if r.deployment != nil && r.deployment.ID == d.ID {
		r.deployment.ArtifactName = d.Artifact.ArtifactName
		return false
	}
	r.deployment = &OfferedDeployment{ID: d.ID, ArtifactName: d.Artifact.ArtifactName, Since: time.Now()}
	return true
}

func (c *Client) reportState() {
	if c.opts.OnState != nil {
		c.opts.OnState(c.State())
	}
}

// stopCh returns the channel Stop closes.
func (c *Client) stopCh() <-chan struct{} {
	c.rec.stopMake.Do(func() { c.rec.stop = make(chan struct{}) })
	return c.rec.stop
}

// Stop asks Run to return between job attempts: a wait in progress ends at
// once, and an attempt in flight finishes first (bounded by RequestTimeout
// per request; cancel Run's context to abort it). A daemon uses it to
// replace a Client (say, after a configuration reload) without cutting a
// request short. After Stop, Run returns at once. Stop is idempotent and
// safe for concurrent use.
func (c *Client) Stop() {
	c.stopCh()
	c.rec.stopClose.Do(func() { close(c.rec.stop) })
}

// waitOrStop waits d, or until ctx is done or stop is closed; it reports
// whether Run should go on.
func waitOrStop(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-t.C:
		return ctx.Err() == nil
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// tokenExpiry returns the "exp" claim of a JWT, zero when token is not a
// JWT or has no numeric exp. The signature is not checked: the value is
// only reported. Nothing of the token is logged or returned.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(parts[1]) > 8192 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}
	}
	f, err := claims.Exp.Float64()
	// Beyond year 9999 (or before 1970) is not a real expiry.
	if err != nil || f <= 0 || f > 253402300799 {
		return time.Time{}
	}
	return time.Unix(int64(f), 0).UTC()
}
