package fakemender

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// stateVersion is the format version of the state file. Version 2 stores
// artifacts (files in the artifact directory) and deployments that refer to
// them; version 1 deployments carried generated content of their own.
const stateVersion = 2

// stateFile is the persisted state. SigningKey is PKCS#8 DER (base64 in
// JSON); LinkKey is the HMAC key of artifact download links.
type stateFile struct {
	Version     int                    `json:"version"`
	SigningKey  []byte                 `json:"signing_key"`
	Seq         int64                  `json:"seq"`
	Devices     []*device              `json:"devices"`
	Tokens      map[string]tokenRecord `json:"tokens"`
	Deployments []*deployment          `json:"deployments"`
	Artifacts   []*storedArtifact      `json:"artifacts"`
	LinkKey     []byte                 `json:"link_key"`
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
		Artifacts:   slices.SortedFunc(maps.Values(s.artifacts), func(a, b *storedArtifact) int { return cmp.Compare(a.Seq, b.Seq) }),
		LinkKey:     s.linkKey,
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
	if len(st.LinkKey) != 32 {
		return false, fmt.Errorf("load fake backend state %s: link_key: %d bytes, want 32 (delete the file to start empty)", path, len(st.LinkKey))
	}
	s.linkKey = st.LinkKey
	if len(st.Artifacts) > 0 {
		dir, err := s.artifactDir()
		if err != nil {
			return false, err
		}
		for _, a := range st.Artifacts {
			file := filepath.Join(dir, a.ID+".mender")
			if fi, err := os.Stat(file); err != nil || fi.Size() != a.Size {
				return false, fmt.Errorf("load fake backend state %s: artifact %s (%s): file %s is missing or has the wrong size (restore the artifact directory or delete the state file)", path, a.ID, a.Name, file)
			}
			s.artifacts[a.ID] = a
		}
	}
	for _, dep := range st.Deployments {
		if dep.Devices == nil {
			dep.Devices = map[string]*devDeployment{}
		}
		s.deployments[dep.ID] = dep
	}
	s.log.Info("fake backend state loaded", "path", path, "devices", len(s.devices), "deployments", len(s.deployments), "artifacts", len(s.artifacts))
	return true, nil
}
