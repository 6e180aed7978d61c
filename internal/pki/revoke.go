package pki

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// CRLValidity is how long a CRL written by WriteCRL stays current
// (its NextUpdate).
const CRLValidity = 30 * 24 * time.Hour

// ParseSerial parses a certificate serial written in hex, as Mender's
// blacklist file holds them: case-insensitive, an optional "0x" prefix,
// optional ':' separators (as openssl prints them), leading zeros allowed.
// Anything else (signs, spaces inside, other letters) is refused.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	h = strings.TrimPrefix(h, "0x")
	h = strings.ReplaceAll(h, ":", "")
	bad := h == ""
	for _, c := range []byte(h) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			bad = true
			break
		}
	}
	n, ok := new(big.Int).SetString(h, 16)
	if bad || !ok {
		return nil, fmt.Errorf("serial %q: want hexadecimal digits, e.g. 3a7f09", s)
	}
	return n, nil
}

// FormatSerial writes a serial the way the blacklist file holds it:
// lowercase hex without separators.
func FormatSerial(n *big.Int) string { return n.Text(16) }

// ParseBlacklist parses a serial blacklist: one hex serial a line (see
// ParseSerial); blank lines and lines starting with '#' are skipped. Errors
// name the line.
func ParseBlacklist(data []byte) ([]*big.Int, error) {
	var out []*big.Int
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if len(t) > 80 {
			t = t[:80] + "…"
		}
		n, err := ParseSerial(t)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w; write one hex serial a line", line, err)
		}
		out = append(out, n)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read lines: %w", err)
	}
	return out, nil
}

// ReadBlacklist reads and parses a serial blacklist file (ParseBlacklist).
// A missing file is an empty list.
func ReadBlacklist(path string) ([]*big.Int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	list, err := ParseBlacklist(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return list, nil
}

// RevokeResult says what Revoke did.
type RevokeResult struct {
	Serial        string // normalised hex serial
	Added         bool   // false when it was already listed
	Count         int    // serials in the blacklist now
	BlacklistPath string
	CRLPath       string
	CRLNumber     int64
}

// Revoke adds serial (hex) to the blacklist file and rewrites the CRL at
// crlPath, signed by ca, listing every blacklisted serial. Both files are
// written atomically; the CRL number grows by one on every call.
func Revoke(ca *CA, blacklistPath, crlPath, serial string) (*RevokeResult, error) {
	n, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	list, err := ReadBlacklist(blacklistPath)
	if err != nil {
		return nil, err
	}
	res := &RevokeResult{Serial: FormatSerial(n), Added: true, BlacklistPath: blacklistPath, CRLPath: crlPath}
	for _, s := range list {
		if s.Cmp(n) == 0 {
			res.Added = false
		}
	}
	if res.Added {
		list = append(list, n)
		var b strings.Builder
		for _, s := range list {
			b.WriteString(FormatSerial(s))
			b.WriteByte('\n')
		}
		if err := atomicfile.Write(blacklistPath, []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
	}
	res.Count = len(list)
	num, err := WriteCRL(ca, crlPath, list)
	if err != nil {
		return nil, err
	}
	res.CRLNumber = num
	return res, nil
}

// WriteCRL writes a PEM CRL signed by ca that lists serials, with a CRL
// number one above the one in the existing file at path (1 for a new file),
// and returns that number.
func WriteCRL(ca *CA, path string, serials []*big.Int) (int64, error) {
	if err := ca.check(); err != nil {
		return 0, err
	}
	num := int64(1)
	if old, err := os.ReadFile(path); err == nil {
		if blk, _ := pem.Decode(old); blk != nil {
			if crl, err := x509.ParseRevocationList(blk.Bytes); err == nil && crl.Number != nil {
				num = crl.Number.Int64() + 1
			}
		}
	}
	now := time.Now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(num),
		ThisUpdate: now.Add(-backdate),
		NextUpdate: now.Add(CRLValidity),
	}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: now.Add(-backdate)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return 0, fmt.Errorf("create CRL: %w", err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return 0, err
	}
	return num, nil
}
