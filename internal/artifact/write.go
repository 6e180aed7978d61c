package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// WriteOptions describes the artifact [Write] makes.
type WriteOptions struct {
	// Name is artifact_provides.artifact_name (required).
	Name string
	// Group is artifact_provides.artifact_group; "" = none.
	Group string
	// DeviceTypes is artifact_depends.device_type (at least one).
	DeviceTypes []string
	// DependsNames and DependsGroups are artifact_depends.artifact_name
	// and artifact_group; nil = none.
	DependsNames, DependsGroups []string
	// Type is the payload type: the update module's name (required).
	Type string
	// Provides is type-info artifact_provides. Nil = mender-artifact's
	// default {"rootfs-image.TYPE.version": Name}; empty non-nil = none.
	Provides map[string]string
	// Depends is type-info artifact_depends; a one-element list is
	// written as a string, as mender-artifact's -d does. Nil = none.
	Depends map[string][]string
	// ClearsProvides is type-info clears_artifact_provides. Nil =
	// mender-artifact's default ["rootfs-image.TYPE.*"]; empty non-nil = none.
	ClearsProvides []string
	// MetaData is the meta-data JSON object; nil or empty = no meta-data.
	MetaData map[string]any
	// Files are the payload files, in order; each is read twice (to
	// checksum and measure the data, then to write it) and must not
	// change in between.
	Files []InputFile
	// Compression of the header and data tars; "" = Gzip.
	Compression Compression
	// Signer, when non-nil (an RSA or ECDSA P-256 key), signs the
	// manifest into manifest.sig. Nil = unsigned.
	Signer crypto.Signer
	// ModTime is the modification time of the tar entries the writer
	// makes (files keep their own); zero = the current time.
	ModTime time.Time
}

// InputFile is a payload file for [Write].
type InputFile struct {
	// Name is the base name in the artifact: letters, digits, _ - . ,
	Name string
	// Mode is the permission bits in the data tar; 0 = 0644.
	Mode os.FileMode
	// ModTime is the data tar entry's time; zero = WriteOptions.ModTime.
	ModTime time.Time
	// Size is the content's length in bytes when known; 0 = unknown,
	// measured by reading the content once more. A wrong size fails.
	Size int64
	// Open returns the content; it is called twice (three times when
	// Size is 0), and must return the same bytes each time.
	Open func() (io.ReadCloser, error)
}

// FileFromPath is an InputFile reading the file at path, named by its
// base name, with its mode and modification time.
func FileFromPath(path string) (InputFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return InputFile{}, err
	}
	if !fi.Mode().IsRegular() {
		return InputFile{}, fmt.Errorf("%s: not a regular file", path)
	}
	return InputFile{Name: filepath.Base(path), Mode: fi.Mode().Perm(), ModTime: fi.ModTime(), Size: fi.Size(),
		Open: func() (io.ReadCloser, error) { return os.Open(path) }}, nil
}

// FileFromBytes is an InputFile with content b.
func FileFromBytes(name string, b []byte) InputFile {
	return InputFile{Name: name, Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func (o *WriteOptions) validate() error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("artifact name is empty"))
	}
	if len(o.DeviceTypes) == 0 {
		errs = append(errs, errors.New("no device type"))
	}
	for _, d := range o.DeviceTypes {
		if d == "" {
			errs = append(errs, errors.New("empty device type"))
		}
	}
	if o.Type == "" {
		errs = append(errs, errors.New("payload type is empty"))
	}
	switch o.Compression {
	case "":
		o.Compression = Gzip
	case Gzip, None:
	default:
		errs = append(errs, fmt.Errorf("compression %q: want gzip or none", o.Compression))
	}
	seen := map[string]bool{}
	for _, f := range o.Files {
		switch {
		case !fileNameRE.MatchString(f.Name):
			errs = append(errs, fmt.Errorf("file name %q: want letters, digits and _ - . , only", f.Name))
		case seen[f.Name]:
			errs = append(errs, fmt.Errorf("file name %q given twice", f.Name))
		case f.Open == nil:
			errs = append(errs, fmt.Errorf("file %q has no Open", f.Name))
		}
		seen[f.Name] = true
	}
	if o.Signer != nil {
		if err := checkKey(o.Signer.Public()); err != nil {
			errs = append(errs, fmt.Errorf("signing key: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Write writes an artifact to w.
func Write(w io.Writer, opts WriteOptions) error {
	if err := opts.validate(); err != nil {
		return fmt.Errorf("write artifact: %w", err)
	}
	if opts.ModTime.IsZero() {
		opts.ModTime = time.Now()
	}
	ext := opts.Compression.ext()

	// Pass 1: checksum every file and measure the data tar.
	sums := make([]string, len(opts.Files))
	sizes := make([]int64, len(opts.Files))
	dataSize := &countWriter{}
	if err := writeData(dataSize, &opts, sums, sizes, true); err != nil {
		return err
	}

	header, err := buildHeader(&opts)
	if err != nil {
		return err
	}
	version := []byte(`{"format":"mender","version":3}`)
	var manifest bytes.Buffer
	for i, f := range opts.Files {
		fmt.Fprintf(&manifest, "%s  data/0000/%s\n", sums[i], f.Name)
	}
	fmt.Fprintf(&manifest, "%s  header.tar%s\n", sha256Hex(header), ext)
	fmt.Fprintf(&manifest, "%s  version\n", sha256Hex(version))

	tw := tar.NewWriter(w)
	small := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("write artifact %s: %w", name, err)
		}
		if _, err := tw.Write(b); err != nil {
			return fmt.Errorf("write artifact %s: %w", name, err)
		}
		return nil
	}
	if err := small("version", version); err != nil {
		return err
	}
	if err := small("manifest", manifest.Bytes()); err != nil {
		return err
	}
	if opts.Signer != nil {
		sig, err := sign(opts.Signer, manifest.Bytes())
		if err != nil {
			return fmt.Errorf("write artifact: sign manifest: %w", err)
		}
		if err := small("manifest.sig", []byte(base64.StdEncoding.EncodeToString(sig))); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "header.tar" + ext, Mode: 0o600, Size: int64(len(header)), ModTime: opts.ModTime, Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("write artifact header: %w", err)
	}
	if _, err := tw.Write(header); err != nil {
		return fmt.Errorf("write artifact header: %w", err)
	}
	dataName := "data/0000.tar" + ext
	if err := tw.WriteHeader(&tar.Header{Name: dataName, Mode: 0o600, Size: dataSize.n, ModTime: opts.ModTime, Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("write artifact %s: %w", dataName, err)
	}
	// Pass 2: the data, checked against pass 1.
	if err := writeData(tw, &opts, sums, sizes, false); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write artifact: %w", err)
	}
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// compressor wraps w for the compression; the result must be closed.
func compressor(w io.Writer, c Compression) io.WriteCloser {
	if c == Gzip {
		zw, _ := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		return zw
	}
	return nopWriteCloser{w}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// writeData writes the (compressed) data tar to w. With first, it fills
// sums and sizes; otherwise it checks the files against them.
func writeData(w io.Writer, opts *WriteOptions, sums []string, sizes []int64, first bool) error {
	zw := compressor(w, opts.Compression)
	tw := tar.NewWriter(zw)
	for i, f := range opts.Files {
		if err := writeDataFile(tw, opts, f, &sums[i], &sizes[i], first); err != nil {
			return fmt.Errorf("write artifact file %s: %w", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write artifact data: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("write artifact data: %w", err)
	}
	return nil
}

func writeDataFile(tw *tar.Writer, opts *WriteOptions, f InputFile, sum *string, size *int64, first bool) error {
	if first {
		*size = f.Size
		if *size <= 0 {
			// The tar entry needs the size first: measure it.
			rc, err := f.Open()
			if err != nil {
				return err
			}
			*size, err = io.Copy(io.Discard, rc)
			_ = rc.Close()
			if err != nil {
				return err
			}
		}
	}
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	mode, mt := f.Mode, f.ModTime
	if mode == 0 {
		mode = 0o644
	}
	if mt.IsZero() {
		mt = opts.ModTime
	}
	if err := tw.WriteHeader(&tar.Header{Name: f.Name, Mode: int64(mode.Perm()), Size: *size, ModTime: mt, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	// Count and hash what is read (at most one byte more than the
	// size), so a file that grew or shrank is caught.
	h := sha256.New()
	cr := &countReader{r: io.LimitReader(rc, *size+1)}
	_, err = io.Copy(tw, io.TeeReader(cr, h))
	if err != nil && !errors.Is(err, tar.ErrWriteTooLong) {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if first && cr.n == *size {
		*sum = got
	}
	if cr.n != *size || got != *sum {
		return errors.New("changed while the artifact was written")
	}
	return nil
}

// buildHeader returns the (compressed) header tar.
func buildHeader(opts *WriteOptions) ([]byte, error) {
	var hi headerInfo
	typ := opts.Type
	hi.Payloads = append(hi.Payloads, struct {
		Type *string `json:"type"`
	}{&typ})
	hi.Provides.Name = opts.Name
	hi.Provides.Group = opts.Group
	hi.Depends.DeviceType = opts.DeviceTypes
	hi.Depends.Name = opts.DependsNames
	hi.Depends.Group = opts.DependsGroups
	ti := typeInfo{Type: &typ, Provides: opts.Provides, ClearsProvides: opts.ClearsProvides}
	if ti.Provides == nil {
		ti.Provides = map[string]string{"rootfs-image." + typ + ".version": opts.Name}
	}
	if ti.ClearsProvides == nil {
		ti.ClearsProvides = []string{"rootfs-image." + typ + ".*"}
	}
	if len(opts.Depends) > 0 {
		ti.Depends = map[string]any{}
		for k, v := range opts.Depends {
			if len(v) == 1 {
				ti.Depends[k] = v[0]
			} else {
				ti.Depends[k] = v
			}
		}
	}
	var buf bytes.Buffer
	zw := compressor(&buf, opts.Compression)
	tw := tar.NewWriter(zw)
	add := func(name string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("write artifact %s: %w", name, err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	}
	if err := add("header-info", hi); err != nil {
		return nil, err
	}
	if err := add("headers/0000/type-info", ti); err != nil {
		return nil, err
	}
	if len(opts.MetaData) > 0 {
		if err := add("headers/0000/meta-data", opts.MetaData); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
