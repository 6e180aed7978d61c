package pki

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // RFC 5280 key identifier, not a signature
	"crypto/x509"
	"encoding/asn1"
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
	CRLPath       string // "" when no CRL was written (see NoCRL)
	CRLNumber     int64
	// NoCRL says why no CRL was written (CRLRefusal); "" when one was.
	NoCRL string
}

// Revoke adds serial (hex) to the blacklist file and rewrites the CRL at
// crlPath, signed by ca, listing every blacklisted serial. Both files are
// written atomically; the CRL number grows by one on every call. A CA that
// may not sign CRLs (CRLRefusal) gets the blacklist only, and the result
// says why.
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
	if why := CRLRefusal(ca.Cert); why != "" {
		res.CRLPath, res.NoCRL = "", why
		return res, nil
	}
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
	if why := CRLRefusal(ca.Cert); why != "" {
		return 0, fmt.Errorf("write CRL %s: %s", path, why)
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
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, crlIssuer(ca.Cert), ca.Key)
	if err != nil {
		return 0, fmt.Errorf("create CRL: %w", err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return 0, err
	}
	return num, nil
}

// CRLRefusal says why ca may not sign CRLs, or returns "" when it may: a
// certificate with a key usage extension that lacks cRLSign (as the CA of
// Mender Gateway's mTLS guide, "keyCertSign, digitalSignature") would sign
// CRLs that every verifier refuses. A self-signed version-1 root has no key
// usage and may.
func CRLRefusal(ca *x509.Certificate) string {
	if ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return fmt.Sprintf("CA %q has a key usage without cRLSign, so CRLs it signed would be refused: revocation uses the blacklist only", ca.Subject.CommonName)
	}
	return ""
}

// crlIssuer returns the certificate to pass to x509.CreateRevocationList
// for ca. Go requires the issuer to have the cRLSign key usage and a subject
// key identifier; a self-signed version-1 root (Mender's mTLS guide CA) has
// no extensions, so neither. For such a root it returns a copy that claims
// both, with the key identifier derived from the public key as RFC 5280
// 4.2.1.2 method 1 does. The CRL is still signed by the root's key and
// names its subject, so it verifies against the real certificate; its
// authority key identifier is that derived value, which a verifier only
// compares when the issuer certificate has a subject key identifier.
func crlIssuer(ca *x509.Certificate) *x509.Certificate {
	if !isSelfSignedV1(ca) {
		return ca
	}
	c := *ca
	c.KeyUsage |= x509.KeyUsageCRLSign | x509.KeyUsageCertSign
	if len(c.SubjectKeyId) == 0 {
		c.SubjectKeyId = keyIdentifier(ca)
	}
	return &c
}

// keyIdentifier is the SHA-1 of the subjectPublicKey bit string of c.
func keyIdentifier(c *x509.Certificate) []byte {
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		sum := sha1.Sum(c.RawSubjectPublicKeyInfo) // not reached for a parsed certificate
		return sum[:]
	}
	sum := sha1.Sum(spki.PublicKey.RightAlign())
	return sum[:]
}
