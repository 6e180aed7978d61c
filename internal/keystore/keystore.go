// Package keystore turns a key reference from the configuration into a
// [*Key]: a crypto.Signer together with its certificate chain, which is what
// the API client needs for mutual TLS and for signing auth requests.
//
// A reference is a path to a PEM private key file (PKCS#1, PKCS#8 or SEC1;
// RSA of at least 2048 bits, ECDSA P-256/P-384/P-521 or Ed25519), or
// "handle:0x81000100": a key persisted in a TPM 2.0 at that handle (the
// syntax of the tpm2 OpenSSL provider, so one mender.conf serves this agent
// and Mender's C++ client). "pkcs11:" URIs are recognised and rejected with
// [ErrPKCS11]. [Open] checks the key file's permissions or the TPM key's
// attributes, the key's strength, and that the optional certificate file
// belongs to the key and is valid now; each problem is a clear error naming
// the file or TPM handle and the fix, wrapping a sentinel callers can
// branch on.
//
// TPM keys never leave the TPM: [Key] signs with TPM2_Sign on the
// persistent handle (ECDSA P-256, or RSA with PKCS#1 v1.5 and PSS), through
// one [TPM] whose commands are serialised. [Open] verifies a test signature
// before returning a TPM key. [Generate] creates keys: in a TPM under the
// standard storage root key, or as PKCS#8 files.
//
// The certificate file is re-read when it changes (see
// [Key.CertificateChain]), so a renewed or re-provisioned certificate is
// used at the next TLS handshake without a restart.
package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Errors callers branch on with errors.Is. Every error Open returns wraps at
// most one of them and names the file concerned.
var (
	// ErrNotFound means the key file or certificate file does not exist
	// (the error also wraps fs.ErrNotExist), or the reference is empty.
	ErrNotFound = errors.New("key not found")
	// ErrKeyMismatch means the certificate does not belong to the private key.
	ErrKeyMismatch = errors.New("certificate does not match the private key")
	// ErrExpired means a certificate's NotAfter is in the past.
	ErrExpired = errors.New("certificate has expired")
	// ErrNotYetValid means a certificate's NotBefore is in the future.
	ErrNotYetValid = errors.New("certificate is not yet valid")
	// ErrInsecurePermissions means the key file is accessible by group or others.
	ErrInsecurePermissions = errors.New("key file permissions are too open")
	// ErrWeakKey means an RSA key shorter than MinRSABits.
	ErrWeakKey = errors.New("key is too weak")
	// ErrUnsupported means a key type, key encoding, key reference or TPM
	// object this agent cannot use (including passphrase-protected PEM
	// files, "tpm:" references and restricted or non-signing TPM objects).
	ErrUnsupported = errors.New("unsupported key")
	// ErrSwapped means the key file holds a certificate and the certificate
	// file a private key: the two paths were given the wrong way round.
	ErrSwapped = errors.New("key and certificate look swapped")
	// ErrPKCS11 means a "pkcs11:" reference.
	ErrPKCS11 = errors.New("pkcs11 keys are not supported by this agent")
	// ErrClosed means the Key was used after Close.
	ErrClosed = errors.New("key is closed")
)

// MinRSABits is the smallest RSA modulus Open accepts.
const MinRSABits = 2048

// ExpiryWarning is how long before a certificate expires Warnings starts to
// report it.
const ExpiryWarning = 30 * 24 * time.Hour

// reloadInterval is the least time between two checks of the certificate
// file for changes.
const reloadInterval = time.Second

// Options configure Open and OpenOrGenerate. The zero value opens a key
// without a certificate, using real time and no logging.
type Options struct {
	// CertFile is an optional PEM file with the certificate chain: the
	// first certificate is the key's own (the leaf), the rest are
	// intermediates in order. Empty means no certificate:
	// CertificateChain returns nil and TLSCertificate fails.
	CertFile string
	// Now is the clock for validity checks, expiry warnings and the
	// at-most-once-per-second re-read of CertFile. Nil means time.Now.
	Now func() time.Time
	// Logger receives certificate reload events. Nil discards them.
	Logger *slog.Logger
	// TPMDevice is the TPM for "handle:" references (mender.conf
	// TPM.Device): a device path, or tcp://HOST:PORT for a TPM command port
	// such as swtpm's. "" means DefaultTPMDevice, falling back to
	// FallbackTPMDevice. Ignored when TPM is set.
	TPMDevice string
	// TPM is an open TPM for "handle:" references, shared with other keys;
	// the Key does not close it. Nil means the Key opens TPMDevice itself
	// and closes it in Close.
	TPM *TPM
}

// refKind is what a key reference points to.
type refKind int

const (
	refFile refKind = iota
	refPKCS11
	refTPM
)

// parseRef classifies a key reference. For a file it returns the path,
// unchanged.
func parseRef(ref string) (refKind, string, error) {
	switch {
	case strings.TrimSpace(ref) == "":
		return 0, "", fmt.Errorf("%w: the key reference is empty: set it to a PEM key file path", ErrNotFound)
	case hasPrefixFold(ref, "pkcs11:"):
		return refPKCS11, ref, nil
	case hasPrefixFold(ref, "handle:"), hasPrefixFold(ref, "tpm:"):
		return refTPM, ref, nil
	}
	return refFile, ref, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// Open turns a key reference into a Key. A plain path is a PEM private key
// file; its mode must not give group or others any access. A certificate
// file given as the key gives ErrUnsupported, or ErrSwapped when
// opts.CertFile holds a private key (the two paths swapped). "pkcs11:..." gives
// ErrPKCS11; "tpm:..." gives ErrUnsupported (write "handle:0x..." instead).
// "handle:0x81000100" opens the TPM key persisted at that handle in
// opts.TPM or opts.TPMDevice and verifies a test signature; errors wrap
// ErrNoTPM, ErrInvalidHandle, ErrNotFound (nothing at the handle) or
// ErrUnsupported (not a usable signing key, or an RSA key whose PSS
// signatures TLS cannot use while opts.CertFile is set). With opts.CertFile
// set, the certificate chain is loaded and must belong to the key and be
// valid at opts.Now.
func Open(ctx context.Context, ref string, opts Options) (*Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open key %q: %w", ref, err)
	}
	kind, path, err := parseRef(ref)
	if err != nil {
		return nil, fmt.Errorf("open key: %w", err)
	}
	var (
		signer crypto.Signer
		closer io.Closer
	)
	switch kind {
	case refPKCS11:
		return nil, fmt.Errorf("open key %q: %w: set the key to a PEM file path or a TPM handle (handle:0x...) instead", redactURI(ref), ErrPKCS11)
	case refTPM:
		signer, closer, err = openTPMSigner(ctx, ref, opts)
	default:
		signer, err = loadKeyFile(path, opts.CertFile)
	}
	if err != nil {
		return nil, err
	}
	k := &Key{
		ref:      ref,
		signer:   signer,
		closer:   closer,
		certFile: opts.CertFile,
		now:      opts.Now,
		log:      opts.Logger,
	}
	if k.now == nil {
		k.now = time.Now
	}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	if k.certFile != "" {
		st, chain, err := k.loadChain()
		if err != nil {
			_ = k.Close()
			return nil, err
		}
		k.chain, k.certStat, k.lastCheck = chain, st, k.now()
	}
	k.log.Debug("opened key", "key_file", path, "fingerprint", k.Fingerprint(), "cert_file", k.certFile)
	return k, nil
}

// redactURI drops the query of a PKCS#11 URI, where a PIN may sit
// (pin-value=...), so that it never reaches an error message or a log.
func redactURI(ref string) string {
	if i := strings.IndexByte(ref, '?'); i >= 0 {
		return ref[:i] + "?..."
	}
	return ref
}

// loadKeyFile reads and checks a PEM private key file. certFile, when not
// empty, is the certificate file configured with it, read only to tell a
// swapped pair from a certificate given as the key.
func loadKeyFile(path, certFile string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open key: %w: %s does not exist: check the path or create the key (%w)", ErrNotFound, path, err)
		}
		return nil, fmt.Errorf("open key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("open key %s: %w: not a regular file: point to a PEM key file", path, ErrUnsupported)
	}
	// The content is looked at before the mode: a certificate given as the
	// key is world-readable, and chmod would not make it a key.
	data, readErr := os.ReadFile(path)
	if readErr == nil && !hasPEMBlock(data, isPrivateKeyType) && hasPEMBlock(data, isCertificateType) {
		if certFile != "" && fileHasPEMBlock(certFile, isPrivateKeyType) {
			return nil, fmt.Errorf("open key %s: %w: %s (given as the key) holds a certificate and %s (given as the certificate) holds a private key: swap the two paths",
				path, ErrSwapped, path, certFile)
		}
		return nil, fmt.Errorf("open key %s: %w: the file holds a certificate (PEM \"CERTIFICATE\"), not a private key: point the key path at the certificate's private key file",
			path, ErrUnsupported)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("open key %s: %w: mode %04o gives group or others access: run chmod 600 %s", path, ErrInsecurePermissions, perm, path)
	}
	if readErr != nil {
		return nil, fmt.Errorf("open key: %w", readErr)
	}
	signer, err := pki.ParsePrivateKeyPEM(data)
	switch {
	case errors.Is(err, pki.ErrEncryptedKey):
		return nil, fmt.Errorf("open key %s: %w: %w", path, ErrUnsupported, err)
	case errors.Is(err, pki.ErrUnsupportedKey):
		// pki's message starts with the same words as ErrUnsupported: say them once.
		detail := strings.TrimPrefix(err.Error(), pki.ErrUnsupportedKey.Error()+": ")
		return nil, fmt.Errorf("open key %s: %w: %s", path, ErrUnsupported, detail)
	case err != nil:
		return nil, fmt.Errorf("open key %s: %w: want a PEM private key (PKCS#1, PKCS#8 or SEC1)", path, err)
	}
	if err := checkStrength(signer.Public()); err != nil {
		return nil, fmt.Errorf("open key %s: %w", path, err)
	}
	return signer, nil
}

// isPrivateKeyType reports whether a PEM block type is a private key of any
// encoding ("PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", ...).
func isPrivateKeyType(typ string) bool { return strings.HasSuffix(typ, "PRIVATE KEY") }

// isCertificateType reports whether a PEM block type is a certificate.
func isCertificateType(typ string) bool { return typ == "CERTIFICATE" || typ == "TRUSTED CERTIFICATE" }

// hasPEMBlock reports whether data holds a PEM block whose type satisfies is.
// Only block types are looked at; nothing of the content is kept.
func hasPEMBlock(data []byte, is func(string) bool) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if is(b.Type) {
			return true
		}
	}
}

// fileHasPEMBlock is hasPEMBlock for a file; false when it cannot be read.
func fileHasPEMBlock(path string, is func(string) bool) bool {
	data, err := os.ReadFile(path)
	return err == nil && hasPEMBlock(data, is)
}

// checkStrength accepts RSA keys of at least MinRSABits, ECDSA keys on
// P-256, P-384 and P-521, and Ed25519 keys.
func checkStrength(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits {
			return fmt.Errorf("%w: RSA key has %d bits, at least %d are required: generate a new key, e.g. openssl genpkey -algorithm ed25519", ErrWeakKey, bits, MinRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s: use P-256, P-384 or P-521", ErrUnsupported, k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("%w: key type %T: use RSA, ECDSA or Ed25519", ErrUnsupported, pub)
}

// OpenOrGenerate opens the key file at path, or, when it does not exist,
// generates an Ed25519 key, writes it as PKCS#8 with mode 0600 atomically
// (creating missing parent directories with mode 0700), and opens it. This is
// Mender's generated auth key (mender-agent.pem). The bool reports whether
// the key was generated. A reference that is not a plain path is passed to
// Open unchanged and never generated.
func OpenOrGenerate(ctx context.Context, path string, opts Options) (*Key, bool, error) {
	if kind, _, err := parseRef(path); err != nil || kind != refFile {
		k, err := Open(ctx, path, opts)
		return k, false, err
	}
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("open key %q: %w", path, err)
	}
	_, err := os.Lstat(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		k, err := Open(ctx, path, opts)
		return k, false, err
	}
	signer, err := pki.GenerateKey(pki.Ed25519)
	if err != nil {
		return nil, false, fmt.Errorf("generate key %s: %w", path, err)
	}
	pemKey, err := pki.MarshalPrivateKeyPEM(signer)
	if err != nil {
		return nil, false, fmt.Errorf("generate key %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("generate key %s: create directory: %w", path, err)
	}
	generated := true
	if err := atomicfile.WriteNew(path, pemKey, pki.KeyFileMode); err != nil {
		if !errors.Is(err, atomicfile.ErrExists) {
			return nil, false, fmt.Errorf("generate key: %w", err)
		}
		generated = false // another process created it first: use theirs
	}
	k, err := Open(ctx, path, opts)
	if err != nil {
		return nil, false, err
	}
	if generated {
		k.log.Info("generated auth key", "key_file", path, "fingerprint", menderapi.Fingerprint(signer.Public()))
	}
	return k, generated, nil
}
