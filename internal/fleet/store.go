package fleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Defaults of [StoreOptions].
const (
	// DefaultCertValidity is the lifetime of a minted device certificate.
	DefaultCertValidity = 365 * 24 * time.Hour
	// CertRenewBefore: a cached certificate that expires within this time
	// is issued again (for the same key).
	CertRenewBefore = 7 * 24 * time.Hour
	// BlockSize is how many devices share one cache file in a directory
	// store.
	BlockSize = 1000
)

// indexHeader is the PEM header that names the device index of a block.
const indexHeader = "Device-Index"

// Credential is one virtual device's key and, with mTLS, its certificate.
// It implements client.Credential; a Credential without a certificate
// presents none.
type Credential struct {
	// Index is the device index in the fleet.
	Index int
	// Key signs auth requests and, with mTLS, the TLS handshake.
	Key crypto.Signer
	// Cert is the device certificate (CA-signed, client auth); nil without mTLS.
	Cert *x509.Certificate
}

// Public returns the public key.
func (c *Credential) Public() crypto.PublicKey { return c.Key.Public() }

// Sign signs with the device key.
func (c *Credential) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return c.Key.Sign(r, digest, opts)
}

// CertificateChain returns the certificate, or nothing without mTLS.
func (c *Credential) CertificateChain() []*x509.Certificate {
	if c.Cert == nil {
		return nil
	}
	return []*x509.Certificate{c.Cert}
}

// StoreOptions say where device credentials are cached and how missing
// ones are made.
type StoreOptions struct {
	// Dir caches credentials in Dir/<key type>/devices-NNNNNN.pem, one file
	// per BlockSize indices, so the shards of one fleet mostly write
	// different files. When two processes rewrite one file at the same
	// time the last write wins and the other's new entries are minted again
	// on its next run. "" with File "" keeps nothing on disk.
	Dir string
	// File caches every credential in one file instead of Dir (used for
	// keys without certificates, --key-file). Ignored when Dir is set.
	File string
	// CA signs device certificates; nil makes keys only (no mTLS).
	CA *pki.CA
	// KeyType of minted keys; "" means ECDSA P-256. Cached keys of another
	// type are replaced.
	KeyType pki.KeyType
	// Name returns the certificate common name of device index. nil means
	// "device-<index>". A cached certificate with another name is reissued.
	Name func(index int) string
	// Validity of minted certificates; 0 means DefaultCertValidity.
	Validity time.Duration
	// Workers bounds parallel parsing and minting; 0 means GOMAXPROCS.
	Workers int
	// Now is the clock for certificate validity; nil means time.Now.
	Now func() time.Time
	// Logger receives one line per rewritten cache file; nil discards.
	Logger *slog.Logger
}

// StoreResult counts what [LoadCredentials] did.
type StoreResult struct {
	// Loaded credentials came from the cache unchanged.
	Loaded int
	// MintedKeys is the number of new keys (each with a new certificate
	// when a CA is given).
	MintedKeys int
	// ReissuedCerts is the number of cached keys that got a new
	// certificate (missing, expiring, another CA or another name).
	ReissuedCerts int
	// FilesWritten is the number of cache files rewritten.
	FilesWritten int
}

// LoadCredentials returns the credentials of devices lo..hi-1 in index
// order. Cached keys and certificates that are still valid for the
// options (key type, CA signature, common name, validity) are reused;
// everything else is minted and the affected cache files are rewritten
// atomically, keeping their entries for other indices. Cache files are
// written with mode 0600 (they hold private keys).
func LoadCredentials(ctx context.Context, o StoreOptions, lo, hi int) ([]*Credential, StoreResult, error) {
	if lo < 0 || hi < lo {
		return nil, StoreResult{}, fmt.Errorf("load credentials: index range %d..%d: %w", lo, hi, ErrInvalid)
	}
	if o.KeyType == "" {
		o.KeyType = pki.ECDSAP256
	}
	if _, err := pki.ParseKeyType(string(o.KeyType)); err != nil {
		return nil, StoreResult{}, fmt.Errorf("load credentials: %w", err)
	}
	if o.Name == nil {
		o.Name = func(i int) string { return "device-" + strconv.Itoa(i) }
	}
	if o.Validity <= 0 {
		o.Validity = DefaultCertValidity
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	creds := make([]*Credential, hi-lo)
	groups := o.groups(lo, hi)

	var (
		res     storeCounters
		errMu   sync.Mutex
		errs    []error
		wg      sync.WaitGroup
		sem     = make(chan struct{}, o.Workers)
		stopped atomic.Bool
	)
	for _, g := range groups {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if stopped.Load() {
				return
			}
			if err := o.loadGroup(ctx, g, lo, creds, &res); err != nil {
				stopped.Store(true)
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, res.result(), fmt.Errorf("load credentials: %w", err)
	}
	if len(errs) > 0 {
		return nil, res.result(), errors.Join(errs...)
	}
	return creds, res.result(), nil
}

type storeCounters struct {
	loaded, minted, reissued, files atomic.Int64
}

func (c *storeCounters) result() StoreResult {
	return StoreResult{Loaded: int(c.loaded.Load()), MintedKeys: int(c.minted.Load()),
		ReissuedCerts: int(c.reissued.Load()), FilesWritten: int(c.files.Load())}
}

// group is the indices that live in one cache file ("" = no file).
type group struct {
	path    string
	indices []int
}

func (o *StoreOptions) groups(lo, hi int) []group {
	switch {
	case o.Dir != "":
		var gs []group
		for start := lo; start < hi; {
			block := start / BlockSize
			end := min((block+1)*BlockSize, hi)
			name := fmt.Sprintf("devices-%06d.pem", block*BlockSize)
			gs = append(gs, group{path: filepath.Join(o.Dir, string(o.KeyType), name), indices: seq(start, end)})
			start = end
		}
		return gs
	case o.File != "":
		return []group{{path: o.File, indices: seq(lo, hi)}}
	}
	// No cache: split the work so that minting runs in parallel.
	var gs []group
	for start := lo; start < hi; start += BlockSize / 4 {
		gs = append(gs, group{indices: seq(start, min(start+BlockSize/4, hi))})
	}
	return gs
}

func seq(lo, hi int) []int {
	s := make([]int, 0, hi-lo)
	for i := lo; i < hi; i++ {
		s = append(s, i)
	}
	return s
}

// cacheEntry is what one file holds for one index.
type cacheEntry struct {
	keyBlock, certBlock *pem.Block
}

// loadGroup loads, repairs and stores the credentials of one file.
func (o *StoreOptions) loadGroup(ctx context.Context, g group, lo int, creds []*Credential, res *storeCounters) error {
	entries := map[int]*cacheEntry{}
	if g.path != "" {
		data, err := os.ReadFile(g.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("read credential cache: %w", err)
		default:
			entries = parseCache(data)
		}
	}
	changed := false
	now := o.Now()
	for _, idx := range g.indices {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e := entries[idx]
		cred, keyOK, certOK := o.check(idx, e, now)
		switch {
		case keyOK && certOK:
			res.loaded.Add(1)
		case keyOK:
			cert, err := o.issue(cred.Key, idx)
			if err != nil {
				return err
			}
			cred.Cert = cert
			e.certBlock = certBlock(idx, cert)
			res.reissued.Add(1)
			changed = true
		default:
			key, err := pki.GenerateKey(o.KeyType)
			if err != nil {
				return fmt.Errorf("device %d: %w", idx, err)
			}
			cred = &Credential{Index: idx, Key: key}
			kb, err := keyBlock(idx, key)
			if err != nil {
				return err
			}
			e = &cacheEntry{keyBlock: kb}
			if o.CA != nil {
				if cred.Cert, err = o.issue(key, idx); err != nil {
					return err
				}
				e.certBlock = certBlock(idx, cred.Cert)
			}
			entries[idx] = e
			res.minted.Add(1)
			changed = true
		}
		creds[idx-lo] = cred
	}
	if !changed || g.path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(g.path), 0o700); err != nil {
		return fmt.Errorf("credential cache directory: %w", err)
	}
	if err := atomicfile.Write(g.path, encodeCache(entries), pki.KeyFileMode); err != nil {
		return fmt.Errorf("write credential cache: %w", err)
	}
	res.files.Add(1)
	o.Logger.Debug("credential cache written", "file", g.path, "entries", len(entries))
	return nil
}

// check parses a cached entry: keyOK when the key parses and has the
// wanted type; certOK when no CA is used, or the certificate matches the
// key, is signed by the CA, names the device and is valid beyond
// CertRenewBefore.
func (o *StoreOptions) check(idx int, e *cacheEntry, now time.Time) (cred *Credential, keyOK, certOK bool) {
	if e == nil || e.keyBlock == nil {
		return nil, false, false
	}
	k, err := x509.ParsePKCS8PrivateKey(e.keyBlock.Bytes)
	if err != nil {
		return nil, false, false
	}
	key, ok := k.(crypto.Signer)
	if !ok || keyTypeOf(key) != o.KeyType {
		return nil, false, false
	}
	cred = &Credential{Index: idx, Key: key}
	if o.CA == nil {
		return cred, true, true
	}
	if e.certBlock == nil {
		return cred, true, false
	}
	cert, err := x509.ParseCertificate(e.certBlock.Bytes)
	if err != nil || !menderapi.PublicKeysEqual(key.Public(), cert.PublicKey) ||
		cert.Subject.CommonName != o.Name(idx) || now.Before(cert.NotBefore) ||
		now.Add(CertRenewBefore).After(cert.NotAfter) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) ||
		!bytes.Equal(cert.RawIssuer, o.CA.Cert.RawSubject) || cert.CheckSignatureFrom(o.CA.Cert) != nil {
		return cred, true, false
	}
	cred.Cert = cert
	return cred, true, true
}

func (o *StoreOptions) issue(key crypto.Signer, idx int) (*x509.Certificate, error) {
	cert, err := o.CA.IssueClient(key.Public(), o.Name(idx), o.Validity)
	if err != nil {
		return nil, fmt.Errorf("device %d: %w", idx, err)
	}
	return cert, nil
}

// keyTypeOf names the type of key as pki does; "" for anything else.
func keyTypeOf(key crypto.Signer) pki.KeyType {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return pki.ECDSAP256
		case elliptic.P384():
			return pki.ECDSAP384
		}
	case ed25519.PrivateKey:
		return pki.Ed25519
	case *rsa.PrivateKey:
		switch k.N.BitLen() {
		case 2048:
			return pki.RSA2048
		case 3072:
			return pki.RSA3072
		}
	}
	return ""
}

func keyBlock(idx int, key crypto.Signer) (*pem.Block, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("device %d: marshal key: %w", idx, err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{indexHeader: strconv.Itoa(idx)}, Bytes: der}, nil
}

func certBlock(idx int, cert *x509.Certificate) *pem.Block {
	return &pem.Block{Type: "CERTIFICATE", Headers: map[string]string{indexHeader: strconv.Itoa(idx)}, Bytes: cert.Raw}
}

// parseCache reads the PEM blocks of a cache file; blocks without a valid
// index header, of another type, or repeated are ignored (and so replaced).
func parseCache(data []byte) map[int]*cacheEntry {
	out := map[int]*cacheEntry{}
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			return out
		}
		idx, err := strconv.Atoi(blk.Headers[indexHeader])
		if err != nil || idx < 0 {
			continue
		}
		e := out[idx]
		if e == nil {
			e = &cacheEntry{}
			out[idx] = e
		}
		switch blk.Type {
		case "PRIVATE KEY":
			e.keyBlock = blk
		case "CERTIFICATE":
			e.certBlock = blk
		}
	}
}

// encodeCache writes the entries in index order: key, then certificate.
func encodeCache(entries map[int]*cacheEntry) []byte {
	idxs := make([]int, 0, len(entries))
	for i := range entries {
		idxs = append(idxs, i)
	}
	slices.Sort(idxs)
	var buf bytes.Buffer
	for _, i := range idxs {
		e := entries[i]
		for _, b := range []*pem.Block{e.keyBlock, e.certBlock} {
			if b != nil {
				_ = pem.Encode(&buf, b) // writes to a bytes.Buffer cannot fail
			}
		}
	}
	return buf.Bytes()
}
