package fakemender

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// JWT issuers (§3, §4.1).
const (
	IssuerDevice = "Mender"
	IssuerUser   = "mender.useradm"
)

// NotBefore is the nbf claim of every Mender device token: Go's zero time in
// Unix seconds (§3, §11.20).
const NotBefore int64 = -62135596800

// errToken is the reason a token fails verification; it is logged, never
// sent (the client only sees 401).
var errToken = errors.New("invalid token")

// signingKey is the server's JWT key. It is set when the Server is built
// and never replaced, so it is read without the server's lock.
type signingKey struct {
	alg    string // AlgEdDSA or AlgRS256
	signer crypto.Signer
	// verified caches the claims of tokens whose signature checked out,
	// by the SHA-256 of the whole token: a fleet sends the same token on
	// every poll, and the signature check (about 60 us for Ed25519, more
	// for RSA) was the backend's largest cost per poll. Only the signature
	// is cached; expiry and the token and device records are checked on
	// every request by the callers.
	verified verifiedCache
}

// maxVerifiedTokens bounds the verified-token cache: about 100 bytes per
// entry, so 12 MiB at most; when full it is emptied and refills.
const maxVerifiedTokens = 1 << 17

// verifiedCache maps token hashes to their parsed claims, which callers
// only read.
type verifiedCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*parsedClaims
}

func (v *verifiedCache) get(h [sha256.Size]byte) *parsedClaims {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m[h]
}

func (v *verifiedCache) put(h [sha256.Size]byte, c *parsedClaims) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil || len(v.m) >= maxVerifiedTokens {
		v.m = make(map[[sha256.Size]byte]*parsedClaims)
	}
	v.m[h] = c
}

func generateSigningKey(alg string) (*signingKey, error) {
	switch alg {
	case AlgEdDSA:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate Ed25519 JWT key: %w", err)
		}
		return &signingKey{alg: alg, signer: priv}, nil
	case AlgRS256:
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("generate RSA-2048 JWT key: %w", err)
		}
		return &signingKey{alg: alg, signer: priv}, nil
	}
	return nil, fmt.Errorf("JWT key algorithm %q: %w", alg, ErrInvalid)
}

// parseSigningKey loads a PKCS#8 DER key and derives its algorithm.
func parseSigningKey(der []byte) (*signingKey, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse JWT signing key: %w", err)
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return &signingKey{alg: AlgEdDSA, signer: k}, nil
	case *rsa.PrivateKey:
		return &signingKey{alg: AlgRS256, signer: k}, nil
	}
	return nil, fmt.Errorf("JWT signing key type %T: %w: want Ed25519 or RSA", k, ErrInvalid)
}

func (k *signingKey) marshal() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	if err != nil {
		return nil, fmt.Errorf("marshal JWT signing key: %w", err)
	}
	return der, nil
}

// sign returns header.claims.signature for claims.
func (k *signingKey) sign(claims any) (string, error) {
	hdr, err := json.Marshal(jwtHeader{Alg: k.alg, Typ: "JWT"})
	if err != nil {
		return "", fmt.Errorf("encode JWT header: %w", err)
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encode JWT claims: %w", err)
	}
	input := b64(hdr) + "." + b64(body)
	var sig []byte
	switch k.alg {
	case AlgEdDSA:
		sig, err = k.signer.Sign(rand.Reader, []byte(input), crypto.Hash(0))
	default:
		d := sha256.Sum256([]byte(input))
		sig, err = k.signer.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return "", fmt.Errorf("sign JWT: %w", err)
	}
	return input + "." + b64(sig), nil
}

// verify checks the token's shape, algorithm and signature and decodes its
// claims. It does not look at the claims' meaning.
// verify checks tok's signature and returns its claims, which the caller
// must not modify (they may be shared with later calls for the same
// token).
func (k *signingKey) verify(tok string) (*parsedClaims, error) {
	h := sha256.Sum256([]byte(tok))
	if c := k.verified.get(h); c != nil {
		return c, nil
	}
	c, err := k.verifySignature(tok)
	if err != nil {
		return nil, err
	}
	k.verified.put(h, c)
	return c, nil
}

// verifySignature parses tok and checks its signature.
func (k *signingKey) verifySignature(tok string) (*parsedClaims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want 3 dot-separated parts, got %d", errToken, len(parts))
	}
	hdrJSON, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header is not base64url", errToken)
	}
	var hdr jwtHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, fmt.Errorf("%w: header is not JSON", errToken)
	}
	if hdr.Alg != k.alg {
		return nil, fmt.Errorf("%w: alg %q, want %q", errToken, hdr.Alg, k.alg)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url", errToken)
	}
	input := []byte(parts[0] + "." + parts[1])
	switch pub := k.signer.Public().(type) {
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, input, sig) {
			return nil, fmt.Errorf("%w: bad signature", errToken)
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(input)
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, d[:], sig) != nil {
			return nil, fmt.Errorf("%w: bad signature", errToken)
		}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: claims are not base64url", errToken)
	}
	var c parsedClaims
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: claims are not JSON: %v", errToken, err)
	}
	return &c, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

type jwtHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ"`
}

// Addon is one element of the mender.addons claim.
type Addon struct {
	Name    string `json:"name"`
	Enabled bool   `json:"enabled"`
}

// DeviceClaims are the claims of a device JWT, in deviceauth's order (§3).
type DeviceClaims struct {
	ID       string  `json:"jti"`
	Subject  string  `json:"sub"`
	Issuer   string  `json:"iss"`
	Expires  int64   `json:"exp"`
	IssuedAt int64   `json:"iat"`
	NotBef   int64   `json:"nbf"`
	Device   bool    `json:"mender.device"`
	Plan     string  `json:"mender.plan"`
	Addons   []Addon `json:"mender.addons"`
	Trial    bool    `json:"mender.trial"`
}

// ossAddons are the addons an OSS server puts in every token.
func ossAddons() []Addon {
	return []Addon{{"configure", true}, {"troubleshoot", true}, {"monitor", true}}
}

// userClaims are the claims of a management (useradm) JWT.
type userClaims struct {
	ID       string `json:"jti"`
	Subject  string `json:"sub"`
	Issuer   string `json:"iss"`
	Expires  int64  `json:"exp,omitempty"`
	IssuedAt int64  `json:"iat"`
	User     bool   `json:"mender.user"`
	Plan     string `json:"mender.plan"`
	Trial    bool   `json:"mender.trial"`
}

// parsedClaims is the union used when verifying; pointers tell absent from zero.
type parsedClaims struct {
	ID      string `json:"jti"`
	Subject string `json:"sub"`
	Issuer  string `json:"iss"`
	Expires *int64 `json:"exp"`
	Device  *bool  `json:"mender.device"`
	User    *bool  `json:"mender.user"`
}

// tokenRecord is deviceauth's token document, keyed by jti (= auth set id).
type tokenRecord struct {
	DeviceID string    `json:"device_id"`
	Expires  time.Time `json:"expires"`
}

// issueDeviceTokenLocked signs a device token for auth set aid of device
// devID and stores its record. Called with s.mu held.
func (s *Server) issueDeviceTokenLocked(devID, aid string) (string, error) {
	now := s.now()
	exp := now.Add(s.opts.TokenLifetime)
	tok, err := s.key.sign(DeviceClaims{
		ID: aid, Subject: devID, Issuer: IssuerDevice,
		Expires: exp.Unix(), IssuedAt: now.Unix(), NotBef: NotBefore,
		Device: true, Plan: "enterprise", Addons: ossAddons(), Trial: false,
	})
	if err != nil {
		return "", err
	}
	s.tokens[aid] = tokenRecord{DeviceID: devID, Expires: exp}
	return tok, nil
}

// bearer extracts the token as Mender's identity middleware does: the
// Authorization header split on single spaces into exactly two parts with a
// case-insensitive "Bearer" scheme, or else the JWT cookie when the header is
// absent.
func bearer(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if c, err := r.Cookie("JWT"); err == nil && c.Value != "" {
			return c.Value, nil
		}
		return "", fmt.Errorf("%w: Authorization header missing", errToken)
	}
	parts := strings.Split(h, " ")
	if len(parts) != 2 || !strings.EqualFold(parts[0], "Bearer") || parts[1] == "" {
		return "", fmt.Errorf("%w: Authorization header is not \"Bearer <token>\"", errToken)
	}
	return parts[1], nil
}

// unauthorized answers 401 with the WWW-Authenticate header of Mender's
// identity middleware.
func unauthorized(w http.ResponseWriter, rc *reqCtx) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="ManagementJWT"`)
	menderapi.WriteError(w, http.StatusUnauthorized, "unauthorized", rc.id)
}

// checkDeviceToken verifies a device JWT in deviceauth's order (§3):
// signature; iss, jti and sub set; exp; mender.device; token record; auth
// set accepted; device exists. Expired tokens get 401, never 403 (§11.19).
func (s *Server) checkDeviceToken(w http.ResponseWriter, r *http.Request, rc *reqCtx) bool {
	devID, err := s.verifyDeviceToken(r)
	if err != nil {
		s.log.Debug("device token refused", "reason", err, "path", r.URL.Path, "request_id", rc.id)
		unauthorized(w, rc)
		return false
	}
	rc.devID = devID
	return true
}

func (s *Server) verifyDeviceToken(r *http.Request) (string, error) {
	tok, err := bearer(r)
	if err != nil {
		return "", err
	}
	c, err := s.key.verify(tok) // outside the lock: s.key never changes
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	switch {
	case c.Issuer == "" || c.ID == "" || c.Subject == "":
		return "", fmt.Errorf("%w: iss, jti or sub empty", errToken)
	case c.Expires == nil || now.Unix() >= *c.Expires:
		return "", fmt.Errorf("%w: expired", errToken)
	case c.Device == nil || !*c.Device:
		return "", fmt.Errorf("%w: not a device token", errToken)
	}
	rec, ok := s.tokens[c.ID]
	if !ok || rec.DeviceID != c.Subject {
		return "", fmt.Errorf("%w: no token record for jti %s", errToken, c.ID)
	}
	d, ok := s.devices[c.Subject]
	if !ok {
		return "", fmt.Errorf("%w: device %s gone", errToken, c.Subject)
	}
	as := d.authSet(c.ID)
	if as == nil || as.Status != menderapi.DevStatusAccepted {
		return "", fmt.Errorf("%w: auth set %s not accepted", errToken, c.ID)
	}
	d.CheckInTime = &now
	return d.ID, nil
}

// checkMgmtToken verifies a management JWT: our signature, issuer
// mender.useradm, mender.user set, no mender.device, not expired.
func (s *Server) checkMgmtToken(w http.ResponseWriter, r *http.Request, rc *reqCtx) bool {
	err := s.verifyMgmtToken(r)
	if err != nil {
		s.log.Debug("management token refused", "reason", err, "path", r.URL.Path, "request_id", rc.id)
		unauthorized(w, rc)
		return false
	}
	return true
}

func (s *Server) verifyMgmtToken(r *http.Request) error {
	tok, err := bearer(r)
	if err != nil {
		return err
	}
	c, err := s.key.verify(tok) // outside the lock: s.key never changes
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.Issuer != IssuerUser || c.Subject == "" || c.ID == "":
		return fmt.Errorf("%w: not a management token", errToken)
	case c.User == nil || !*c.User || c.Device != nil:
		return fmt.Errorf("%w: not a user token", errToken)
	case c.Expires != nil && s.now().Unix() >= *c.Expires:
		return fmt.Errorf("%w: expired", errToken)
	}
	return nil
}

// issueUserTokenLocked signs a management token; noExpiry omits exp.
// Called with s.mu held.
func (s *Server) issueUserTokenLocked(email string, noExpiry bool) (string, error) {
	now := s.now()
	c := userClaims{
		ID: newUUID(), Subject: userID(email), Issuer: IssuerUser, IssuedAt: now.Unix(),
		User: true, Plan: "enterprise",
	}
	if !noExpiry {
		c.Expires = now.Add(s.opts.TokenLifetime).Unix()
	}
	return s.key.sign(c)
}

// userID derives a stable UUID-shaped id from the email.
func userID(email string) string {
	sum := sha256.Sum256([]byte(email))
	return formatUUID([16]byte(sum[:16]))
}
