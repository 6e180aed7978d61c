// Package artifact reads and writes Mender Artifacts, format version 3, as
// mender-artifact writes them: an outer tar of version, manifest (sha256 of
// every part), optional manifest.sig (RSA PKCS#1 v1.5 or ECDSA P-256 r‖s),
// header.tar[.gz] (header-info, headers/0000/type-info and meta-data) and
// data/0000.tar[.gz] with the payload files of one module-image payload of
// any type (single-file, directory, ...).
//
// [Read] checks every checksum and the signature when given a key, refuses
// anything malformed with an error that names the part, and streams payload
// files to a callback, so only the bounded header is held in memory.
// [Write] builds an artifact from files it reads twice (once to checksum,
// once to write), signing the manifest when given a [crypto.Signer].
// Only gzip and uncompressed artifacts are supported (mender-artifact's
// default is gzip); xz and zstd parts are refused with a clear error.
package artifact

import (
	"errors"
	"fmt"
	"time"
)

// FormatVersion is the only artifact format version this package handles.
const FormatVersion = 3

// Compression is how the header and data tars are compressed.
type Compression string

// The compressions this package reads and writes.
const (
	Gzip Compression = "gzip" // header.tar.gz, data/0000.tar.gz (mender-artifact's default)
	None Compression = "none" // header.tar, data/0000.tar
)

// ext is the file name suffix of c.
func (c Compression) ext() string {
	if c == Gzip {
		return ".gz"
	}
	return ""
}

// ErrMalformed is wrapped by every error about the artifact's bytes (as
// opposed to I/O errors of the reader or writer).
var ErrMalformed = errors.New("malformed artifact")

// ErrSignature is wrapped by signature errors: a signature that does not
// verify, or a missing one when a verification key was given.
var ErrSignature = errors.New("artifact signature")

// malformed returns an error naming part that wraps ErrMalformed.
func malformed(part, format string, args ...any) error {
	return &PartError{Part: part, Err: fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))}
}

// PartError is an error about one part of an artifact ("manifest",
// "header.tar.gz/header-info", "data/0000/rootfs.img", ...).
type PartError struct {
	Part string
	Err  error
}

func (e *PartError) Error() string { return "artifact: " + e.Part + ": " + e.Err.Error() }
func (e *PartError) Unwrap() error { return e.Err }

// Artifact is what an artifact declares, as read by [Read].
type Artifact struct {
	// FormatVersion is the version file's version (always 3 after Read).
	FormatVersion int
	// Name is artifact_provides.artifact_name of header-info.
	Name string
	// Group is artifact_provides.artifact_group; "" = none.
	Group string
	// DeviceTypes is artifact_depends.device_type: the compatible devices.
	DeviceTypes []string
	// DependsNames is artifact_depends.artifact_name; nil = none.
	DependsNames []string
	// DependsGroups is artifact_depends.artifact_group; nil = none.
	DependsGroups []string
	// Compression is the header's compression.
	Compression Compression
	// Payload is the one payload (headers/0000, data/0000).
	Payload Payload
	// Scripts are the state script names in the header (scripts/NAME).
	Scripts []string
	// Signed reports a manifest.sig; Verified that it was verified with
	// [ReadOptions.VerifyKey].
	Signed, Verified bool
}

// Payload is the type-info, meta-data and files of a payload.
type Payload struct {
	// Type is the update module name ("single-file", "directory", ...).
	Type string
	// Provides is type-info artifact_provides.
	Provides map[string]string
	// Depends is type-info artifact_depends; a single string value is a
	// one-element list.
	Depends map[string][]string
	// ClearsProvides is type-info clears_artifact_provides.
	ClearsProvides []string
	// MetaData is the meta-data JSON object; nil = none.
	MetaData map[string]any
	// Files are the payload files in data order.
	Files []File
}

// File is one payload file.
type File struct {
	// Name is the base name (data/0000/NAME in the manifest).
	Name string
	// Size is the uncompressed size in bytes.
	Size int64
	// SHA256 is the lowercase hex sha256 of the content.
	SHA256 string
	// ModTime is the tar entry's modification time.
	ModTime time.Time
}
