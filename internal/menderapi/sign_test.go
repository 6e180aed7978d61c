package menderapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// recorded holds the auth requests recorded from the Mender 3.5 Go client,
// shared by the tests of several packages (see its README.md).
const recorded = "../../testdata/mender-3.5-auth-requests"

type recordedRequest struct {
	name string
	body []byte
	sig  string
	cert *x509.Certificate
}

func loadRecorded(t *testing.T) []recordedRequest {
	t.Helper()
	var out []recordedRequest
	for _, name := range []string{"ecdsa-p256", "rsa2048", "ed25519"} {
		dir := filepath.Join(recorded, name)
		body, err := os.ReadFile(filepath.Join(dir, "body.bin"))
		require.NoError(t, err, "the recorded Mender 3.5 requests live in the repository's top-level testdata/")
		sig, err := os.ReadFile(filepath.Join(dir, "x-men-signature.txt"))
		require.NoError(t, err)
		certPEM, err := os.ReadFile(filepath.Join(dir, "client.crt"))
		require.NoError(t, err)
		blk, _ := pem.Decode(certPEM)
		require.NotNil(t, blk)
		cert, err := x509.ParseCertificate(blk.Bytes)
		require.NoError(t, err)
		out = append(out, recordedRequest{name, body, strings.TrimSpace(string(sig)), cert})
	}
	return out
}

// The requests recorded from Mender's own Go client verify, with the request's
// own key and with the client certificate's key, and fail after any one byte
// of the body changes.
func TestVerifyRecordedMender35Requests(t *testing.T) {
	for _, rec := range loadRecorded(t) {
		t.Run(rec.name, func(t *testing.T) {
			req, err := VerifyAuthRequest(rec.body, rec.sig)
			require.NoError(t, err)
			assert.True(t, PublicKeysEqual(req.Key, rec.cert.PublicKey), "auth pubkey is the certificate's key")
			assert.NoError(t, Verify(rec.cert.PublicKey, rec.body, rec.sig))
			assert.Equal(t, `{"mac":"02:00:00:00:00:01"}`, req.CanonicalIDData)
			assert.Equal(t, byte('\n'), rec.body[len(rec.body)-1], "Go's json.Encoder ends the body with a newline")

			for _, pos := range []int{0, 5, len(rec.body) / 2, len(rec.body) - 2, len(rec.body) - 1} {
				mut := append([]byte(nil), rec.body...)
				mut[pos] ^= 0x01
				assert.ErrorIs(t, Verify(rec.cert.PublicKey, mut, rec.sig), ErrBadSignature, "byte %d changed", pos)
			}
		})
	}
}

func genKeys(t *testing.T) map[string]crypto.Signer {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	e384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	_, edk, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return map[string]crypto.Signer{"rsa2048": rk, "ecdsa-p256": ek, "ecdsa-p384": e384, "ed25519": edk}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	for name, key := range genKeys(t) {
		t.Run(name, func(t *testing.T) {
			body, err := BuildAuthRequest(Attributes{"mac": {"02:00:00:00:00:07"}}.IdentityJSON(), key.Public(), "tok")
			require.NoError(t, err)
			sig, err := Sign(key, body)
			require.NoError(t, err)
			req, err := VerifyAuthRequest(body, sig)
			require.NoError(t, err)
			assert.Equal(t, "tok", req.TenantToken)
			assert.True(t, PublicKeysEqual(key.Public(), req.Key))

			// A re-serialised body (same JSON, different bytes) must not verify (§11.1).
			reser := []byte(strings.TrimSuffix(string(body), "\n"))
			assert.ErrorIs(t, Verify(key.Public(), reser, sig), ErrBadSignature)
			// Another key does not verify.
			other := genKeys(t)[name]
			assert.ErrorIs(t, Verify(other.Public(), body, sig), ErrBadSignature)
		})
	}
}

// The §11 hazards: each naive encoding is rejected exactly as deviceauth does.
func TestVerifyRejectsInteropHazards(t *testing.T) {
	keys := genKeys(t)
	body, err := BuildAuthRequest(`{"mac":"02:00:00:00:00:01"}`, keys["ecdsa-p256"].Public(), "")
	require.NoError(t, err)
	digest := sha256.Sum256(body)

	ek := keys["ecdsa-p256"].(*ecdsa.PrivateKey)
	der, err := ecdsa.SignASN1(rand.Reader, ek, digest[:])
	require.NoError(t, err)
	var rs struct{ R, S *big.Int }
	_, err = asn1.Unmarshal(der, &rs)
	require.NoError(t, err)
	raw := append(rs.R.FillBytes(make([]byte, 32)), rs.S.FillBytes(make([]byte, 32))...)

	rk := keys["rsa2048"].(*rsa.PrivateKey)
	pss, err := rsa.SignPSS(rand.Reader, rk, crypto.SHA256, digest[:], nil)
	require.NoError(t, err)
	pkcs, err := rsa.SignPKCS1v15(rand.Reader, rk, crypto.SHA256, digest[:])
	require.NoError(t, err)

	edk := keys["ed25519"].(ed25519.PrivateKey)
	edOverHash := ed25519.Sign(edk, digest[:])
	edph, err := edk.Sign(rand.Reader, digest[:], &ed25519.Options{Hash: crypto.SHA512})
	if err != nil { // Ed25519ph needs a SHA-512 digest
		h := crypto.SHA512.New()
		h.Write(body)
		edph, err = edk.Sign(rand.Reader, h.Sum(nil), &ed25519.Options{Hash: crypto.SHA512})
	}
	require.NoError(t, err)
	edGood := ed25519.Sign(edk, body)

	tests := []struct {
		name string
		pub  crypto.PublicKey
		sig  string
		want error
	}{
		{"ecdsa DER verifies", ek.Public(), base64.StdEncoding.EncodeToString(der), nil},
		{"ecdsa raw r||s", ek.Public(), base64.StdEncoding.EncodeToString(raw), ErrBadSignature},
		{"rsa pkcs1v15 verifies", rk.Public(), base64.StdEncoding.EncodeToString(pkcs), nil},
		{"rsa PSS", rk.Public(), base64.StdEncoding.EncodeToString(pss), ErrBadSignature},
		{"ed25519 pure verifies", edk.Public(), base64.StdEncoding.EncodeToString(edGood), nil},
		{"ed25519 over sha256", edk.Public(), base64.StdEncoding.EncodeToString(edOverHash), ErrBadSignature},
		{"ed25519ph", edk.Public(), base64.StdEncoding.EncodeToString(edph), ErrBadSignature},
		{"url-safe base64", ek.Public(), urlSafeVariant(t, ek, digest[:]), ErrBadSignature},
		{"wrapped std base64 verifies", ek.Public(), wrap(base64.StdEncoding.EncodeToString(der)), nil},
		{"empty signature", ek.Public(), "", ErrMissingSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.pub, body, tt.sig)
			if tt.want == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tt.want)
			}
		})
	}
}

// urlSafeVariant signs until the standard encoding contains '+' or '/', and
// returns the URL-safe encoding of that signature.
func urlSafeVariant(t *testing.T, k *ecdsa.PrivateKey, digest []byte) string {
	t.Helper()
	for range 1000 {
		der, err := ecdsa.SignASN1(rand.Reader, k, digest)
		require.NoError(t, err)
		std := base64.StdEncoding.EncodeToString(der)
		if strings.ContainsAny(std, "+/") {
			return base64.URLEncoding.EncodeToString(der)
		}
	}
	t.Fatal("no signature with + or / in 1000 tries")
	return ""
}

func wrap(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += 20 {
		b.WriteString(s[i:min(i+20, len(s))])
		b.WriteString("\r\n")
	}
	return b.String()
}

func TestParseAuthRequestErrors(t *testing.T) {
	keys := genKeys(t)
	pkix, err := MarshalPublicKeyPEM(keys["rsa2048"].Public())
	require.NoError(t, err)
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY",
		Bytes: x509.MarshalPKCS1PublicKey(keys["rsa2048"].Public().(*rsa.PublicKey))}))
	js := func(s string) string { b, _ := jsonString(s); return b }
	tests := []struct {
		name, body, wantMsg string
	}{
		{"malformed json", `{"id_data":`, "failed to decode auth request"},
		{"id_data as object (§11.6)", `{"id_data":{"mac":"x"},"pubkey":` + js(pkix) + `}`, "failed to decode auth request"},
		{"missing id_data", `{"pubkey":` + js(pkix) + `}`, "id_data must be provided"},
		{"missing pubkey", `{"id_data":"{\"mac\":\"x\"}"}`, "pubkey must be provided"},
		{"PKCS#1 public key (§11.5)", `{"id_data":"{\"mac\":\"x\"}","pubkey":` + js(pkcs1) + `}`, "RSA PUBLIC KEY"},
		{"id_data array", `{"id_data":"[1,2]","pubkey":` + js(pkix) + `}`, "id_data must be a JSON object"},
		{"id_data not json", `{"id_data":"mac=x","pubkey":` + js(pkix) + `}`, "id_data must be a JSON object"},
		{"garbage pem", `{"id_data":"{\"mac\":\"x\"}","pubkey":"hello"}`, "no PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAuthRequest([]byte(tt.body))
			require.ErrorIs(t, err, ErrBadRequest)
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}
}

func jsonString(s string) (string, error) {
	b := new(strings.Builder)
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '\n':
			b.WriteString(`\n`)
		case '"':
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String(), nil
}

// Identity canonicalisation matches deviceauth: sorted keys, compact, so the
// same identity hashes the same whatever order the client used.
func TestCanonicalIdentity(t *testing.T) {
	_, c1, h1, err := CanonicalIdentity(`{"sn":"1", "mac":"a"}`)
	require.NoError(t, err)
	_, c2, h2, err := CanonicalIdentity(`{"mac":"a","sn":"1"}`)
	require.NoError(t, err)
	assert.Equal(t, `{"mac":"a","sn":"1"}`, c1)
	assert.Equal(t, c1, c2)
	assert.Equal(t, h1, h2)
	c3, h3 := CanonicalIdentityObject(map[string]any{"sn": "1", "mac": "a"})
	assert.Equal(t, c1, c3)
	assert.Equal(t, h1, h3)

	assert.Equal(t, `{"mac":["a","b"],"sn":"1"}`, Attributes{"sn": {"1"}, "mac": {"a", "b"}}.IdentityJSON())
}

// Golden auth-request body for a fixed identity and key, and golden
// signatures for the deterministic schemes (Ed25519, RSA PKCS#1 v1.5).
func TestGoldenAuthRequest(t *testing.T) {
	seed := sha256.Sum256([]byte("menderapi golden"))
	edk := ed25519.NewKeyFromSeed(seed[:])
	body, err := BuildAuthRequest(Attributes{"mac": {"02:00:00:00:00:01"}}.IdentityJSON(), edk.Public(), "")
	require.NoError(t, err)
	sig, err := Sign(edk, body)
	require.NoError(t, err)
	golden(t, "auth-request-ed25519.body", body)
	golden(t, "auth-request-ed25519.sig", []byte(sig+"\n"))
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create %s", path)
	assert.Equal(t, string(want), string(got), "golden file %s differs", path)
}

func TestSignerOptsUnsupported(t *testing.T) {
	_, err := SignerOpts("not a key")
	assert.ErrorIs(t, err, ErrUnsupportedKey)
	_, err = MarshalPublicKeyPEM(struct{}{})
	assert.ErrorIs(t, err, ErrUnsupportedKey)
}

func TestValidDeviceStatus(t *testing.T) {
	for _, s := range []string{"downloading", "installing", "rebooting", "success", "failure",
		"already-installed", "pause_before_installing", "pause_before_committing", "pause_before_rebooting"} {
		assert.True(t, ValidDeviceStatus(s), s)
	}
	for _, s := range []string{"aborted", "pending", "noartifact", "decommissioned", ""} {
		assert.False(t, ValidDeviceStatus(s), s)
	}
}

func TestDeploymentInstructionsValidate(t *testing.T) {
	ok := DeploymentInstructions{ID: "d", Artifact: DeploymentArtifact{ArtifactName: "a",
		Source: ArtifactSource{URI: "https://x"}, DeviceTypesCompatible: []string{"rpi4"}}}
	require.NoError(t, ok.Validate())
	for field, mut := range map[string]func(*DeploymentInstructions){
		"id":                               func(d *DeploymentInstructions) { d.ID = "" },
		"artifact.artifact_name":           func(d *DeploymentInstructions) { d.Artifact.ArtifactName = "" },
		"artifact.source.uri":              func(d *DeploymentInstructions) { d.Artifact.Source.URI = "" },
		"artifact.device_types_compatible": func(d *DeploymentInstructions) { d.Artifact.DeviceTypesCompatible = nil },
	} {
		d := ok
		mut(&d)
		err := d.Validate()
		require.Error(t, err)
		assert.Contains(t, err.Error(), field)
	}
}

// FuzzAuthRequest: arbitrary bodies and signatures never panic, and never
// verify unless the signature really is over those bytes.
func FuzzAuthRequest(f *testing.F) {
	seed := sha256.Sum256([]byte("fuzz"))
	edk := ed25519.NewKeyFromSeed(seed[:])
	body, _ := BuildAuthRequest(`{"mac":"x"}`, edk.Public(), "")
	sig, _ := Sign(edk, body)
	f.Add(body, sig)
	f.Add([]byte(`{"id_data":"{}","pubkey":""}`), "AAAA")
	f.Add([]byte(`{`), "")
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		req, err := VerifyAuthRequest(body, sig)
		if err != nil {
			return
		}
		// It verified: the signature must verify independently with the parsed key.
		require.NoError(t, Verify(req.Key, body, sig))
		require.NotEmpty(t, req.IdentityHash)
	})
}
