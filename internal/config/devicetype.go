package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

const (
	// ArtifactNameFileName is the file in the datastore directory holding the
	// name of the installed artifact as "artifact_name=<name>".
	ArtifactNameFileName = "artifact_name"
	// UnknownArtifactName is the artifact name before any is recorded, as in Mender.
	UnknownArtifactName = "unknown"

	// maxKeyFileSize bounds how much of a device_type or artifact_name file is read.
	maxKeyFileSize = 64 << 10
)

// ReadDeviceType reads the device_type file (protocol notes §7.3): one line
// "device_type=<type>", with blank lines and '#' comment lines allowed and
// whitespace trimmed. A missing file, a line that is not key=value, another
// key, a repeated device_type or an empty type is an error naming the file.
// A missing file's error matches [fs.ErrNotExist].
func ReadDeviceType(path string) (string, error) {
	v, err := readKeyFile(path, "device_type")
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read device type: %w (create it with the line device_type=<your device type>, "+
			"or set DeviceTypeFile in mender.conf)", err)
	}
	if err != nil {
		return "", fmt.Errorf("read device type: %w", err)
	}
	return v, nil
}

// ReadArtifactName returns the name of the installed artifact from
// <datastoreDir>/artifact_name ("" means /var/lib/mender), a file in the same
// format as device_type with the key artifact_name. When the file does not
// exist it returns "unknown", as Mender does on first boot.
func ReadArtifactName(datastoreDir string) (string, error) {
	path := filepath.Join(orDefault(datastoreDir, DefaultDatastoreDir), ArtifactNameFileName)
	v, err := readKeyFile(path, "artifact_name")
	if errors.Is(err, fs.ErrNotExist) {
		return UnknownArtifactName, nil
	}
	if err != nil {
		return "", fmt.Errorf("read artifact name: %w (fix or remove the file)", err)
	}
	return v, nil
}

// WriteArtifactName records name as the installed artifact in
// <datastoreDir>/artifact_name ("" means /var/lib/mender), atomically,
// creating the directory when needed. The name must not be empty, have
// surrounding whitespace or contain control characters.
func WriteArtifactName(datastoreDir, name string) error {
	switch {
	case name == "":
		return errors.New("write artifact name: the name is empty")
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("write artifact name %q: the name has surrounding whitespace; trim it", name)
	case strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("write artifact name %q: the name contains control characters", name)
	}
	dir := orDefault(datastoreDir, DefaultDatastoreDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write artifact name: create datastore directory: %w", err)
	}
	path := filepath.Join(dir, ArtifactNameFileName)
	if err := atomicfile.Write(path, []byte("artifact_name="+name+"\n"), 0o644); err != nil {
		return fmt.Errorf("write artifact name: %w", err)
	}
	return nil
}

// readKeyFile reads a file that must hold exactly one "key=value" line for
// key, plus blank lines and '#' comments, and returns the trimmed value.
func readKeyFile(path, key string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err // *fs.PathError names the file
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxKeyFileSize+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return "", fmt.Errorf("%s: larger than %d bytes; it must hold the single line %s=<value>", path, maxKeyFileSize, key)
	}
	value, found := "", false
	for i, line := range bytes.Split(data, []byte{'\n'}) {
		s := strings.TrimSpace(string(line))
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
			return "", fmt.Errorf("%s:%d: %q is not a key=value line; the file must hold the single line %s=<value>", path, i+1, s, key)
		case k != key:
			return "", fmt.Errorf("%s:%d: unexpected key %q; the file must hold the single line %s=<value>", path, i+1, k, key)
		case found:
			return "", fmt.Errorf("%s:%d: %s is given more than once; keep one line", path, i+1, key)
		case v == "":
			return "", fmt.Errorf("%s:%d: %s is empty; write %s=<value>", path, i+1, key, key)
		}
		value, found = v, true
	}
	if !found {
		return "", fmt.Errorf("%s: no %s= line; the file must hold the single line %s=<value>", path, key, key)
	}
	return value, nil
}
