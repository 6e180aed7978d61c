package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

const artifactUsage = `Usage: simulator artifact COMMAND [flags]

Write and read Mender Artifacts (format version 3, module-image payloads), for users
without mender-artifact. The files are interchangeable with mender-artifact's.

Commands:
  write  make a module-image artifact of any payload type (--type single-file, directory, ...)
  read   check an artifact (every checksum; the signature with --key) and print what it holds

Run 'simulator artifact COMMAND --help' for flags.
`

func cmdArtifact(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, artifactUsage)
		return errUsage
	}
	switch args[0] {
	case "write":
		return artifactWrite(args[1:], stdout, stderr)
	case "read":
		return artifactRead(args[1:], stdout, stderr)
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, artifactUsage)
		return nil
	}
	fmt.Fprintf(stderr, "simulator artifact: unknown command %q\n\n%s", args[0], artifactUsage)
	return errUsage
}

// kvFlag collects repeatable KEY:VALUE flags.
type kvFlag struct {
	m    map[string]string
	keys []string
}

func (f *kvFlag) String() string { return strings.Join(f.keys, ",") }
func (f *kvFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY:VALUE", v)
	}
	if f.m == nil {
		f.m = map[string]string{}
	}
	if _, dup := f.m[k]; dup {
		return fmt.Errorf("key %q given twice", k)
	}
	f.m[k] = val
	f.keys = append(f.keys, k)
	return nil
}

// singleFileNames are the files the single-file update module reads
// besides the payload.
var singleFileNames = []string{"dest_dir", "filename", "permissions"}

func artifactWrite(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("artifact write", `Write a module-image Mender Artifact (format version 3), as
'mender-artifact write module-image' does.

With --type single-file, give one --file and an absolute --dest-dir: the artifact then holds
dest_dir, filename and permissions files besides the file, as the single-file update module
expects (the file lands as DEST-DIR/BASENAME with the file's mode). For any other type the
--file files are the payload as given, plus a dest_dir file when --dest-dir is set (the
directory module's convention).`, stdout, stderr)
	fs.usage = "simulator artifact write --type MODULE --name NAME --device-type TYPE [--file FILE…] [--dest-dir DIR] --output FILE [flags]"
	typ := fs.String("type", "", "payload `MODULE`: the update module that installs it, e.g. single-file or directory (required)")
	name := fs.String("name", "", "artifact `NAME` (artifact_provides.artifact_name; required)")
	var devices, dependsNames, dependsGroups listFlag
	var files, clears repeatFlag
	fs.Var(&devices, "device-type", "compatible device `TYPE` (repeatable or comma-separated; required)")
	fs.Var(&files, "file", "payload `FILE` (repeatable; exactly one for single-file)")
	destDir := fs.String("dest-dir", "", "absolute target `DIR` on the device (required for single-file)")
	output := fs.String("output", "", "artifact `FILE` to write (required; also -o)")
	fs.StringVar(output, "o", "", "artifact `FILE` to write (alias of --output)")
	fs.hide("o")
	metaData := fs.String("meta-data", "", "`FILE` with the payload's meta-data, a JSON object")
	provides, depends := &kvFlag{}, &kvFlag{}
	fs.Var(provides, "provides", "`KEY:VALUE` added to the payload's artifact_provides (repeatable)")
	fs.Var(depends, "depends", "`KEY:VALUE` added to the payload's artifact_depends (repeatable)")
	group := fs.String("provides-group", "", "`GROUP` the artifact provides (artifact_group)")
	fs.Var(&dependsNames, "depends-name", "artifact `NAME` the device must have installed (repeatable)")
	fs.Var(&dependsGroups, "depends-group", "artifact `GROUP` the device must be in (repeatable)")
	fs.Var(&clears, "clears-provides", "`PATTERN` added to clears_artifact_provides (repeatable)")
	compression := fs.String("compression", "gzip", "`KIND` of compression: gzip or none")
	keyFile := fs.String("key", "", "private key `FILE` (PEM, RSA or ECDSA P-256) to sign the manifest with")
	force := fs.Bool("force", false, "overwrite an existing output file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlags(fs, "type", *typ, "name", *name, "output", *output); err != nil {
		return err
	}
	if len(devices) == 0 {
		return requireFlag(fs, "device-type", "")
	}
	opts := artifact.WriteOptions{
		Name: *name, Group: *group, DeviceTypes: devices, DependsNames: dependsNames, DependsGroups: dependsGroups,
		Type: *typ, Compression: artifact.Compression(*compression),
	}
	if opts.Compression != artifact.Gzip && opts.Compression != artifact.None {
		return fmt.Errorf("--compression %q: want gzip or none (xz and zstd are not supported)", *compression)
	}
	if len(provides.m) > 0 {
		opts.Provides = map[string]string{"rootfs-image." + *typ + ".version": *name}
		for k, v := range provides.m {
			opts.Provides[k] = v
		}
	}
	for k, v := range depends.m {
		if opts.Depends == nil {
			opts.Depends = map[string][]string{}
		}
		opts.Depends[k] = []string{v}
	}
	if len(clears) > 0 {
		opts.ClearsProvides = append([]string{"rootfs-image." + *typ + ".*"}, clears...)
	}
	if *metaData != "" {
		b, err := os.ReadFile(*metaData)
		if err != nil {
			return fmt.Errorf("--meta-data: %w", err)
		}
		if err := json.Unmarshal(b, &opts.MetaData); err != nil || opts.MetaData == nil {
			return fmt.Errorf("--meta-data %s: not a JSON object (want {\"key\": value, ...})", *metaData)
		}
	}
	if *destDir != "" && !filepath.IsAbs(*destDir) {
		return fmt.Errorf("--dest-dir %q: must be an absolute directory on the device, e.g. /opt/app", *destDir)
	}
	var inputs []artifact.InputFile
	for _, p := range files {
		in, err := artifact.FileFromPath(p)
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		inputs = append(inputs, in)
	}
	if *typ == "single-file" {
		if len(files) != 1 {
			return fmt.Errorf("--type single-file takes exactly one --file (got %d)", len(files))
		}
		if *destDir == "" {
			return requireFlag(fs, "dest-dir", "")
		}
		if slices.Contains(singleFileNames, inputs[0].Name) {
			return fmt.Errorf("--file %s: the single-file module reserves the name %q; rename the file", files[0], inputs[0].Name)
		}
		opts.Files = []artifact.InputFile{
			artifact.FileFromBytes("dest_dir", []byte(*destDir+"\n")),
			artifact.FileFromBytes("filename", []byte(inputs[0].Name+"\n")),
			artifact.FileFromBytes("permissions", []byte(fmt.Sprintf("%o\n", inputs[0].Mode.Perm()))),
			inputs[0],
		}
	} else {
		if *destDir != "" {
			for _, in := range inputs {
				if in.Name == "dest_dir" {
					return fmt.Errorf("--file %s: --dest-dir writes a file named dest_dir too; rename the file", in.Name)
				}
			}
			opts.Files = append(opts.Files, artifact.FileFromBytes("dest_dir", []byte(*destDir+"\n")))
		}
		opts.Files = append(opts.Files, inputs...)
	}
	for _, in := range opts.Files {
		if !artifactNameOK(in.Name) {
			return fmt.Errorf("--file %s: artifact file names may hold only letters, digits and _ - . , (rename it)", in.Name)
		}
	}
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		key, err := pki.ParsePrivateKeyPEM(b)
		if err != nil {
			return fmt.Errorf("--key %s: %w", *keyFile, err)
		}
		opts.Signer = key
	}
	if err := refuseExisting(*force, *output); err != nil {
		return err
	}
	if err := writeArtifactFile(*output, opts); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s, type %s, for %s, %d file(s)%s\n", *output, *name, *typ,
		strings.Join(devices, ", "), len(opts.Files), map[bool]string{true: ", signed", false: ""}[opts.Signer != nil])
	return nil
}

// artifactNameOK is the file name rule of the data tar.
func artifactNameOK(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.,", r)) {
			return false
		}
	}
	return true
}

// writeArtifactFile streams the artifact to a temporary file next to path,
// fsyncs it and renames it over path, so path is never half-written.
func writeArtifactFile(path string, opts artifact.WriteOptions) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<16)
	if err := artifact.Write(bw, opts); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}

func artifactRead(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("artifact read", `Read a Mender Artifact: check its structure and every checksum, verify its signature
with --key, and print its name, format version, device types, provides, depends, payload
type and files with sizes and checksums. Exits non-zero if anything is wrong.`, stdout, stderr)
	fs.usage = "simulator artifact read FILE [--key PUBLIC-KEY-FILE]"
	keyFile := fs.String("key", "", "public key `FILE` (PEM) to verify the signature with; an unsigned artifact then fails")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "simulator artifact read: want one artifact FILE, got %d arguments\nRun 'simulator artifact read --help' for the flags.\n", len(pos))
		return errUsage
	}
	path := pos[0]
	var ropts artifact.ReadOptions
	keyFP := ""
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		pub, err := artifact.ParsePublicKeyPEM(b)
		if err != nil {
			return fmt.Errorf("--key %s: %w", *keyFile, err)
		}
		ropts.VerifyKey = pub
		der, _ := x509.MarshalPKIXPublicKey(pub)
		s := sha256.Sum256(der)
		keyFP = "sha256:" + hex.EncodeToString(s[:8])
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	art, err := artifact.Read(bufio.NewReaderSize(f, 1<<16), ropts)
	if err != nil {
		var pe *artifact.PartError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s: %w", path, err)
		}
		return fmt.Errorf("read %s: %w", path, err)
	}
	printArtifact(stdout, path, art, keyFP)
	return nil
}

func printArtifact(w io.Writer, path string, art *artifact.Artifact, keyFP string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	none := func(s string) string {
		if s == "" {
			return "(none)"
		}
		return s
	}
	fmt.Fprintf(tw, "Artifact:\t%s\n", path)
	fmt.Fprintf(tw, "Name:\t%s\n", art.Name)
	fmt.Fprintf(tw, "Format:\tmender, version %d\n", art.FormatVersion)
	fmt.Fprintf(tw, "Compression:\t%s\n", art.Compression)
	fmt.Fprintf(tw, "Device types:\t%s\n", strings.Join(art.DeviceTypes, ", "))
	prov := "artifact_name=" + art.Name
	if art.Group != "" {
		prov += ", artifact_group=" + art.Group
	}
	fmt.Fprintf(tw, "Provides:\t%s\n", prov)
	dep := []string{"device_type=" + strings.Join(art.DeviceTypes, "|")}
	if len(art.DependsNames) > 0 {
		dep = append(dep, "artifact_name="+strings.Join(art.DependsNames, "|"))
	}
	if len(art.DependsGroups) > 0 {
		dep = append(dep, "artifact_group="+strings.Join(art.DependsGroups, "|"))
	}
	fmt.Fprintf(tw, "Depends:\t%s\n", strings.Join(dep, ", "))
	switch {
	case art.Verified:
		fmt.Fprintf(tw, "Signature:\tsigned, verified with key %s\n", keyFP)
	case art.Signed:
		fmt.Fprintf(tw, "Signature:\tsigned, not verified (give --key to verify)\n")
	default:
		fmt.Fprintf(tw, "Signature:\tunsigned\n")
	}
	fmt.Fprintf(tw, "State scripts:\t%s\n", none(strings.Join(art.Scripts, ", ")))
	p := art.Payload
	fmt.Fprintf(tw, "Payload type:\t%s\n", p.Type)
	fmt.Fprintf(tw, "Payload provides:\t%s\n", none(joinMap(p.Provides, func(v string) string { return v })))
	fmt.Fprintf(tw, "Payload depends:\t%s\n", none(joinMap(p.Depends, func(v []string) string { return strings.Join(v, "|") })))
	fmt.Fprintf(tw, "Clears provides:\t%s\n", none(strings.Join(p.ClearsProvides, ", ")))
	md := ""
	if p.MetaData != nil {
		b, _ := json.Marshal(p.MetaData)
		md = string(b)
	}
	fmt.Fprintf(tw, "Meta-data:\t%s\n", none(md))
	_ = tw.Flush()
	fmt.Fprintf(w, "Files (%d):\n", len(p.Files))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range p.Files {
		fmt.Fprintf(tw, "  %s\t%d bytes\tsha256:%s\n", f.Name, f.Size, f.SHA256)
	}
	_ = tw.Flush()
}

// joinMap prints a map as sorted "k=v, ..." pairs.
func joinMap[V any](m map[string]V, str func(V) string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + str(m[k])
	}
	return strings.Join(parts, ", ")
}
