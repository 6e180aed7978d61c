package ambassador

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Errors of the identity policy, each answered with a JSON error.
var (
	// ErrIdentityKeyNotAllowed means the identity holds an attribute that
	// is neither bound nor listed in Options.IdentityKeys (403).
	ErrIdentityKeyNotAllowed = errors.New("identity attribute not allowed")
	// ErrIdentityClaimed means the certificate already speaks for another
	// identity (403; with Options.BindIdentity).
	ErrIdentityClaimed = errors.New("this certificate already speaks for another identity")
	// ErrTooManyIdentities means the certificate introduced
	// Options.NewIdentitiesPerHour identities within the hour (429).
	ErrTooManyIdentities = errors.New("too many new identities for this certificate")
)

// identityPolicy is what an auth request's identity may hold: the bound
// attributes, each a single string equal to its certificate field, and the
// allowed extra keys.
type identityPolicy struct {
	binds    []Binding
	allowed  map[string]struct{} // bound attributes and IdentityKeys
	restrict bool                // refuse keys not in allowed
}

func newIdentityPolicy(binds []Binding, keys []string) identityPolicy {
	p := identityPolicy{binds: binds, restrict: len(binds) > 0 || len(keys) > 0,
		allowed: make(map[string]struct{}, len(binds)+len(keys))}
	for _, b := range binds {
		p.allowed[b.Attr] = struct{}{}
	}
	for _, k := range keys {
		p.allowed[k] = struct{}{}
	}
	return p
}

// check applies the policy to an identity presented with cert. Errors wrap
// ErrIdentityKeyNotAllowed or ErrIdentityMismatch and name the attribute.
func (p identityPolicy) check(identity map[string]any, cert *x509.Certificate) error {
	if p.restrict {
		for _, k := range slices.Sorted(maps.Keys(identity)) {
			if _, ok := p.allowed[k]; !ok {
				return fmt.Errorf("%w: identity attribute %q; this ambassador accepts only %s (ambassador --identity-keys adds keys)",
					ErrIdentityKeyNotAllowed, k, p.allowedList())
			}
		}
	}
	for _, b := range p.binds {
		if err := b.check(identity, cert); err != nil {
			return err
		}
	}
	return nil
}

func (p identityPolicy) allowedList() string {
	keys := slices.Sorted(maps.Keys(p.allowed))
	for i, k := range keys {
		keys[i] = fmt.Sprintf("%q", k)
	}
	return strings.Join(keys, ", ")
}

// certKey names a certificate across CAs: its issuer and serial.
func certKey(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawIssuer)
	return hex.EncodeToString(sum[:8]) + "/" + serialKey(c.SerialNumber)
}

// maxTrackedCerts bounds the per-certificate identity records. Evicting a
// record needs that many other certificates to authenticate since its own
// last use, which one certificate holder cannot cause.
const maxTrackedCerts = 1 << 18

// certIdentities records which identities each certificate spoke for.
type certIdentities struct {
	perHour int // new identities per certificate and hour; < 0 = unlimited
	mu      sync.Mutex
	m       *lru[string, *certRecord]
}

type certRecord struct {
	bound  string    // with binding: the identity hash this certificate speaks for
	window time.Time // start of the current one-hour window
	fresh  int       // new identities in the window
	known  []string  // recently seen identity hashes, newest last, bounded
}

func newCertIdentities(perHour int) *certIdentities {
	return &certIdentities{perHour: perHour, m: newLRU[string, *certRecord](maxTrackedCerts)}
}

// claim makes cert speak for the identity hash, the first one only. It
// reports whether the claim is new, so that a failed preauthorization can
// release it.
func (c *certIdentities) claim(cert, hash string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m.get(cert)
	if !ok {
		r = &certRecord{}
		c.m.put(cert, r)
	}
	switch r.bound {
	case hash:
		return false, nil
	case "":
		r.bound = hash
		return true, nil
	}
	return false, ErrIdentityClaimed
}

// release undoes a new claim.
func (c *certIdentities) release(cert, hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.m.get(cert); ok && r.bound == hash {
		r.bound = ""
	}
}

// admit counts a new identity against cert's hourly allowance. It returns
// how long to wait when the allowance is used up.
func (c *certIdentities) admit(cert, hash string, now time.Time) (time.Duration, error) {
	if c.perHour < 0 {
		return 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m.get(cert)
	if !ok {
		r = &certRecord{}
		c.m.put(cert, r)
	}
	if i := slices.Index(r.known, hash); i >= 0 {
		r.known = append(slices.Delete(r.known, i, i+1), hash)
		return 0, nil
	}
	if now.Sub(r.window) >= time.Hour || now.Before(r.window) {
		r.window, r.fresh = now, 0
	}
	if r.fresh >= c.perHour {
		return r.window.Add(time.Hour).Sub(now), ErrTooManyIdentities
	}
	r.fresh++
	r.known = append(r.known, hash)
	if over := len(r.known) - max(c.perHour, 16); over > 0 {
		r.known = slices.Delete(r.known, 0, over)
	}
	return 0, nil
}
