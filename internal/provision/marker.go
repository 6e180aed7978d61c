package provision

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// MarkerName is the file in the agent's datastore that records the last
// provisioning, for `device-agent check`.
const MarkerName = "device-agent-provisioned.json"

// Marker is what the device remembers of its provisioning.
type Marker struct {
	Time        time.Time `json:"time"`
	Station     string    `json:"station"`
	Port        string    `json:"port"`
	CN          string    `json:"cn"`
	Serial      string    `json:"serial"`
	Fingerprint string    `json:"fingerprint"`
	NotAfter    time.Time `json:"not_after"`
	CertFile    string    `json:"cert_file"`
	Key         string    `json:"key"`
	KeyInTPM    bool      `json:"key_in_tpm"`
	Config      string    `json:"config"`
}

// WriteMarker writes m to path atomically.
func WriteMarker(path string, m Marker) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// ReadMarker reads a marker; the error of a missing file wraps
// fs.ErrNotExist.
func ReadMarker(path string) (Marker, error) {
	var m Marker
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w: remove it and run device-agent provision again", path, err)
	}
	return m, nil
}
