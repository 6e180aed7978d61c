package keystore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// Persistent handle ranges (TPM 2.0 Part 2, 7.6; TCG provisioning guidance).
const (
	persistentFirst      = 0x81000000
	persistentOwnerLast  = 0x817FFFFF // the owner may create objects up to here
	persistentLast       = 0x81FFFFFF // the rest belongs to the platform
	handleRefPrefix      = "handle:"
	exampleHandleRef     = "handle:0x81000100"
	conventionalSRKIndex = 0x81000001
)

// parseHandleRef parses a "handle:0x81000100" reference (the syntax of the
// tpm2 OpenSSL provider) into a persistent handle. "tpm:..." references
// give ErrUnsupported with the syntax to use instead.
func parseHandleRef(ref string) (tpm2.TPMHandle, error) {
	if !hasPrefixFold(ref, handleRefPrefix) {
		return 0, fmt.Errorf("%w: %q: write TPM keys as handle:0x81XXXXXX (the tpm2 OpenSSL provider syntax), e.g. %s", ErrUnsupported, ref, exampleHandleRef)
	}
	s := strings.TrimSpace(ref[len(handleRefPrefix):])
	if s == "" {
		return 0, fmt.Errorf("%w: %q names no handle: write the persistent handle in hex, e.g. %s", ErrInvalidHandle, ref, exampleHandleRef)
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a number: write the persistent handle in hex, e.g. %s", ErrInvalidHandle, ref, exampleHandleRef)
	}
	if v < persistentFirst || v > persistentLast {
		return 0, fmt.Errorf("%w: 0x%08x is not a persistent handle: persistent keys live at 0x81000000-0x81FFFFFF, e.g. %s", ErrInvalidHandle, v, exampleHandleRef)
	}
	return tpm2.TPMHandle(v), nil
}

// signingAttributes are the object attributes of keys Generate creates: an
// unrestricted signing key that never leaves this TPM, usable with an empty
// password and exempt from dictionary-attack lockout.
var signingAttributes = tpm2.TPMAObject{
	FixedTPM:            true,
	FixedParent:         true,
	SensitiveDataOrigin: true,
	UserWithAuth:        true,
	NoDA:                true,
	SignEncrypt:         true,
}

// tpmTemplate returns the public template Generate uses for a key type:
// ECDSA P-256 with the scheme fixed to ECDSA/SHA-256, or RSA-2048 with a
// NULL scheme so that each signature chooses PKCS#1 v1.5 or PSS (the
// Mender auth request needs the first, TLS 1.3 the second).
func tpmTemplate(kt pki.KeyType) (tpm2.TPMTPublic, error) {
	switch kt {
	case pki.ECDSAP256:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: signingAttributes,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
				CurveID: tpm2.TPMECCNistP256,
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case pki.RSA2048:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: signingAttributes,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: key type %q cannot be created in a TPM: use %s (default) or %s", ErrUnsupported, kt, pki.ECDSAP256, pki.RSA2048)
}

// isOurs reports whether a public area was made from one of Generate's
// templates: same type, name algorithm, attributes, empty policy and the
// same parameters (curve or key size, scheme, no symmetric part). Only such
// objects are ever evicted; anything else at a handle is foreign. The key
// material itself (the unique field) is not compared.
func isOurs(pub *tpm2.TPMTPublic) bool {
	if pub.NameAlg != tpm2.TPMAlgSHA256 || pub.ObjectAttributes != signingAttributes || len(pub.AuthPolicy.Buffer) != 0 {
		return false
	}
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil || p.Symmetric.Algorithm != tpm2.TPMAlgNull || p.CurveID != tpm2.TPMECCNistP256 ||
			p.KDF.Scheme != tpm2.TPMAlgNull || p.Scheme.Scheme != tpm2.TPMAlgECDSA {
			return false
		}
		d, err := p.Scheme.Details.ECDSA()
		return err == nil && d.HashAlg == tpm2.TPMAlgSHA256
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		return err == nil && p.Symmetric.Algorithm == tpm2.TPMAlgNull && p.Scheme.Scheme == tpm2.TPMAlgNull &&
			p.KeyBits == 2048 && (p.Exponent == 0 || p.Exponent == 65537)
	}
	return false
}

// pssRule is how a TPM chooses the RSA-PSS salt length, found by the
// self-test: TPMs made to different versions of the specification differ.
type pssRule int

const (
	pssUnknown    pssRule = iota // not measured, or verifies only with an auto-detected salt
	pssEqualsHash                // salt as long as the hash: what crypto/tls requires
	pssMax                       // the largest salt the key size allows
)

// classifyPSS finds the salt rule of an RSA-PSS signature sig over digest
// (hashed with h). It fails when the signature does not verify at all.
func classifyPSS(pub *rsa.PublicKey, h crypto.Hash, digest, sig []byte) (pssRule, error) {
	if rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil {
		return pssEqualsHash, nil
	}
	if rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: maxPSSSalt(pub, h)}) == nil {
		return pssMax, nil
	}
	if rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil {
		return pssUnknown, nil
	}
	return pssUnknown, errors.New("the TPM's RSA-PSS signature does not verify with the key's public key")
}

func maxPSSSalt(pub *rsa.PublicKey, h crypto.Hash) int {
	return (pub.N.BitLen()-1+7)/8 - h.Size() - 2
}

// TPMKeyInfo describes a TPM-resident key for diagnostics.
type TPMKeyInfo struct {
	// Device is the TPM the key lives in.
	Device string
	// Handle is the persistent handle, e.g. 0x81000100.
	Handle uint32
	// KeyType is pki.ECDSAP256, or "rsa<bits>" for RSA keys.
	KeyType pki.KeyType
	// Ours is true when the key's public area matches the template
	// device-agent keygen uses (see Generate).
	Ours bool
	// Scheme is the key's own signing scheme, e.g. "ecdsa-sha256", or
	// "null" when each signature chooses it.
	Scheme string
	// PSSSalt says how the TPM chooses the RSA-PSS salt, found by the
	// self-test: "hash length", "maximum", "unknown", or "" for ECDSA keys
	// and RSA keys whose scheme excludes PSS.
	PSSSalt string
	// TLS is true when crypto/tls can use the key for TLS 1.2 and 1.3 client
	// authentication (ECDSA, or RSA-PSS with a hash-length salt).
	TLS bool
}

// TPMKeyInfo returns details of a TPM key; ok is false for a file key.
func (k *Key) TPMKeyInfo() (info TPMKeyInfo, ok bool) {
	s, ok := k.signer.(*tpmSigner)
	if !ok {
		return TPMKeyInfo{}, false
	}
	return s.info(), true
}

// SelfTest signs a random digest with the key and verifies the signature
// with the public key, for every signature kind the key makes (for RSA in a
// TPM: PKCS#1 v1.5 and PSS). Open already runs it for TPM keys; `device-agent
// check` runs it again.
func (k *Key) SelfTest(ctx context.Context) error {
	if k.closed.Load() {
		return fmt.Errorf("self-test %s: %w", k.ref, ErrClosed)
	}
	if s, ok := k.signer.(*tpmSigner); ok {
		rule, err := s.selfTest(ctx)
		if err == nil && rule != s.pss {
			err = fmt.Errorf("the TPM's RSA-PSS salt length changed from %s to %s since the key was opened", s.pss, rule)
		}
		if err != nil {
			return fmt.Errorf("self-test %s: %w", k.ref, err)
		}
		return nil
	}
	msg := make([]byte, 32)
	_, _ = rand.Read(msg) // crypto/rand.Read never fails
	sig, err := menderapi.Sign(k, msg)
	if err == nil {
		err = menderapi.Verify(k.Public(), msg, sig)
	}
	if err != nil {
		return fmt.Errorf("self-test %s: %w", k.ref, err)
	}
	return nil
}

// tpmSigner is a crypto.Signer whose private key is a persistent object in
// a TPM. Each signature is one TPM2_Sign on the persistent handle: no
// transient object is loaded.
type tpmSigner struct {
	tpm    *TPM
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    crypto.PublicKey
	kt     pki.KeyType
	ours   bool
	// scheme is the key's own scheme: TPMAlgNull (chosen per signature),
	// TPMAlgECDSA, TPMAlgRSASSA or TPMAlgRSAPSS, the latter three with SHA-256.
	scheme tpm2.TPMAlgID
	// pss is the RSA-PSS salt rule measured by selfTest; set once, before
	// the signer is shared.
	pss pssRule
}

var _ crypto.Signer = (*tpmSigner)(nil)

// Public implements crypto.Signer.
func (s *tpmSigner) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer: digest must be a SHA-256, SHA-384 or
// SHA-512 digest (only SHA-256 for keys whose scheme is fixed). ECDSA
// signatures are ASN.1 DER; RSA signatures are PKCS#1 v1.5, or PSS when opts
// is *rsa.PSSOptions whose salt length is rsa.PSSSaltLengthAuto or the
// length this TPM uses (see TPMKeyInfo.PSSSalt).
func (s *tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, hash, err := s.schemeFor(digest, opts)
	if err != nil {
		return nil, fmt.Errorf("sign with TPM key 0x%08x: %w", uint32(s.handle), err)
	}
	// crypto.Signer has no context; the transport bounds each command.
	return s.tpmSign(context.Background(), alg, hash, digest)
}

// schemeFor picks the TPM signature scheme and hash for a Sign call.
func (s *tpmSigner) schemeFor(digest []byte, opts crypto.SignerOpts) (tpm2.TPMAlgID, tpm2.TPMAlgID, error) {
	h := opts.HashFunc()
	var hashAlg tpm2.TPMAlgID
	switch h {
	case crypto.SHA256:
		hashAlg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		hashAlg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		hashAlg = tpm2.TPMAlgSHA512
	default:
		return 0, 0, fmt.Errorf("%w: hash %v: TPM keys sign SHA-256, SHA-384 or SHA-512 digests", ErrUnsupported, h)
	}
	if len(digest) != h.Size() {
		return 0, 0, fmt.Errorf("%w: the digest has %d bytes, but %v digests have %d", ErrUnsupported, len(digest), h, h.Size())
	}
	if s.scheme != tpm2.TPMAlgNull && h != crypto.SHA256 {
		return 0, 0, fmt.Errorf("%w: hash %v: the key's signing scheme is fixed to SHA-256", ErrUnsupported, h)
	}
	pub, isRSA := s.pub.(*rsa.PublicKey)
	if !isRSA {
		return tpm2.TPMAlgECDSA, hashAlg, nil
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	switch {
	case !isPSS && s.scheme == tpm2.TPMAlgRSAPSS:
		return 0, 0, fmt.Errorf("%w: the key's scheme is fixed to RSA-PSS, so it cannot make the PKCS#1 v1.5 signature asked for (Mender auth requests need one): create the key with device-agent keygen", ErrUnsupported)
	case !isPSS:
		return tpm2.TPMAlgRSASSA, hashAlg, nil
	case s.scheme == tpm2.TPMAlgRSASSA:
		return 0, 0, fmt.Errorf("%w: the key's scheme is fixed to RSA PKCS#1 v1.5, so it cannot make the RSA-PSS signature TLS asks for: use an ECDSA P-256 key (device-agent keygen --key-type ecdsa-p256)", ErrUnsupported)
	}
	want := pss.SaltLength
	if want == rsa.PSSSaltLengthEqualsHash {
		want = h.Size()
	}
	if want != rsa.PSSSaltLengthAuto && !s.saltMatches(pub, h, want) {
		return 0, 0, fmt.Errorf("%w: an RSA-PSS signature with a %d-byte salt was asked for (TLS requires the hash length), but this TPM makes RSA-PSS signatures with a salt of %s: use an ECDSA P-256 key (device-agent keygen --key-type ecdsa-p256)",
			ErrUnsupported, want, s.pss)
	}
	return tpm2.TPMAlgRSAPSS, hashAlg, nil
}

func (s *tpmSigner) saltMatches(pub *rsa.PublicKey, h crypto.Hash, n int) bool {
	switch s.pss {
	case pssEqualsHash:
		return n == h.Size()
	case pssMax:
		return n == maxPSSSalt(pub, h)
	}
	return false
}

// String names the rule for messages.
func (r pssRule) String() string {
	switch r {
	case pssEqualsHash:
		return "hash length"
	case pssMax:
		return "maximum"
	}
	return "unknown"
}

// tpmSign runs TPM2_Sign and encodes the signature as crypto/x509 and
// crypto/tls expect it.
func (s *tpmSigner) tpmSign(ctx context.Context, alg, hash tpm2.TPMAlgID, digest []byte) ([]byte, error) {
	var sig tpm2.TPMTSignature
	err := s.tpm.do(ctx, func(tp transport.TPM) error {
		rsp, err := tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: s.handle, Name: s.name, Auth: tpm2.PasswordAuth(nil)},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  alg,
				Details: tpm2.NewTPMUSigScheme(alg, &tpm2.TPMSSchemeHash{HashAlg: hash}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(tp)
		if err != nil {
			return err
		}
		sig = rsp.Signature
		return nil
	})
	if err != nil {
		return nil, s.tpm.explain(fmt.Sprintf("sign with TPM key 0x%08x", uint32(s.handle)), err)
	}
	var out []byte
	switch alg {
	case tpm2.TPMAlgECDSA:
		var e *tpm2.TPMSSignatureECC
		if e, err = sig.Signature.ECDSA(); err == nil {
			out, err = asn1.Marshal(struct{ R, S *big.Int }{
				new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)})
		}
	case tpm2.TPMAlgRSASSA:
		var r *tpm2.TPMSSignatureRSA
		if r, err = sig.Signature.RSASSA(); err == nil {
			out = r.Sig.Buffer
		}
	case tpm2.TPMAlgRSAPSS:
		var r *tpm2.TPMSSignatureRSA
		if r, err = sig.Signature.RSAPSS(); err == nil {
			out = r.Sig.Buffer
		}
	}
	if err != nil || len(out) == 0 {
		return nil, fmt.Errorf("sign with TPM key 0x%08x in TPM %s: unexpected signature (algorithm 0x%04x): %v", uint32(s.handle), s.tpm.name, uint16(sig.SigAlg), err)
	}
	return out, nil
}

// selfTest signs a random SHA-256 digest with every scheme the key allows
// and verifies each signature. For keys that make RSA-PSS signatures it
// returns the TPM's salt rule (pssUnknown otherwise).
func (s *tpmSigner) selfTest(ctx context.Context) (pssRule, error) {
	digest := make([]byte, crypto.SHA256.Size())
	_, _ = rand.Read(digest) // crypto/rand.Read never fails
	switch pub := s.pub.(type) {
	case *ecdsa.PublicKey:
		sig, err := s.tpmSign(ctx, tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA256, digest)
		if err != nil {
			return pssUnknown, err
		}
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			return pssUnknown, fmt.Errorf("self-test of TPM key 0x%08x: the TPM's ECDSA signature does not verify with the key's public key", uint32(s.handle))
		}
	case *rsa.PublicKey:
		if s.scheme != tpm2.TPMAlgRSAPSS {
			sig, err := s.tpmSign(ctx, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, digest)
			if err != nil {
				return pssUnknown, err
			}
			if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest, sig); err != nil {
				return pssUnknown, fmt.Errorf("self-test of TPM key 0x%08x: the TPM's PKCS#1 v1.5 signature does not verify with the key's public key: %w", uint32(s.handle), err)
			}
		}
		if s.scheme != tpm2.TPMAlgRSASSA {
			sig, err := s.tpmSign(ctx, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, digest)
			if err != nil {
				return pssUnknown, err
			}
			rule, err := classifyPSS(pub, crypto.SHA256, digest, sig)
			if err != nil {
				return pssUnknown, fmt.Errorf("self-test of TPM key 0x%08x: %w", uint32(s.handle), err)
			}
			return rule, nil
		}
	}
	return pssUnknown, nil
}

func (s *tpmSigner) info() TPMKeyInfo {
	info := TPMKeyInfo{Device: s.tpm.name, Handle: uint32(s.handle), KeyType: s.kt, Ours: s.ours}
	switch s.scheme {
	case tpm2.TPMAlgNull:
		info.Scheme = "null"
	case tpm2.TPMAlgECDSA:
		info.Scheme = "ecdsa-sha256"
	case tpm2.TPMAlgRSASSA:
		info.Scheme = "rsassa-sha256"
	case tpm2.TPMAlgRSAPSS:
		info.Scheme = "rsapss-sha256"
	}
	if _, isRSA := s.pub.(*rsa.PublicKey); isRSA {
		if s.scheme != tpm2.TPMAlgRSASSA {
			info.PSSSalt = s.pss.String()
		}
		info.TLS = s.scheme != tpm2.TPMAlgRSASSA && s.pss == pssEqualsHash
	} else {
		info.TLS = true
	}
	return info
}

// openTPMSigner opens the TPM key a "handle:" reference names and runs the
// self-test. The closer is the TPM when Open opened it (nil when the caller
// passed Options.TPM).
func openTPMSigner(ctx context.Context, ref string, opts Options) (crypto.Signer, io.Closer, error) {
	h, err := parseHandleRef(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("open key: %w", err)
	}
	t, closer := opts.TPM, io.Closer(nil)
	if t == nil {
		if t, err = OpenTPM(ctx, opts.TPMDevice, TPMOptions{Logger: opts.Logger}); err != nil {
			return nil, nil, fmt.Errorf("open key %s: %w", ref, err)
		}
		closer = t
	}
	s, err := loadTPMSigner(ctx, t, h)
	if err == nil {
		s.pss, err = s.selfTest(ctx)
	}
	if err == nil && opts.CertFile != "" && !s.info().TLS {
		err = fmt.Errorf("%w: TLS client authentication needs RSA-PSS signatures with a salt as long as the hash, but this key makes %s: use an ECDSA P-256 key (device-agent keygen --key-type ecdsa-p256), or use this key only for Security.AuthPrivateKey",
			ErrUnsupported, describePSS(s))
	}
	if err != nil {
		if closer != nil {
			_ = closer.Close()
		}
		return nil, nil, fmt.Errorf("open key %s: %w", ref, err)
	}
	return s, closer, nil
}

func describePSS(s *tpmSigner) string {
	if s.scheme == tpm2.TPMAlgRSASSA {
		return "only PKCS#1 v1.5 signatures (its scheme is fixed to RSASSA)"
	}
	return "RSA-PSS signatures with a salt of " + s.pss.String() + " length"
}

// loadTPMSigner reads the public area at a persistent handle and checks
// that it is a key this agent can sign with.
func loadTPMSigner(ctx context.Context, t *TPM, h tpm2.TPMHandle) (*tpmSigner, error) {
	var rp *tpm2.ReadPublicResponse
	err := t.do(ctx, func(tp transport.TPM) error {
		var err error
		rp, err = tpm2.ReadPublic{ObjectHandle: h}.Execute(tp)
		return err
	})
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, fmt.Errorf("%w: no key at handle 0x%08x in TPM %s: create one with device-agent keygen --key handle:0x%08x",
				ErrNotFound, uint32(h), t.name, uint32(h))
		}
		return nil, t.explain(fmt.Sprintf("read handle 0x%08x", uint32(h)), err)
	}
	pub, err := rp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("read handle 0x%08x in TPM %s: %w", uint32(h), t.name, err)
	}
	s := &tpmSigner{tpm: t, handle: h, name: rp.Name, ours: isOurs(pub)}
	if err := s.setPublic(pub); err != nil {
		return nil, fmt.Errorf("handle 0x%08x in TPM %s: %w", uint32(h), t.name, err)
	}
	return s, nil
}

// setPublic checks a public area and fills in the key, type and scheme.
func (s *tpmSigner) setPublic(pub *tpm2.TPMTPublic) error {
	a := pub.ObjectAttributes
	switch {
	case !a.SignEncrypt:
		return fmt.Errorf("%w: the object is not a signing key (its sign attribute is clear): point the key reference at a signing key, e.g. one made by device-agent keygen", ErrUnsupported)
	case a.Restricted:
		return fmt.Errorf("%w: the key is a restricted (attestation) key, which signs only TPM-made data, not TLS handshakes: create a key with device-agent keygen", ErrUnsupported)
	case !a.UserWithAuth:
		return fmt.Errorf("%w: the key can only be used with a policy session; this agent signs with the key's (empty) password: create a key with device-agent keygen", ErrUnsupported)
	}
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return fmt.Errorf("%w: ECC key without parameters: %w", ErrUnsupported, err)
		}
		if p.CurveID != tpm2.TPMECCNistP256 {
			return fmt.Errorf("%w: ECC curve 0x%04x: TPM keys must use NIST P-256", ErrUnsupported, uint16(p.CurveID))
		}
		if s.scheme, err = schemeOf(p.Scheme.Scheme, p.Scheme.Details, tpm2.TPMAlgECDSA); err != nil {
			return err
		}
		point, err := pub.Unique.ECC()
		if err != nil {
			return fmt.Errorf("%w: ECC key without a public point: %w", ErrUnsupported, err)
		}
		enc := make([]byte, 65)
		enc[0] = 4
		if len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
			return fmt.Errorf("%w: the ECC public point is not a P-256 point", ErrUnsupported)
		}
		copy(enc[33-len(point.X.Buffer):33], point.X.Buffer)
		copy(enc[65-len(point.Y.Buffer):], point.Y.Buffer)
		ek, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), enc)
		if err != nil {
			return fmt.Errorf("%w: the ECC public point is invalid: %w", ErrUnsupported, err)
		}
		s.pub, s.kt = ek, pki.ECDSAP256
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return fmt.Errorf("%w: RSA key without parameters: %w", ErrUnsupported, err)
		}
		if int(p.KeyBits) < MinRSABits {
			return fmt.Errorf("%w: RSA key has %d bits, at least %d are required: create a new key with device-agent keygen", ErrWeakKey, p.KeyBits, MinRSABits)
		}
		if s.scheme, err = schemeOf(p.Scheme.Scheme, p.Scheme.Details, tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS); err != nil {
			return err
		}
		n, err := pub.Unique.RSA()
		if err != nil || len(n.Buffer) == 0 {
			return fmt.Errorf("%w: RSA key without a modulus", ErrUnsupported)
		}
		e := int(p.Exponent)
		if e == 0 {
			e = 65537
		}
		rk := &rsa.PublicKey{N: new(big.Int).SetBytes(n.Buffer), E: e}
		if rk.N.BitLen() < MinRSABits {
			return fmt.Errorf("%w: RSA modulus has %d bits, at least %d are required", ErrWeakKey, rk.N.BitLen(), MinRSABits)
		}
		s.pub, s.kt = rk, pki.KeyType("rsa"+strconv.Itoa(rk.N.BitLen()))
	default:
		return fmt.Errorf("%w: TPM object type 0x%04x: TPM keys must be ECC P-256 or RSA", ErrUnsupported, uint16(pub.Type))
	}
	return nil
}

// schemeOf checks a key's own signing scheme: NULL, or one of allowed with
// SHA-256.
func schemeOf(scheme tpm2.TPMAlgID, details tpm2.TPMUAsymScheme, allowed ...tpm2.TPMAlgID) (tpm2.TPMAlgID, error) {
	if scheme == tpm2.TPMAlgNull {
		return scheme, nil
	}
	for _, a := range allowed {
		if scheme != a {
			continue
		}
		var hash tpm2.TPMIAlgHash
		switch a {
		case tpm2.TPMAlgECDSA:
			if d, err := details.ECDSA(); err == nil {
				hash = d.HashAlg
			}
		case tpm2.TPMAlgRSASSA:
			if d, err := details.RSASSA(); err == nil {
				hash = d.HashAlg
			}
		case tpm2.TPMAlgRSAPSS:
			if d, err := details.RSAPSS(); err == nil {
				hash = d.HashAlg
			}
		}
		if hash != tpm2.TPMAlgSHA256 {
			return 0, fmt.Errorf("%w: the key's signing scheme is fixed to hash algorithm 0x%04x; this agent needs SHA-256 or a NULL scheme: create a key with device-agent keygen", ErrUnsupported, uint16(hash))
		}
		return scheme, nil
	}
	return 0, fmt.Errorf("%w: signing scheme 0x%04x: this agent signs with ECDSA, RSASSA or RSA-PSS (or a NULL scheme): create a key with device-agent keygen", ErrUnsupported, uint16(scheme))
}
