package menderapi

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Errors returned by verification. Callers branch on them with errors.Is.
var (
	// ErrBadSignature means the signature does not verify over the body with
	// the given key (deviceauth answers 401 "signature verification failed").
	ErrBadSignature = errors.New("signature verification failed")
	// ErrMissingSignature means the X-MEN-Signature header is empty.
	ErrMissingSignature = errors.New("missing request signature header")
	// ErrUnsupportedKey means the key is not RSA, ECDSA or Ed25519.
	ErrUnsupportedKey = errors.New("unsupported key type")
	// ErrBadRequest wraps every malformed auth request (deviceauth answers 400).
	ErrBadRequest = errors.New("invalid auth request")
)

func errMissing(field string) error { return fmt.Errorf("missing field %q", field) }

// SignerOpts returns the options that make crypto.SignMessage produce the
// signature deviceauth verifies for pub: SHA-256 for RSA (PKCS#1 v1.5) and ECDSA
// (ASN.1 DER), and no pre-hash (pure Ed25519) for Ed25519.
func SignerOpts(pub crypto.PublicKey) (crypto.SignerOpts, error) {
	switch pub.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey:
		return crypto.SHA256, nil
	case ed25519.PublicKey:
		return crypto.Hash(0), nil
	}
	return nil, fmt.Errorf("%w %T", ErrUnsupportedKey, pub)
}

// Sign signs body with signer exactly as Mender clients do and returns the
// standard-base64 value for the X-MEN-Signature header. The signature covers
// the exact bytes given; the caller must send those bytes unchanged.
func Sign(signer crypto.Signer, body []byte) (string, error) {
	opts, err := SignerOpts(signer.Public())
	if err != nil {
		return "", err
	}
	sig, err := crypto.SignMessage(signer, rand.Reader, body, opts)
	if err != nil {
		return "", fmt.Errorf("sign auth request: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// Verify checks a standard-base64 X-MEN-Signature over body with pub, as
// deviceauth does: RSA PKCS#1 v1.5 over SHA-256 (PSS is rejected), ECDSA ASN.1
// DER over SHA-256 (raw r‖s is rejected), pure Ed25519 over the body.
func Verify(pub crypto.PublicKey, body []byte, sigB64 string) error {
	if sigB64 == "" {
		return ErrMissingSignature
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil {
		return fmt.Errorf("%w: signature is not standard base64", ErrBadSignature)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		d := sha256.Sum256(body)
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) != nil {
			return ErrBadSignature
		}
	case *ecdsa.PublicKey:
		d := sha256.Sum256(body)
		if !ecdsa.VerifyASN1(k, d[:], sig) {
			return ErrBadSignature
		}
	case ed25519.PublicKey:
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(k, body, sig) {
			return ErrBadSignature
		}
	default:
		return fmt.Errorf("%w %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// MarshalPublicKeyPEM encodes pub as a PKIX "PUBLIC KEY" PEM block, the only
// form deviceauth accepts.
func MarshalPublicKeyPEM(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// ParsePublicKeyPEM parses a PKIX "PUBLIC KEY" PEM block holding an RSA, ECDSA
// or Ed25519 key. Any other PEM type (notably PKCS#1 "RSA PUBLIC KEY") is
// rejected, as deviceauth rejects it.
func ParsePublicKeyPEM(s string) (crypto.PublicKey, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		return nil, fmt.Errorf("%w: cannot decode public key: no PEM block", ErrBadRequest)
	}
	if blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%w: cannot decode public key: PEM type %q, want \"PUBLIC KEY\"", ErrBadRequest, blk.Type)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot decode public key: %v", ErrBadRequest, err)
	}
	if _, err := SignerOpts(pub); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return pub, nil
}

// PublicKeysEqual reports whether a and b are the same key (compared as
// parsed keys, never as PEM text).
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// Fingerprint returns "sha256:" and the first 16 hex digits of the SHA-256 of
// the key's PKIX DER encoding: a safe name for a key in logs.
func Fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "sha256:unknown"
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// TokenFingerprint returns a short, non-reversible name for a secret string
// such as a JWT or tenant token, for logs.
func TokenFingerprint(tok string) string {
	if tok == "" {
		return "none"
	}
	sum := sha256.Sum256([]byte(tok))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// BuildAuthRequest returns the exact auth request body bytes of a Mender 3.x
// client, which sends no tier: id_data (the compact identity JSON as a
// string), tenant_token and pubkey, encoded like the Mender 3.x Go client
// with json.Encoder (a trailing newline included). The device agent sends
// [BuildAuthRequestTier]'s layout instead. Sign these bytes and send them
// unchanged.
func BuildAuthRequest(idData string, pub crypto.PublicKey, tenantToken string) ([]byte, error) {
	pemKey, err := MarshalPublicKeyPEM(pub)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if err := enc.Encode(AuthRequest{IDData: idData, TenantToken: tenantToken, PubKey: pemKey}); err != nil {
		return nil, fmt.Errorf("encode auth request: %w", err)
	}
	return buf.Bytes(), nil
}

// authRequest51 is the body of the Mender 5.1 C++ client: keys sorted,
// tenant_token left out when empty, tier always present.
type authRequest51 struct {
	IDData      string `json:"id_data"`
	PubKey      string `json:"pubkey"`
	TenantToken string `json:"tenant_token,omitempty"`
	Tier        string `json:"tier"`
}

// BuildAuthRequestTier returns the exact auth request body bytes that Mender
// 5.1 sends (recorded in testdata/mender-5.1-auth-requests): the keys
// id_data, pubkey, tenant_token and tier in that (sorted) order, compact,
// without a trailing newline, and without tenant_token when it is "". tier
// must be TierStandard, TierMicro or TierSystem. Strings are escaped as the
// C++ client's JSON library escapes them: no HTML escaping of <, > and &,
// short forms for \b \f \n \r \t, \u00xx for other control characters; only
// U+2028 and U+2029 differ (escaped here, raw there). Sign these bytes and
// send them unchanged.
func BuildAuthRequestTier(idData string, pub crypto.PublicKey, tenantToken, tier string) ([]byte, error) {
	if !ValidTier(tier) {
		return nil, fmt.Errorf("device tier %q: want %s, %s or %s", tier, TierStandard, TierMicro, TierSystem)
	}
	pemKey, err := MarshalPublicKeyPEM(pub)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(authRequest51{IDData: idData, PubKey: pemKey, TenantToken: tenantToken, Tier: tier}); err != nil {
		return nil, fmt.Errorf("encode auth request: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// ParsedAuthRequest is an auth request that passed validation.
type ParsedAuthRequest struct {
	AuthRequest
	// Identity is id_data decoded into an object.
	Identity map[string]any
	// CanonicalIDData is id_data re-encoded the way deviceauth does (Go
	// json.Marshal of a map: sorted keys, compact).
	CanonicalIDData string
	// IdentityHash is the hex SHA-256 of CanonicalIDData, deviceauth's device key.
	IdentityHash string
	// Key is the parsed pubkey.
	Key crypto.PublicKey
	// NormalizedPubKey is the pubkey re-serialised as PKIX PEM.
	NormalizedPubKey string
}

// ParseAuthRequest decodes and validates an auth request body in deviceauth's
// order (§2.2): JSON, id_data present, pubkey present and parsable, id_data a
// JSON object. Every failure wraps ErrBadRequest.
func ParseAuthRequest(body []byte) (*ParsedAuthRequest, error) {
	var req AuthRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("%w: failed to decode auth request: %v", ErrBadRequest, err)
	}
	if req.IDData == "" {
		return nil, fmt.Errorf("%w: id_data must be provided", ErrBadRequest)
	}
	if req.PubKey == "" {
		return nil, fmt.Errorf("%w: pubkey must be provided", ErrBadRequest)
	}
	key, err := ParsePublicKeyPEM(req.PubKey)
	if err != nil {
		return nil, err
	}
	norm, err := MarshalPublicKeyPEM(key)
	if err != nil {
		return nil, err
	}
	ident, canon, hash, err := CanonicalIdentity(req.IDData)
	if err != nil {
		return nil, err
	}
	return &ParsedAuthRequest{AuthRequest: req, Identity: ident, CanonicalIDData: canon,
		IdentityHash: hash, Key: key, NormalizedPubKey: norm}, nil
}

// VerifyAuthRequest parses body and verifies sigB64 over the raw bytes with
// the request's own pubkey. A bad or missing signature wraps ErrBadSignature
// or is ErrMissingSignature; a malformed body wraps ErrBadRequest.
func VerifyAuthRequest(body []byte, sigB64 string) (*ParsedAuthRequest, error) {
	req, err := ParseAuthRequest(body)
	if err != nil {
		return nil, err
	}
	if err := Verify(req.Key, body, sigB64); err != nil {
		return nil, err
	}
	return req, nil
}

// CanonicalIdentity decodes id_data (a JSON object in a string) and returns
// the object, its canonical encoding (Go json.Marshal of the map, as deviceauth
// does) and the hex SHA-256 of that encoding.
func CanonicalIdentity(idData string) (map[string]any, string, string, error) {
	var m map[string]any
	if err := json.Unmarshal([]byte(idData), &m); err != nil || m == nil {
		return nil, "", "", fmt.Errorf("%w: id_data must be a JSON object", ErrBadRequest)
	}
	return m, canonicalMap(m), hashString(canonicalMap(m)), nil
}

// CanonicalIdentityObject is CanonicalIdentity for an identity that is
// already an object (the preauthorization API's identity_data).
func CanonicalIdentityObject(m map[string]any) (string, string) {
	c := canonicalMap(m)
	return c, hashString(c)
}

func canonicalMap(m map[string]any) string {
	b, err := json.Marshal(m)
	if err != nil { // unreachable for values produced by json.Unmarshal
		return ""
	}
	return string(b)
}

func hashString(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Attributes are key=value attributes as identity and inventory scripts
// produce them: one value encodes as a JSON string, several as an array.
type Attributes map[string][]string

// JSONValue returns the value of key as Mender encodes it: a string for one
// value, an array of strings for several.
func (a Attributes) JSONValue(key string) any {
	v := a[key]
	if len(v) == 1 {
		return v[0]
	}
	return v
}

// IdentityJSON returns the compact id_data string for a: keys sorted, one value
// as a string, repeated values as an array.
func (a Attributes) IdentityJSON() string {
	m := make(map[string]any, len(a))
	for k := range a {
		m[k] = a.JSONValue(k)
	}
	return canonicalMap(m)
}

// ErrorBody is the JSON error body every Mender service sends.
type ErrorBody struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// DecodeError reads a Mender error body; it returns the raw text (trimmed,
// at most 200 bytes) when the body is not the JSON error shape.
func DecodeError(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 4096))
	var e ErrorBody
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	b = bytes.TrimSpace(b)
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}

// WriteError writes a Mender JSON error body with status, and the request id
// in both the body and the X-MEN-RequestID header.
func WriteError(w http.ResponseWriter, status int, msg, requestID string) {
	if requestID != "" {
		w.Header().Set(HeaderRequestID, requestID)
	}
	w.Header().Set(HeaderContentType, ContentTypeJSON)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: msg, RequestID: requestID})
}
