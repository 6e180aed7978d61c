package artifact

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"regexp"
	"strings"
)

// DefaultMaxHeaderSize is the default of [ReadOptions.MaxHeaderSize].
const DefaultMaxHeaderSize = 8 << 20

// ReadOptions configures [Read].
type ReadOptions struct {
	// VerifyKey, when non-nil (*rsa.PublicKey or P-256 *ecdsa.PublicKey),
	// makes a missing or non-verifying manifest.sig an error wrapping
	// ErrSignature. Nil = the signature, if any, is not checked.
	VerifyKey crypto.PublicKey
	// File, when non-nil, is called for each payload file, in data
	// order, with its Name, Size and ModTime (SHA256 is not known yet)
	// and a reader of its content. Read checksums what passes through (draining what
	// the callback leaves) and fails after the callback if the checksum
	// is wrong: a caller that stores files must discard them when Read
	// returns an error. Nil = files are checksummed and discarded.
	File func(f File, r io.Reader) error
	// MaxHeaderSize bounds what Read holds in memory: the version,
	// manifest and signature files and the decompressed header tar, in
	// bytes. Zero = DefaultMaxHeaderSize.
	MaxHeaderSize int64
}

// headerInfo is header-info.
type headerInfo struct {
	Payloads []struct {
		Type *string `json:"type"`
	} `json:"payloads"`
	Provides struct {
		Name  string `json:"artifact_name"`
		Group string `json:"artifact_group,omitempty"`
	} `json:"artifact_provides"`
	Depends struct {
		DeviceType []string `json:"device_type,omitempty"`
		Name       []string `json:"artifact_name,omitempty"`
		Group      []string `json:"artifact_group,omitempty"`
	} `json:"artifact_depends"`
}

// typeInfo is headers/0000/type-info.
type typeInfo struct {
	Type           *string           `json:"type"`
	Provides       map[string]string `json:"artifact_provides,omitempty"`
	Depends        map[string]any    `json:"artifact_depends,omitempty"`
	ClearsProvides []string          `json:"clears_artifact_provides,omitempty"`
}

var (
	manifestLineRE = regexp.MustCompile(`^([0-9a-f]{64})\s\s(\S+)$`)
	fileNameRE     = regexp.MustCompile(`^[\w\-.,]+$`)
)

// Read reads an artifact from r, checking its structure, every checksum
// and, with opts.VerifyKey, its signature. Payload files are streamed to
// opts.File. Errors about the artifact name the part and wrap ErrMalformed
// (or ErrSignature).
func Read(r io.Reader, opts ReadOptions) (*Artifact, error) {
	rd := &reader{opts: opts, tr: tar.NewReader(r)}
	if rd.opts.MaxHeaderSize <= 0 {
		rd.opts.MaxHeaderSize = DefaultMaxHeaderSize
	}
	return rd.read()
}

type reader struct {
	opts     ReadOptions
	tr       *tar.Reader
	art      Artifact
	manifest map[string]string // name → sha256 hex
	seen     map[string]bool
}

// next returns the next outer entry; io.EOF at the end.
func (rd *reader) next(after string) (*tar.Header, error) {
	h, err := rd.tr.Next()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		if after == "" {
			return nil, malformed("version", "not a tar archive (not a Mender artifact?)")
		}
		return nil, malformed("entry after "+after, "%s", describe(err))
	}
	if h.Typeflag != tar.TypeReg {
		return nil, malformed(h.Name, "not a regular file (tar type %q)", h.Typeflag)
	}
	return h, nil
}

// small reads a whole outer entry, bounded.
func (rd *reader) small(h *tar.Header) ([]byte, error) {
	if h.Size > rd.opts.MaxHeaderSize {
		return nil, malformed(h.Name, "%d bytes is over the %d byte limit", h.Size, rd.opts.MaxHeaderSize)
	}
	b, err := io.ReadAll(rd.tr)
	if err != nil {
		return nil, malformed(h.Name, "%s", describe(err))
	}
	return b, nil
}

func (rd *reader) read() (*Artifact, error) {
	// version
	h, err := rd.next("")
	if err == io.EOF {
		return nil, malformed("version", "empty artifact (not a Mender artifact?)")
	}
	if err != nil {
		return nil, err
	}
	if h.Name != "version" {
		return nil, malformed("version", "first entry is %q, want version (not a Mender artifact?)", h.Name)
	}
	versionBytes, err := rd.small(h)
	if err != nil {
		return nil, err
	}
	var v struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(versionBytes, &v); err != nil {
		return nil, malformed("version", "%s", describe(err))
	}
	if v.Format != "mender" {
		return nil, malformed("version", "format %q, want \"mender\"", v.Format)
	}
	if v.Version != FormatVersion {
		return nil, malformed("version", "format version %d is not supported (only %d)", v.Version, FormatVersion)
	}
	rd.art.FormatVersion = v.Version

	// manifest
	h, err = rd.next("version")
	if err == io.EOF {
		return nil, malformed("manifest", "missing")
	}
	if err != nil {
		return nil, err
	}
	if h.Name != "manifest" {
		return nil, malformed("manifest", "entry after version is %q, want manifest", h.Name)
	}
	manifestBytes, err := rd.small(h)
	if err != nil {
		return nil, err
	}
	if err := rd.parseManifest(manifestBytes); err != nil {
		return nil, err
	}
	if err := rd.check("version", sha256Hex(versionBytes)); err != nil {
		return nil, err
	}

	// manifest.sig
	h, err = rd.next("manifest")
	if err == io.EOF {
		return nil, malformed("header.tar", "missing")
	}
	if err != nil {
		return nil, err
	}
	if h.Name == "manifest.sig" {
		sigText, err := rd.small(h)
		if err != nil {
			return nil, err
		}
		rd.art.Signed = true
		if rd.opts.VerifyKey != nil {
			sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sigText)))
			if err != nil {
				return nil, &PartError{Part: "manifest.sig", Err: fmt.Errorf("%w: not base64: %v", ErrSignature, err)}
			}
			if err := verify(rd.opts.VerifyKey, manifestBytes, sig); err != nil {
				return nil, &PartError{Part: "manifest.sig", Err: err}
			}
			rd.art.Verified = true
		}
		if h, err = rd.next("manifest.sig"); err == io.EOF {
			return nil, malformed("header.tar", "missing")
		} else if err != nil {
			return nil, err
		}
	} else if rd.opts.VerifyKey != nil {
		return nil, &PartError{Part: "manifest.sig", Err: fmt.Errorf("%w: missing: the artifact is not signed but a verification key was given", ErrSignature)}
	}
	if h.Name == "manifest-augment" || strings.HasPrefix(h.Name, "header-augment") {
		return nil, malformed(h.Name, "augmented artifacts are not supported")
	}

	// header.tar[.gz]
	comp, err := compressionOf(h.Name, "header.tar")
	if err != nil {
		return nil, err
	}
	rd.art.Compression = comp
	if err := rd.readHeader(h.Name, comp); err != nil {
		return nil, err
	}

	// data/0000.tar[.gz]
	h, err = rd.next(h.Name)
	if err == io.EOF {
		return nil, malformed("data/0000.tar"+comp.ext(), "missing")
	}
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(h.Name, "header-augment") {
		return nil, malformed(h.Name, "augmented artifacts are not supported")
	}
	dcomp, err := compressionOf(h.Name, "data/0000.tar")
	if err != nil {
		return nil, err
	}
	if dcomp != comp {
		return nil, malformed(h.Name, "compression %s differs from the header's %s", dcomp, comp)
	}
	if err := rd.readData(h.Name, comp); err != nil {
		return nil, err
	}
	if h, err := rd.next(h.Name); err != io.EOF {
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(h.Name, "data/") {
			return nil, malformed(h.Name, "more than one payload is not supported")
		}
		return nil, malformed(h.Name, "unexpected entry after the data")
	}
	for name := range rd.manifest {
		if !rd.seen[name] {
			return nil, malformed("manifest", "lists %s, which is not in the artifact", name)
		}
	}
	return &rd.art, nil
}

func (rd *reader) parseManifest(b []byte) error {
	rd.manifest = map[string]string{}
	rd.seen = map[string]bool{}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return malformed("manifest", "empty or not ending in a newline")
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		m := manifestLineRE.FindStringSubmatch(line)
		if m == nil {
			return malformed("manifest", "line %d: want \"<sha256 hex>  <name>\"", i+1)
		}
		if _, dup := rd.manifest[m[2]]; dup {
			return malformed("manifest", "line %d: %s listed twice", i+1, m[2])
		}
		rd.manifest[m[2]] = m[1]
	}
	return nil
}

// check compares the checksum of the part name against the manifest.
func (rd *reader) check(name, sum string) error {
	want, ok := rd.manifest[name]
	if !ok {
		return malformed(name, "not listed in the manifest")
	}
	if want != sum {
		return malformed(name, "checksum mismatch: manifest says sha256 %s, content is %s", want, sum)
	}
	rd.seen[name] = true
	return nil
}

// compressionOf maps "base" + suffix to its compression.
func compressionOf(name, base string) (Compression, error) {
	rest, ok := strings.CutPrefix(name, base)
	if !ok {
		return "", malformed(name, "unexpected entry, want %s[.gz]", base)
	}
	switch rest {
	case "":
		return None, nil
	case ".gz":
		return Gzip, nil
	case ".xz", ".zst":
		return "", malformed(name, "%s compression is not supported (write the artifact with --compression gzip or none)", rest[1:])
	}
	return "", malformed(name, "unexpected entry, want %s[.gz]", base)
}

// decompress wraps r for comp.
func decompress(r io.Reader, comp Compression, part string) (io.Reader, func() error, error) {
	if comp == None {
		return r, func() error { return nil }, nil
	}
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, malformed(part, "gzip: %s", describe(err))
	}
	zr.Multistream(false)
	return zr, zr.Close, nil
}

// hashingReader hashes what is read through it.
func hashingReader(r io.Reader) (io.Reader, hash.Hash) {
	h := sha256.New()
	return io.TeeReader(r, h), h
}

func (rd *reader) readHeader(part string, comp Compression) error {
	raw, sum := hashingReader(rd.tr)
	zr, closeZ, err := decompress(bufio.NewReader(raw), comp, part)
	if err != nil {
		return err
	}
	lim := &io.LimitedReader{R: zr, N: rd.opts.MaxHeaderSize + 1}
	tr := tar.NewReader(lim)
	tooBig := func() error {
		return malformed(part, "decompressed header is over the %d byte limit", rd.opts.MaxHeaderSize)
	}
	var hi headerInfo
	var ti typeInfo
	gotInfo, gotType, gotMeta := false, false, false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if lim.N <= 0 {
				return tooBig()
			}
			return malformed(part, "%s", describe(err))
		}
		entry := part + "/" + h.Name
		if h.Typeflag != tar.TypeReg {
			return malformed(entry, "not a regular file")
		}
		if !gotInfo && h.Name != "header-info" {
			return malformed(part, "first entry is %q, want header-info", h.Name)
		}
		read := func() ([]byte, error) {
			b, err := io.ReadAll(tr)
			if err != nil {
				if lim.N <= 0 {
					return nil, tooBig()
				}
				return nil, malformed(entry, "%s", describe(err))
			}
			return b, nil
		}
		switch {
		case h.Name == "header-info":
			if gotInfo {
				return malformed(entry, "twice")
			}
			b, err := read()
			if err != nil {
				return err
			}
			if err := strictJSON(b, &hi); err != nil {
				return malformed(entry, "%s", describe(err))
			}
			gotInfo = true
		case strings.HasPrefix(h.Name, "scripts/"):
			if gotType {
				return malformed(entry, "state scripts must come before headers/")
			}
			if _, err := read(); err != nil {
				return err
			}
			rd.art.Scripts = append(rd.art.Scripts, strings.TrimPrefix(h.Name, "scripts/"))
		case h.Name == "headers/0000/type-info":
			if gotType {
				return malformed(entry, "twice")
			}
			b, err := read()
			if err != nil {
				return err
			}
			if err := strictJSON(b, &ti); err != nil {
				return malformed(entry, "%s", describe(err))
			}
			gotType = true
		case h.Name == "headers/0000/meta-data":
			if !gotType || gotMeta {
				return malformed(entry, "must come once, after headers/0000/type-info")
			}
			b, err := read()
			if err != nil {
				return err
			}
			if len(bytes.TrimSpace(b)) > 0 {
				if err := strictJSON(b, &rd.art.Payload.MetaData); err != nil {
					return malformed(entry, "not a JSON object: %v", err)
				}
			}
			gotMeta = true
		case strings.HasPrefix(h.Name, "headers/") && !strings.HasPrefix(h.Name, "headers/0000/"):
			return malformed(entry, "more than one payload is not supported")
		default:
			return malformed(entry, "unexpected entry")
		}
	}
	if _, err := io.Copy(io.Discard, lim); err != nil {
		return malformed(part, "%s", describe(err))
	}
	if lim.N <= 0 {
		return tooBig()
	}
	if err := closeZ(); err != nil {
		return malformed(part, "%s", describe(err))
	}
	// Checksum the stored bytes to the end, including any gzip trailer
	// and tar padding the readers above did not need.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return malformed(part, "%s", describe(err))
	}
	if err := rd.check(part, hex.EncodeToString(sum.Sum(nil))); err != nil {
		return err
	}
	if !gotInfo {
		return malformed(part, "no header-info")
	}
	if !gotType {
		return malformed(part, "no headers/0000/type-info")
	}
	info := part + "/header-info"
	if len(hi.Payloads) != 1 {
		return malformed(info, "%d payloads, want exactly 1", len(hi.Payloads))
	}
	if hi.Payloads[0].Type == nil || *hi.Payloads[0].Type == "" {
		return malformed(info, "empty payload artifacts are not supported")
	}
	if hi.Provides.Name == "" {
		return malformed(info, "artifact_provides.artifact_name is empty")
	}
	if len(hi.Depends.DeviceType) == 0 {
		return malformed(info, "artifact_depends.device_type is empty")
	}
	tinfo := part + "/headers/0000/type-info"
	if ti.Type == nil || *ti.Type != *hi.Payloads[0].Type {
		return malformed(tinfo, "type does not match header-info's %q", *hi.Payloads[0].Type)
	}
	depends, err := dependsOf(ti.Depends)
	if err != nil {
		return malformed(tinfo, "artifact_depends: %v", err)
	}
	rd.art.Name = hi.Provides.Name
	rd.art.Group = hi.Provides.Group
	rd.art.DeviceTypes = hi.Depends.DeviceType
	rd.art.DependsNames = hi.Depends.Name
	rd.art.DependsGroups = hi.Depends.Group
	rd.art.Payload.Type = *ti.Type
	rd.art.Payload.Provides = ti.Provides
	rd.art.Payload.Depends = depends
	rd.art.Payload.ClearsProvides = ti.ClearsProvides
	return nil
}

// dependsOf normalises type-info artifact_depends values (a string or a
// list of strings) to lists.
func dependsOf(m map[string]any) (map[string][]string, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		switch v := v.(type) {
		case string:
			out[k] = []string{v}
		case []any:
			for _, e := range v {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("%s: want a string or a list of strings", k)
				}
				out[k] = append(out[k], s)
			}
		default:
			return nil, fmt.Errorf("%s: want a string or a list of strings", k)
		}
	}
	return out, nil
}

// strictJSON decodes one JSON value from b into v, refusing trailing data.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func (rd *reader) readData(part string, comp Compression) error {
	zr, closeZ, err := decompress(bufio.NewReader(rd.tr), comp, part)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return malformed(part, "%s", describe(err))
		}
		if h.Typeflag != tar.TypeReg {
			return malformed(part+"/"+h.Name, "not a regular file")
		}
		if !fileNameRE.MatchString(h.Name) {
			return malformed(part, "file name %q: want a base name of letters, digits and _ - . ,", h.Name)
		}
		name := "data/0000/" + h.Name
		if rd.seen[name] {
			return malformed(name, "twice in the data")
		}
		if _, ok := rd.manifest[name]; !ok {
			return malformed(name, "not listed in the manifest")
		}
		f := File{Name: h.Name, Size: h.Size, ModTime: h.ModTime}
		body, sum := hashingReader(tr)
		if rd.opts.File != nil {
			if err := rd.opts.File(f, body); err != nil {
				return &PartError{Part: name, Err: err}
			}
		}
		if _, err := io.Copy(io.Discard, body); err != nil {
			return malformed(name, "%s", describe(err))
		}
		f.SHA256 = hex.EncodeToString(sum.Sum(nil))
		if err := rd.check(name, f.SHA256); err != nil {
			return err
		}
		rd.art.Payload.Files = append(rd.art.Payload.Files, f)
	}
	// Read to the end of the compressed stream so gzip checks its CRC.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return malformed(part, "%s", describe(err))
	}
	if err := closeZ(); err != nil {
		return malformed(part, "%s", describe(err))
	}
	if _, err := io.Copy(io.Discard, rd.tr); err != nil {
		return malformed(part, "%s", describe(err))
	}
	return nil
}

// describe words an I/O error for a message: a short read is a truncation.
func describe(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "truncated (unexpected end of data)"
	}
	return err.Error()
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
