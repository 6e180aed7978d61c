package fakemender_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// recorded51Dir holds the auth requests recorded from the Mender 5.1 C++
// client (see its README.md).
const recorded51Dir = "../../testdata/mender-5.1-auth-requests"

// tierAuthReq builds a signed auth request in Mender 5.1's layout with tier.
func (d *testDevice) tierAuthReq(t testing.TB, tier string) req {
	t.Helper()
	body, err := menderapi.BuildAuthRequestTier(d.ident, d.key.Public(), "", tier)
	require.NoError(t, err)
	sig, err := menderapi.Sign(d.key, body)
	require.NoError(t, err)
	return rawAuth(body, sig)
}

// tierAuthRaw signs a hand-made body with an arbitrary tier value.
func (d *testDevice) tierAuthRaw(t testing.TB, tier string) req {
	t.Helper()
	pub, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
	require.NoError(t, err)
	body, err := json.Marshal(map[string]string{"id_data": d.ident, "pubkey": pub, "tier": tier})
	require.NoError(t, err)
	sig, err := menderapi.Sign(d.key, body)
	require.NoError(t, err)
	return rawAuth(body, sig)
}

// authSetTiers returns the raw "tier" of each auth set of the device as the
// management API shows it ("-" when the key is absent).
func authSetTiers(t *testing.T, s *fakemender.Server, mgmt, id string) []string {
	t.Helper()
	rec := do(t, s, req{method: "GET", path: menderapi.PathDevauthDevices + "/" + id, hdr: bearerHdr(mgmt)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var dev struct {
		AuthSets []map[string]any `json:"auth_sets"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &dev))
	var out []string
	for _, as := range dev.AuthSets {
		tier, ok := as["tier"].(string)
		if !ok {
			tier = "-"
		}
		out = append(out, tier)
	}
	return out
}

// The recorded Mender 5.1 requests are admitted as pending devices with their
// tier, get a token once accepted, and are refused once any byte changes.
func TestRecordedMender51Requests(t *testing.T) {
	for _, tt := range []struct{ dir, tier string }{{"standard", "standard"}, {"micro-tenant", "micro"}} {
		t.Run(tt.dir, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join(recorded51Dir, tt.dir, "body.bin"))
			require.NoError(t, err)
			sigB, err := os.ReadFile(filepath.Join(recorded51Dir, tt.dir, "x-men-signature.txt"))
			require.NoError(t, err)
			sig := strings.TrimSpace(string(sigB))
			s := newServer(t, fakemender.Options{})
			mgmt := login(t, s)

			rec := do(t, s, rawAuth(body, sig))
			require.Equal(t, http.StatusUnauthorized, rec.Code, rec.Body.String())
			devs := s.Devices()
			require.Len(t, devs, 1)
			assert.Equal(t, map[string]any{"mac": "52:54:00:ab:cd:ef", "serial": "SN-0001"}, devs[0].IdentityData)
			require.Len(t, devs[0].AuthSets, 1)
			assert.Equal(t, tt.tier, devs[0].AuthSets[0].Tier)
			assert.Equal(t, []string{tt.tier}, authSetTiers(t, s, mgmt, devs[0].ID), "the management JSON shows the tier")

			require.NoError(t, s.Accept(devs[0].ID))
			rec = do(t, s, rawAuth(body, sig))
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())

			for _, i := range []int{2, len(body) / 2, len(body) - 4} {
				mut := append([]byte(nil), body...)
				mut[i] ^= 0x01
				rec := do(t, s, rawAuth(mut, sig))
				assert.Contains(t, []int{http.StatusBadRequest, http.StatusUnauthorized}, rec.Code, "byte %d flipped", i)
				assert.NotEqual(t, http.StatusOK, rec.Code)
			}
		})
	}
}

// Auth sets are keyed by (identity, key, tier): no tier (Mender 3.x) is the
// standard tier, and a device that changes its tier gets a new pending set.
func TestAuthSetsKeyedByTier(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)
	d := newDevice(t, "02:00:00:00:00:51")

	require.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "Mender 3.x body, no tier: pending")
	dev := deviceByMAC(t, s, "02:00:00:00:00:51")
	require.NoError(t, s.Accept(dev.ID))
	assert.Equal(t, http.StatusOK, d.auth(t, s).Code)
	assert.Equal(t, http.StatusOK, do(t, s, d.tierAuthReq(t, menderapi.TierStandard)).Code,
		"tier standard is the set that had no tier")
	assert.Equal(t, []string{"standard"}, authSetTiers(t, s, mgmt, dev.ID))

	rec := do(t, s, d.tierAuthReq(t, menderapi.TierMicro))
	require.Equal(t, http.StatusUnauthorized, rec.Code, "a new tier needs a new acceptance")
	assert.Equal(t, "dev auth: unauthorized", errorMsg(t, rec).Error)
	dev = deviceByMAC(t, s, "02:00:00:00:00:51")
	require.Len(t, dev.AuthSets, 2)
	assert.Equal(t, []string{"standard", "micro"}, authSetTiers(t, s, mgmt, dev.ID))
	assert.Equal(t, menderapi.DevStatusPending, dev.AuthSets[1].Status)
	assert.Equal(t, menderapi.DevStatusAccepted, dev.Status, "the standard set stays accepted meanwhile")

	require.NoError(t, s.Accept(dev.ID))
	assert.Equal(t, http.StatusOK, do(t, s, d.tierAuthReq(t, menderapi.TierMicro)).Code)
	assert.Equal(t, http.StatusUnauthorized, d.auth(t, s).Code, "accepting the micro set rejected the standard one")
	assert.Len(t, s.Devices(), 1, "still one device: the tier is not part of the identity")
}

func TestAuthRequestBadTier(t *testing.T) {
	for _, tier := range []string{"gold", "Standard", " micro"} {
		t.Run(tier, func(t *testing.T) {
			s := newServer(t, fakemender.Options{})
			d := newDevice(t, "02:00:00:00:00:52")
			rec := do(t, s, d.tierAuthRaw(t, tier))
			require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
			assert.Contains(t, errorMsg(t, rec).Error, "must be standard, micro or system")
			assert.Empty(t, s.Devices(), "a refused request creates no device")
			ars := s.Stats().AuthRequests
			require.Len(t, ars, 1)
			assert.Equal(t, fakemender.OutcomeBadRequest, ars[0].Outcome)
		})
	}
}

// A preauthorization without a tier admits the key at whatever tier the
// device sends (the open-source API has no tier); one with a tier (this
// fake's extension) admits only that tier.
func TestPreauthorizeTier(t *testing.T) {
	s := newServer(t, fakemender.Options{})
	mgmt := login(t, s)

	d := newDevice(t, "02:00:00:00:00:53")
	pub, err := menderapi.MarshalPublicKeyPEM(d.key.Public())
	require.NoError(t, err)
	rec := preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: map[string]any{"mac": "02:00:00:00:00:53"}, PubKey: pub})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	dev := deviceByMAC(t, s, "02:00:00:00:00:53")
	assert.Equal(t, []string{"-"}, authSetTiers(t, s, mgmt, dev.ID), "no tier until the device sends one")
	assert.Equal(t, http.StatusOK, do(t, s, d.tierAuthReq(t, menderapi.TierMicro)).Code)
	assert.Equal(t, []string{"micro"}, authSetTiers(t, s, mgmt, dev.ID), "the set takes the device's tier")

	e := newDevice(t, "02:00:00:00:00:54")
	pub, err = menderapi.MarshalPublicKeyPEM(e.key.Public())
	require.NoError(t, err)
	rec = preauth(t, s, mgmt, menderapi.PreauthRequest{IdentityData: map[string]any{"mac": "02:00:00:00:00:54"}, PubKey: pub, Tier: "system"})
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	assert.Equal(t, http.StatusUnauthorized, e.auth(t, s).Code, "no tier means standard, not the preauthorized system")
	assert.Equal(t, http.StatusOK, do(t, s, e.tierAuthReq(t, menderapi.TierSystem)).Code)
	assert.Equal(t, []string{"system", "standard"}, authSetTiers(t, s, mgmt, deviceByMAC(t, s, "02:00:00:00:00:54").ID))

	rec = preauth(t, s, mgmt, map[string]any{"identity_data": map[string]any{"mac": "x"}, "pubkey": pub, "tier": "gold"})
	require.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, errorMsg(t, rec).Error, `tier "gold"`)
}

// The tier of an auth set survives a restart of a persistent server.
func TestTierPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := newServer(t, fakemender.Options{StatePath: path})
	d := newDevice(t, "02:00:00:00:00:55")
	require.Equal(t, http.StatusUnauthorized, do(t, s, d.tierAuthReq(t, menderapi.TierMicro)).Code)

	s2 := newServer(t, fakemender.Options{StatePath: path})
	dev := deviceByMAC(t, s2, "02:00:00:00:00:55")
	require.Len(t, dev.AuthSets, 1)
	assert.Equal(t, menderapi.TierMicro, dev.AuthSets[0].Tier)
}
