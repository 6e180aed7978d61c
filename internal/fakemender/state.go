package fakemender

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// stateVersion is the format version of the state file.
const stateVersion = 1

// stateFile is the persisted state. SigningKey is PKCS#8 DER (base64 in JSON).
type stateFile struct {
	Version     int                    `json:"version"`
	SigningKey  []byte                 `json:"signing_key"`
	Seq         int64                  `json:"seq"`
	Devices     []*device              `json:"devices"`
	Tokens      map[string]tokenRecord `json:"tokens"`
	Deployments []*deployment          `json:"deployments"`
}

// saveLocked writes the whole state atomically (mode 0600: it holds the JWT
// private key). A no-op without StatePath. Called with s.mu held.
func (s *Server) saveLocked() error {
	if s.opts.StatePath == "" {
		return nil
	}
	der, err := s.key.marshal()
	if err != nil {
		return err
	}
	st := stateFile{
		Version: stateVersion, SigningKey: der, Seq: s.seq, Tokens: s.tokens,
		Devices:     s.sortedDevicesLocked(),
		Deployments: slices.SortedFunc(maps.Values(s.deployments), func(a, b *deployment) int { return cmp.Compare(a.Seq, b.Seq) }),
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state for %s: %w", s.opts.StatePath, err)
	}
	if err := atomicfile.Write(s.opts.StatePath, data, 0o600); err != nil {
		return fmt.Errorf("save fake backend state: %w", err)
	}
	return nil
}

// loadLocked reads StatePath; it reports false when there is none yet.
// Called with s.mu held.
func (s *Server) loadLocked() (bool, error) {
	path := s.opts.StatePath
	if path == "" {
		return false, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("load fake backend state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return false, fmt.Errorf("load fake backend state %s: %w (delete the file to start empty)", path, err)
	}
	if st.Version != stateVersion {
		return false, fmt.Errorf("load fake backend state %s: version %d, want %d (delete the file to start empty)", path, st.Version, stateVersion)
	}
	if s.key, err = parseSigningKey(st.SigningKey); err != nil {
		return false, fmt.Errorf("load fake backend state %s: signing_key: %w", path, err)
	}
	s.seq = st.Seq
	for _, d := range st.Devices {
		for name, a := range d.Inventory {
			raw, err := json.Marshal(a.Value)
			if err == nil {
				a.Value, err = normalizeValue(raw)
			}
			if err != nil {
				return false, fmt.Errorf("load fake backend state %s: device %s inventory %q: %w", path, d.ID, name, err)
			}
			d.Inventory[name] = a
		}
		s.devices[d.ID] = d
		s.byHash[d.IdentityHash] = d.ID
	}
	if st.Tokens != nil {
		s.tokens = st.Tokens
	}
	for _, dep := range st.Deployments {
		if dep.Size < MinArtifactSize || dep.Size > MaxArtifactSize {
			return false, fmt.Errorf("load fake backend state %s: deployment %s: size %d out of range", path, dep.ID, dep.Size)
		}
		if dep.Devices == nil {
			dep.Devices = map[string]*devDeployment{}
		}
		dep.data = artifactData(dep.Seed, dep.Size)
		s.deployments[dep.ID] = dep
		s.artifacts[dep.ArtifactID] = dep
	}
	s.log.Info("fake backend state loaded", "path", path, "devices", len(s.devices), "deployments", len(s.deployments))
	return true, nil
}
