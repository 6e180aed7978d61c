// Package config reads mender.conf the way Mender reads it and turns it into
// the validated, resolved [Config] that cmd/ maps to component options.
//
// Two files are merged like Mender 3.x does: the fallback file
// (/var/lib/mender/mender.conf) is loaded first and the main file
// (/etc/mender/mender.conf) overrides it key by key. Unknown keys are warnings,
// not errors, so stock files from any Mender version load; wrong types,
// malformed JSON and invalid combinations are errors that name the file and
// the key. All problems are reported at once with [errors.Join]. Seconds in the
// file become [time.Duration] here, once.
//
// The package also reads the small key=value files next to mender.conf: the
// device_type file and the artifact_name file this agent keeps in the
// datastore directory.
package config

// File mirrors mender.conf as JSON: every key of the Mender 3.x and 4.x/5.x
// clients (protocol notes §7.1) plus this agent's TPM extension. It holds the
// raw merged values; defaults and path resolution live in [Config]. A key
// absent from both files keeps its zero value.
type File struct {
	// ServerURL is the Mender server base URL. Mutually exclusive with Servers.
	ServerURL string `json:"ServerURL,omitempty"`
	// Servers is a failover list of servers, tried in order for auth.
	Servers []Server `json:"Servers,omitempty"`
	// TenantToken is sent as tenant_token in auth requests.
	TenantToken string `json:"TenantToken,omitempty"`
	// DeviceTier is "standard", "micro" or "system"; "" means "standard".
	DeviceTier string `json:"DeviceTier,omitempty"`
	// HttpsClient is the mTLS client certificate and key.
	HttpsClient HTTPSClient `json:"HttpsClient,omitzero"`
	// Security holds the key that signs auth requests.
	Security Security `json:"Security,omitzero"`
	// ServerCertificate is an extra trusted CA or server certificate file.
	ServerCertificate string `json:"ServerCertificate,omitempty"`
	// SkipVerify disables TLS server certificate verification.
	SkipVerify bool `json:"SkipVerify,omitempty"`
	// UpdatePollIntervalSeconds is the update-check period; 0 means the default.
	UpdatePollIntervalSeconds int `json:"UpdatePollIntervalSeconds,omitempty"`
	// InventoryPollIntervalSeconds is the inventory period; 0 means the default.
	InventoryPollIntervalSeconds int `json:"InventoryPollIntervalSeconds,omitempty"`
	// RetryPollIntervalSeconds is the cap of the retry backoff; 0 means the default.
	RetryPollIntervalSeconds int `json:"RetryPollIntervalSeconds,omitempty"`
	// RetryPollCount is the maximum number of retries; 0 means Mender's default rule.
	RetryPollCount int `json:"RetryPollCount,omitempty"`
	// RetryDownloadCount is the number of download resume attempts (C++ client).
	RetryDownloadCount int `json:"RetryDownloadCount,omitempty"`
	// DeviceTypeFile is the path of the device_type file.
	DeviceTypeFile string `json:"DeviceTypeFile,omitempty"`
	// ArtifactVerifyKey is one artifact verification key; exclusive with ArtifactVerifyKeys.
	ArtifactVerifyKey string `json:"ArtifactVerifyKey,omitempty"`
	// ArtifactVerifyKeys are artifact verification keys.
	ArtifactVerifyKeys []string `json:"ArtifactVerifyKeys,omitempty"`
	// UpdateLogPath is the deployment log directory.
	UpdateLogPath string `json:"UpdateLogPath,omitempty"`
	// StateScriptTimeoutSeconds is the state script timeout.
	StateScriptTimeoutSeconds int `json:"StateScriptTimeoutSeconds,omitempty"`
	// StateScriptRetryTimeoutSeconds is the state script retry timeout.
	StateScriptRetryTimeoutSeconds int `json:"StateScriptRetryTimeoutSeconds,omitempty"`
	// StateScriptRetryIntervalSeconds is the state script retry interval.
	StateScriptRetryIntervalSeconds int `json:"StateScriptRetryIntervalSeconds,omitempty"`
	// ModuleTimeoutSeconds is the update-module timeout (C++ client).
	ModuleTimeoutSeconds int `json:"ModuleTimeoutSeconds,omitempty"`
	// DaemonLogLevel is the client log level.
	DaemonLogLevel string `json:"DaemonLogLevel,omitempty"`
	// Connectivity holds Go 3.x connection settings.
	Connectivity Connectivity `json:"Connectivity,omitzero"`
	// DBus holds the Go 3.x D-Bus switch.
	DBus DBus `json:"DBus,omitzero"`
	// UpdateControlMapExpirationTimeSeconds is a Go 3.x Update Control Map setting.
	UpdateControlMapExpirationTimeSeconds int `json:"UpdateControlMapExpirationTimeSeconds,omitempty"`
	// UpdateControlMapBootExpirationTimeSeconds is a Go 3.x Update Control Map setting.
	UpdateControlMapBootExpirationTimeSeconds int `json:"UpdateControlMapBootExpirationTimeSeconds,omitempty"`
	// RootfsPartA is the first root filesystem partition (dual-rootfs setups).
	RootfsPartA string `json:"RootfsPartA,omitempty"`
	// RootfsPartB is the second root filesystem partition (dual-rootfs setups).
	RootfsPartB string `json:"RootfsPartB,omitempty"`
	// BootUtilitiesSetActivePart is the command that sets the active partition.
	BootUtilitiesSetActivePart string `json:"BootUtilitiesSetActivePart,omitempty"`
	// BootUtilitiesGetNextActivePart is the command that reads the next active partition.
	BootUtilitiesGetNextActivePart string `json:"BootUtilitiesGetNextActivePart,omitempty"`
	// TPM is this agent's extension: {"TPM":{"Device":"/dev/tpmrm0"}}.
	TPM TPM `json:"TPM,omitzero"`
}

// Server is one element of File.Servers.
type Server struct {
	// ServerURL is the server base URL.
	ServerURL string `json:"ServerURL"`
}

// HTTPSClient is the HttpsClient section: the mTLS client certificate.
type HTTPSClient struct {
	// Certificate is the PEM client certificate file (leaf first, then chain).
	Certificate string `json:"Certificate,omitempty"`
	// Key is the client private key: a PEM file or a "handle:0x..." TPM handle.
	Key string `json:"Key,omitempty"`
	// SSLEngine is an OpenSSL engine id; not supported by this agent.
	SSLEngine string `json:"SSLEngine,omitempty"`
}

// Security is the Security section: the key that signs auth requests.
type Security struct {
	// AuthPrivateKey is a PEM key file or a "handle:0x..." TPM handle.
	AuthPrivateKey string `json:"AuthPrivateKey,omitempty"`
	// SSLEngine is an OpenSSL engine id; not supported by this agent.
	SSLEngine string `json:"SSLEngine,omitempty"`
}

// TPM is this agent's TPM section.
type TPM struct {
	// Device is the TPM character device, e.g. /dev/tpmrm0; "" means not set.
	Device string `json:"Device,omitempty"`
}

// Connectivity is the Go 3.x Connectivity section (ignored by 4.x clients).
type Connectivity struct {
	// DisableKeepAlive disables HTTP keep-alive.
	DisableKeepAlive bool `json:"DisableKeepAlive,omitempty"`
	// IdleConnTimeoutSeconds is the idle connection timeout.
	IdleConnTimeoutSeconds int `json:"IdleConnTimeoutSeconds,omitempty"`
}

// DBus is the Go 3.x DBus section.
type DBus struct {
	// Enabled turns the D-Bus API on.
	Enabled bool `json:"Enabled,omitempty"`
}
