package pki

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// IssuedIndexName is the file in a CA directory that lists the
// certificates issued with that CA (by `simulator pki server`, `pki
// device`, `pki sign-csr` and `serve`), so that `pki revoke` can refuse a
// serial the CA never issued and `pki list` can show what exists.
const IssuedIndexName = "issued.json"

// issuedIndexVersion is the version of the index file this package writes.
const issuedIndexVersion = 1

// Kinds of issued certificates.
const (
	KindServer = "server"
	KindDevice = "device"
)

// IssuedCert is one entry of the issued-certificates index.
type IssuedCert struct {
	// Serial is the serial number in lowercase hex (FormatSerial).
	Serial string `json:"serial"`
	// Subject is the subject distinguished name (RFC 2253 form).
	Subject string `json:"subject"`
	// Kind is KindServer or KindDevice.
	Kind string `json:"kind"`
	// NotAfter is the end of validity.
	NotAfter time.Time `json:"not_after"`
	// Issued is when the entry was recorded.
	Issued time.Time `json:"issued"`
	// CA is the CertFingerprint of the issuing CA certificate, so entries of
	// an earlier CA in the same directory (after `pki init --force`) are told
	// apart.
	CA string `json:"ca"`
	// Path is where the certificate was written; "" when unknown.
	Path string `json:"path,omitempty"`
}

type issuedIndex struct {
	Version      int          `json:"version"`
	Certificates []IssuedCert `json:"certificates"`
}

// RecordIssued adds certs, issued by ca, to the index in dir (kind and the
// path the certificate was written to, "" when none). The index is
// rewritten atomically under an exclusive lock (on systems with flock), so
// concurrent signing commands on one directory do not lose entries.
func RecordIssued(dir string, ca *CA, kind, path string, certs ...*x509.Certificate) error {
	if err := ca.check(); err != nil {
		return err
	}
	index := filepath.Join(dir, IssuedIndexName)
	unlock, err := lockFile(filepath.Join(dir, "."+IssuedIndexName+".lock"))
	if err != nil {
		return fmt.Errorf("record issued certificate in %s: %w", index, err)
	}
	defer unlock()
	list, err := ReadIssued(dir)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	caFP := CertFingerprint(ca.Cert)
	for _, c := range certs {
		list = append(list, IssuedCert{Serial: FormatSerial(c.SerialNumber), Subject: c.Subject.String(), Kind: kind,
			NotAfter: c.NotAfter.UTC(), Issued: now, CA: caFP, Path: path})
	}
	data, err := json.MarshalIndent(issuedIndex{Version: issuedIndexVersion, Certificates: list}, "", "  ")
	if err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	if err := atomicfile.Write(index, append(data, '\n'), CertFileMode); err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	return nil
}

// ReadIssued returns the entries of the index in dir, oldest first; a
// missing index is an empty list. Errors name the file.
func ReadIssued(dir string) ([]IssuedCert, error) {
	index := filepath.Join(dir, IssuedIndexName)
	data, err := os.ReadFile(index)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read issued-certificates index: %w", err)
	}
	var idx issuedIndex
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("issued-certificates index %s: %w: repair or remove the file", index, err)
	}
	if idx.Version != issuedIndexVersion {
		return nil, fmt.Errorf("issued-certificates index %s: version %d, want %d", index, idx.Version, issuedIndexVersion)
	}
	return idx.Certificates, nil
}

// IssuedBy returns the entries of list issued by ca, in order.
func IssuedBy(list []IssuedCert, ca *CA) []IssuedCert {
	fp := CertFingerprint(ca.Cert)
	var out []IssuedCert
	for _, e := range list {
		if e.CA == fp {
			out = append(out, e)
		}
	}
	return out
}

// FindIssued returns the entry of list issued by ca with the given serial.
func FindIssued(list []IssuedCert, ca *CA, serial *big.Int) (IssuedCert, bool) {
	want, fp := FormatSerial(serial), CertFingerprint(ca.Cert)
	i := slices.IndexFunc(list, func(e IssuedCert) bool { return e.CA == fp && e.Serial == want })
	if i < 0 {
		return IssuedCert{}, false
	}
	return list[i], true
}
