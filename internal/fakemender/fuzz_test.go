package fakemender_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// FuzzAuthRequest feeds random bodies and signatures to POST auth_requests.
// Properties: no panic; the status is one of 200/400/401/413; and, on an
// AutoAccept server, 200 exactly when the signature verifies over the raw
// body (menderapi.VerifyAuthRequest) and the tier, if any, is valid.
func FuzzAuthRequest(f *testing.F) {
	for _, kind := range []string{"ecdsa-p256", "rsa2048", "ed25519"} {
		body, sig := recorded(f, kind)
		f.Add(body, sig)
		flipped := bytes.Clone(body)
		flipped[len(flipped)/3] ^= 0x01
		f.Add(flipped, sig)
	}
	for _, dir := range []string{"standard", "micro-tenant"} {
		body, err := os.ReadFile(filepath.Join(recorded51Dir, dir, "body.bin"))
		if err != nil {
			f.Fatal(err)
		}
		sig, err := os.ReadFile(filepath.Join(recorded51Dir, dir, "x-men-signature.txt"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(body, strings.TrimSpace(string(sig)))
	}
	d := newDevice(f, "02:00:00:00:00:70")
	r := d.authReq(f)
	f.Add(r.body, r.hdr[menderapi.HeaderSignature])
	r = d.tierAuthRaw(f, "gold")
	f.Add(r.body, r.hdr[menderapi.HeaderSignature])
	f.Add(r.body, "")
	f.Add([]byte(`{}`), "AAAA")
	f.Add([]byte(`{"id_data":"{}","pubkey":""}`), "!!")
	f.Add([]byte(`null`), "")

	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		s, err := fakemender.New(fakemender.Options{AutoAccept: true})
		if err != nil {
			t.Fatal(err)
		}
		hr := httptest.NewRequestWithContext(t.Context(), "POST", menderapi.PathAuthRequests, bytes.NewReader(body))
		hr.Header.Set("Content-Type", "application/json")
		hr.Header.Set(menderapi.HeaderSignature, sig)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, hr)

		req, verr := menderapi.VerifyAuthRequest(body, sig)
		badTier := verr == nil && req.Tier != "" && !menderapi.ValidTier(req.Tier)
		switch rec.Code {
		case http.StatusOK:
			if verr != nil {
				t.Fatalf("200 for a request that does not verify: %v", verr)
			}
			if badTier {
				t.Fatalf("200 for tier %q", req.Tier)
			}
			if rec.Header().Get("Content-Type") != menderapi.ContentTypeJWT {
				t.Fatalf("200 with Content-Type %q", rec.Header().Get("Content-Type"))
			}
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestEntityTooLarge:
			if verr == nil && !badTier && len(body) > 0 && len(body) <= menderapi.MaxBodySize {
				t.Fatalf("status %d for a request that verifies: %s", rec.Code, rec.Body.String())
			}
		default:
			t.Fatalf("unexpected status %d: %s", rec.Code, rec.Body.String())
		}
	})
}
