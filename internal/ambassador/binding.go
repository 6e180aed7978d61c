package ambassador

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Certificate fields an identity attribute can be bound to.
const (
	FieldCN     = "CN"      // subject common name
	FieldSerial = "serial"  // serial number, compared as a hex number
	FieldSANDNS = "SAN-DNS" // any DNS subject alternative name (case-insensitive)
	FieldOU     = "OU"      // any subject organizational unit
)

// ErrBadBinding wraps every ParseBinding error.
var ErrBadBinding = errors.New("invalid identity binding")

// ErrIdentityMismatch means an auth request's identity attribute does not
// equal the certificate field it is bound to.
var ErrIdentityMismatch = errors.New("identity does not match the client certificate")

// Binding requires the identity attribute Attr of an auth request to equal
// the certificate field Field (FieldCN, FieldSerial, FieldSANDNS or FieldOU).
type Binding struct {
	Attr  string
	Field string
}

// String returns the binding in ParseBinding form, "attr=Field".
func (b Binding) String() string { return b.Attr + "=" + b.Field }

// ParseBinding parses "attr=Field", for example "mac=CN" or
// "serial_no=serial". The field name is case-insensitive.
func ParseBinding(s string) (Binding, error) {
	attr, field, ok := strings.Cut(s, "=")
	attr, field = strings.TrimSpace(attr), strings.TrimSpace(field)
	if !ok || attr == "" || field == "" {
		return Binding{}, fmt.Errorf("%w %q: want attr=Field, for example mac=CN", ErrBadBinding, s)
	}
	for _, f := range []string{FieldCN, FieldSerial, FieldSANDNS, FieldOU} {
		if strings.EqualFold(field, f) {
			return Binding{Attr: attr, Field: f}, nil
		}
	}
	return Binding{}, fmt.Errorf("%w %q: unknown certificate field %q; use CN, serial, SAN-DNS or OU", ErrBadBinding, s, field)
}

// check verifies the binding against an identity object and a certificate.
func (b Binding) check(identity map[string]any, cert *x509.Certificate) error {
	v, ok := identity[b.Attr]
	if !ok {
		return fmt.Errorf("%w: identity attribute %q is missing; it must equal the certificate %s", ErrIdentityMismatch, b.Attr, b.Field)
	}
	// Exactly a string: an array (even of one element) is another
	// identity to deviceauth, so accepting it would let one certificate
	// register a second device.
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("%w: identity attribute %q must be a single string to match the certificate %s", ErrIdentityMismatch, b.Attr, b.Field)
	}
	if !b.matches(s, cert) {
		return fmt.Errorf("%w: identity attribute %q does not equal the certificate %s", ErrIdentityMismatch, b.Attr, b.Field)
	}
	return nil
}

func (b Binding) matches(s string, cert *x509.Certificate) bool {
	switch b.Field {
	case FieldCN:
		return s == cert.Subject.CommonName
	case FieldSerial:
		n, err := pki.ParseSerial(s)
		return err == nil && n.Cmp(cert.SerialNumber) == 0
	case FieldSANDNS:
		return slices.ContainsFunc(cert.DNSNames, func(d string) bool { return strings.EqualFold(d, s) })
	case FieldOU:
		return slices.Contains(cert.Subject.OrganizationalUnit, s)
	}
	return false
}
