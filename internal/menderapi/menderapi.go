// Package menderapi is the one definition of the Mender device-facing wire
// contract that both sides of this project use: endpoint paths, header names,
// JSON types, and signing and verification of auth requests over the exact
// body bytes.
//
// The device agent (internal/client) builds and signs auth requests with
// [BuildAuthRequest] and [Sign]; the fake backend (internal/fakemender) and the
// test ambassador verify them with [VerifyAuthRequest], so the two sides cannot
// drift apart. Everything here follows docs/protocol.md, whose section
// numbers the comments below cite as "§N".
package menderapi

import "time"

// Device API paths (§2, §5, §6 of the protocol notes).
const (
	PathAuthRequests        = "/api/devices/v1/authentication/auth_requests"
	PathInventoryAttributes = "/api/devices/v1/inventory/device/attributes"
	PathNextV1              = "/api/devices/v1/deployments/device/deployments/next"
	PathNextV2              = "/api/devices/v2/deployments/device/deployments/next"
	// PathDeploymentsPrefix is followed by "{id}/status" or "{id}/log".
	PathDeploymentsPrefix = "/api/devices/v1/deployments/device/deployments/"
)

// Management API paths (§4).
const (
	PathLogin               = "/api/management/v1/useradm/auth/login"
	PathDevauthDevices      = "/api/management/v2/devauth/devices"
	PathDevauthTokensPrefix = "/api/management/v2/devauth/tokens/"
	PathInventoryMgmtPrefix = "/api/management/v1/inventory/devices/"
)

// DeploymentStatusPath returns the status path for a deployment id.
func DeploymentStatusPath(id string) string { return PathDeploymentsPrefix + id + "/status" }

// DeploymentLogPath returns the log path for a deployment id.
func DeploymentLogPath(id string) string { return PathDeploymentsPrefix + id + "/log" }

// Header names and content types.
const (
	HeaderSignature   = "X-MEN-Signature"
	HeaderRequestID   = "X-MEN-RequestID"
	ContentTypeJSON   = "application/json"
	ContentTypeJWT    = "application/jwt"
	HeaderRetryAfter  = "Retry-After"
	HeaderContentType = "Content-Type"
)

// MaxBodySize is the largest request body deviceauth accepts (1 MiB).
const MaxBodySize = 1 << 20

// AuthRequest is the body of POST auth_requests. Field order is that of the
// Mender 3.x Go client: id_data, tenant_token, pubkey (see [BuildAuthRequest]);
// Mender 5.1 adds tier and sorts the keys (see [BuildAuthRequestTier]).
type AuthRequest struct {
	// IDData is the identity as a JSON object encoded into a string.
	IDData      string `json:"id_data"`
	TenantToken string `json:"tenant_token"`
	// PubKey is a PKIX "PUBLIC KEY" PEM block.
	PubKey string `json:"pubkey"`
	// Tier is the device tier the client sent (Mender 5.1 and later: one of
	// TierStandard, TierMicro, TierSystem); "" when the body has none, as
	// from Mender 3.x, which servers take as TierStandard. Parsing does not
	// validate it: the open-source server ignores it. See [AuthRequest.EffectiveTier].
	Tier string `json:"tier,omitempty"`
}

// Device tiers (§2.1): the auth request's tier and mender.conf's DeviceTier.
const (
	TierStandard = "standard" // embedded Linux devices; also what an absent tier means
	TierMicro    = "micro"    // microcontrollers (mender-mcu)
	TierSystem   = "system"   // Mender Orchestrator systems
)

// ValidTier reports whether t is one of the three device tiers. It is
// case-sensitive, as Mender 5.1's DeviceTier check is; "" is not a tier.
func ValidTier(t string) bool {
	return t == TierStandard || t == TierMicro || t == TierSystem
}

// EffectiveTier returns r.Tier, or TierStandard when the body had none.
func (r *AuthRequest) EffectiveTier() string {
	if r.Tier == "" {
		return TierStandard
	}
	return r.Tier
}

// InventoryAttribute is one element of the inventory PUT/PATCH body. Value is a
// string, a number, or a homogeneous array of strings or of numbers.
type InventoryAttribute struct {
	Name        string `json:"name"`
	Value       any    `json:"value"`
	Description string `json:"description,omitempty"`
}

// NextRequestV1 is the body of the v1 POST next call.
type NextRequestV1 struct {
	ArtifactName     string            `json:"artifact_name"`
	DeviceType       string            `json:"device_type"`
	ArtifactProvides map[string]string `json:"artifact_provides,omitempty"`
}

// NextRequestV2 is the body of the v2 POST next call.
type NextRequestV2 struct {
	DeviceProvides map[string]string `json:"device_provides"`
}

// DeploymentInstructions is the 200 answer of next.
type DeploymentInstructions struct {
	ID       string             `json:"id"`
	Artifact DeploymentArtifact `json:"artifact"`
}

// DeploymentArtifact describes the artifact of a deployment.
type DeploymentArtifact struct {
	ID                    string         `json:"id,omitempty"`
	ArtifactName          string         `json:"artifact_name"`
	Source                ArtifactSource `json:"source"`
	DeviceTypesCompatible []string       `json:"device_types_compatible"`
	// Size and Checksum are extensions some servers send; zero means unknown.
	Size     int64  `json:"size,omitempty"`
	Checksum string `json:"checksum,omitempty"`
}

// ArtifactSource is where the artifact is downloaded from, without the JWT.
type ArtifactSource struct {
	URI    string     `json:"uri"`
	Expire *time.Time `json:"expire,omitempty"`
}

// Validate reports whether the instructions hold every field the Go 3.x client
// requires (§5.1).
func (d *DeploymentInstructions) Validate() error {
	switch {
	case d.ID == "":
		return errMissing("id")
	case d.Artifact.ArtifactName == "":
		return errMissing("artifact.artifact_name")
	case d.Artifact.Source.URI == "":
		return errMissing("artifact.source.uri")
	case len(d.Artifact.DeviceTypesCompatible) == 0:
		return errMissing("artifact.device_types_compatible")
	}
	return nil
}

// Deployment statuses a device may report (§5.2).
const (
	StatusDownloading           = "downloading"
	StatusInstalling            = "installing"
	StatusRebooting             = "rebooting"
	StatusSuccess               = "success"
	StatusFailure               = "failure"
	StatusAlreadyInstalled      = "already-installed"
	StatusPauseBeforeInstalling = "pause_before_installing"
	StatusPauseBeforeCommitting = "pause_before_committing"
	StatusPauseBeforeRebooting  = "pause_before_rebooting"
)

// ValidDeviceStatus reports whether s is one of the nine statuses a device may send.
func ValidDeviceStatus(s string) bool {
	switch s {
	case StatusDownloading, StatusInstalling, StatusRebooting, StatusSuccess, StatusFailure,
		StatusAlreadyInstalled, StatusPauseBeforeInstalling, StatusPauseBeforeCommitting,
		StatusPauseBeforeRebooting:
		return true
	}
	return false
}

// StatusReport is the body of the deployment status PUT.
type StatusReport struct {
	Status   string `json:"status"`
	SubState string `json:"substate,omitempty"`
}

// LogMessage is one deployment log line.
type LogMessage struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
}

// DeploymentLog is the body of the deployment log PUT.
type DeploymentLog struct {
	Messages []LogMessage `json:"messages"`
}

// PreauthRequest is the body of POST /api/management/v2/devauth/devices.
// IdentityData is an object here, unlike AuthRequest.IDData (§11.6).
type PreauthRequest struct {
	IdentityData map[string]any `json:"identity_data"`
	PubKey       string         `json:"pubkey"`
	Force        bool           `json:"force,omitempty"`
	// Tier preauthorizes the key for one device tier only. Not part of the
	// open-source API (which has no tier here); internal/fakemender accepts
	// it. "" means the key is preauthorized for whatever tier the device sends.
	Tier string `json:"tier,omitempty"`
}

// Auth set and device statuses (§4.3).
const (
	DevStatusPending       = "pending"
	DevStatusAccepted      = "accepted"
	DevStatusRejected      = "rejected"
	DevStatusPreauthorized = "preauthorized"
	DevStatusNoAuth        = "noauth"
)

// Device is a device as the devauth management API returns it.
type Device struct {
	ID              string         `json:"id"`
	IdentityData    map[string]any `json:"identity_data"`
	Status          string         `json:"status"`
	Decommissioning bool           `json:"decommissioning"`
	CreatedTS       time.Time      `json:"created_ts"`
	UpdatedTS       time.Time      `json:"updated_ts"`
	CheckInTime     *time.Time     `json:"check_in_time,omitempty"`
	AuthSets        []AuthSet      `json:"auth_sets"`
}

// AuthSet is one (identity, key, tier) combination of a device.
type AuthSet struct {
	ID           string         `json:"id"`
	IdentityData map[string]any `json:"identity_data"`
	PubKey       string         `json:"pubkey"`
	TS           time.Time      `json:"ts"`
	Status       string         `json:"status"`
	// Tier is the device tier of the auth set (hosted Mender stores it with
	// the set); "" from servers that do not report it, meaning TierStandard.
	Tier string `json:"tier,omitempty"`
}

// StatusUpdate is the body of PUT .../devices/{id}/auth/{aid}/status.
type StatusUpdate struct {
	Status string `json:"status"`
}

// InventoryDevice is a device as the inventory management API returns it.
type InventoryDevice struct {
	ID         string                   `json:"id"`
	Attributes []InventoryMgmtAttribute `json:"attributes"`
	UpdatedTS  time.Time                `json:"updated_ts"`
}

// InventoryMgmtAttribute is an attribute with its scope, as management sees it.
type InventoryMgmtAttribute struct {
	Name  string `json:"name"`
	Value any    `json:"value"`
	Scope string `json:"scope"`
}
