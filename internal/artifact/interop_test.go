package artifact

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// menderArtifact returns the path of mender-artifact (Debian package
// mender-artifact, installed by scripts/install-deps.sh). The interop tests
// skip loudly without it, and fail in CI, which installs it.
func menderArtifact(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("mender-artifact")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mender-artifact is not installed; run scripts/install-deps.sh")
		}
		t.Skip("SKIPPED: mender-artifact is not installed (apt-get install mender-artifact, or scripts/install-deps.sh); the interop tests did not run")
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "%s %s:\n%s", name, strings.Join(args, " "), out.String())
	return out.String()
}

// keyFiles writes a signing key in the PEM form mender-artifact 3.9 takes
// (PKCS#1 RSA, SEC1 EC) and its public key; it returns the paths.
func keyFiles(t *testing.T, dir string, key crypto.Signer) (priv, pub string) {
	t.Helper()
	var block *pem.Block
	switch k := key.(type) {
	case *rsa.PrivateKey:
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	default:
		t.Fatalf("key type %T", key)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	priv, pub = filepath.Join(dir, "key.pem"), filepath.Join(dir, "key.pub")
	require.NoError(t, os.WriteFile(priv, pem.EncodeToMemory(block), 0o600))
	require.NoError(t, os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644))
	return priv, pub
}

// Artifacts mender-artifact writes are read, checked and verified here.
func TestReadsMenderArtifactOutput(t *testing.T) {
	tool := menderArtifact(t)
	rs, ec := rsaKey(t), ecKey(t)
	tests := []struct {
		name        string
		typ         string
		compression string
		key         crypto.Signer
		devices     []string
		extra       []string
		check       func(t *testing.T, art *Artifact)
	}{
		{name: "single-file gzip with meta-data and depends", typ: "single-file", compression: "gzip", devices: []string{"raspberrypi4"},
			extra: []string{"-s", "ArtifactInstall_Enter_00", "-m", "meta.json", "-p", "app.version:2", "-d", "rootfs-image.version:1", "-g", "prod", "-N", "release-0", "-G", "beta"},
			check: func(t *testing.T, art *Artifact) {
				assert.Equal(t, map[string]any{"origin": "test", "n": []any{1.0, 2.0}}, art.Payload.MetaData)
				assert.Equal(t, "2", art.Payload.Provides["app.version"])
				assert.Equal(t, map[string][]string{"rootfs-image.version": {"1"}}, art.Payload.Depends)
				assert.Equal(t, "prod", art.Group)
				assert.Equal(t, []string{"release-0"}, art.DependsNames)
				assert.Equal(t, []string{"beta"}, art.DependsGroups)
				assert.Equal(t, []string{"ArtifactInstall_Enter_00"}, art.Scripts)
			}},
		{name: "directory uncompressed RSA-signed", typ: "directory", compression: "none", key: rs, devices: []string{"qemux86-64", "beaglebone"}},
		{name: "custom module gzip ECDSA-signed", typ: "my-module", compression: "gzip", key: ec, devices: []string{"dev-a"}},
		{name: "custom module uncompressed ECDSA-signed", typ: "script", compression: "none", key: ec, devices: []string{"dev-a", "dev-b", "dev-c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"dest_dir": "/opt/app\n", "filename": "app.bin\n", "app.bin": strings.Repeat("payload ", 5000)}
			args := []string{"write", "module-image", "-T", tt.typ, "-n", "rel-" + tt.typ, "--compression", tt.compression, "-o", filepath.Join(dir, "a.mender")}
			for _, d := range tt.devices {
				args = append(args, "-t", d)
			}
			for _, name := range []string{"dest_dir", "filename", "app.bin"} {
				require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(files[name]), 0o644))
				args = append(args, "-f", filepath.Join(dir, name))
			}
			require.NoError(t, os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"origin":"test","n":[1,2]}`), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "ArtifactInstall_Enter_00"), []byte("#!/bin/sh\nexit 0\n"), 0o755))
			for _, e := range tt.extra {
				if e == "meta.json" || e == "ArtifactInstall_Enter_00" {
					e = filepath.Join(dir, e)
				}
				args = append(args, e)
			}
			var verify crypto.PublicKey
			if tt.key != nil {
				priv, _ := keyFiles(t, dir, tt.key)
				args = append(args, "-k", priv)
				verify = tt.key.Public()
			}
			runTool(t, tool, args...)

			f, err := os.Open(filepath.Join(dir, "a.mender"))
			require.NoError(t, err)
			defer f.Close()
			art, err := Read(f, ReadOptions{VerifyKey: verify})
			require.NoError(t, err)
			assert.Equal(t, "rel-"+tt.typ, art.Name)
			assert.Equal(t, tt.devices, art.DeviceTypes)
			assert.Equal(t, tt.typ, art.Payload.Type)
			assert.Equal(t, Compression(tt.compression), art.Compression)
			assert.Equal(t, "rel-"+tt.typ, art.Payload.Provides["rootfs-image."+tt.typ+".version"])
			assert.Equal(t, []string{"rootfs-image." + tt.typ + ".*"}, art.Payload.ClearsProvides)
			assert.Equal(t, tt.key != nil, art.Signed)
			assert.Equal(t, tt.key != nil, art.Verified)
			require.Len(t, art.Payload.Files, 3)
			for _, pf := range art.Payload.Files {
				assert.Equal(t, int64(len(files[pf.Name])), pf.Size, pf.Name)
				assert.Equal(t, sum([]byte(files[pf.Name])), pf.SHA256, pf.Name)
			}
			if tt.check != nil {
				tt.check(t, art)
			}
			if tt.key != nil {
				_, err := Read(bytesOf(t, filepath.Join(dir, "a.mender")), ReadOptions{VerifyKey: ecKey(t).Public()})
				assert.ErrorIs(t, err, ErrSignature, "another key does not verify")
			}
		})
	}

	// A payload with no files.
	dir := t.TempDir()
	runTool(t, tool, "write", "module-image", "-T", "empty-mod", "-n", "e", "-t", "d", "-o", filepath.Join(dir, "e.mender"))
	art, err := Read(bytesOf(t, filepath.Join(dir, "e.mender")), ReadOptions{})
	require.NoError(t, err)
	assert.Equal(t, "empty-mod", art.Payload.Type)
	assert.Empty(t, art.Payload.Files)

	// lzma is not mender-artifact's default; it is refused by name.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	runTool(t, tool, "write", "module-image", "-T", "single-file", "-n", "x", "-t", "d", "--compression", "lzma", "-f", filepath.Join(dir, "f"), "-o", filepath.Join(dir, "a.mender"))
	_, err = Read(bytesOf(t, filepath.Join(dir, "a.mender")), ReadOptions{})
	assert.ErrorContains(t, err, "header.tar.xz: malformed artifact: xz compression is not supported")
}

func bytesOf(t *testing.T, path string) *bytes.Reader {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.NewReader(b)
}

// Artifacts written here are read back by mender-artifact read and
// validate with the same name, types and checksums.
func TestMenderArtifactReadsOutput(t *testing.T) {
	tool := menderArtifact(t)
	rs, ec := rsaKey(t), ecKey(t)
	tests := []struct {
		name   string
		modify func(*WriteOptions)
		signed bool
	}{
		{name: "single-file gzip", modify: func(*WriteOptions) {}},
		{name: "directory uncompressed", modify: func(o *WriteOptions) { o.Type = "directory"; o.Compression = None }},
		{name: "no files", modify: func(o *WriteOptions) { o.Type = "empty-mod"; o.Files = nil }},
		{name: "custom module RSA-signed", modify: func(o *WriteOptions) { o.Type = "my-module"; o.Signer = rs }, signed: true},
		{name: "single-file uncompressed ECDSA-signed with depends", modify: func(o *WriteOptions) {
			o.Compression = None
			o.Signer = ec
			o.Group = "prod"
			o.DependsNames = []string{"release-0"}
			o.Depends = map[string][]string{"rootfs-image.version": {"1"}}
		}, signed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := baseOptions()
			opts.Files = append(opts.Files, FileFromBytes("big.bin", bytes.Repeat([]byte("0123456789"), 100000)))
			tt.modify(&opts)
			if len(opts.Files) == 0 {
				opts.MetaData = nil
			}
			path := filepath.Join(dir, "a.mender")
			require.NoError(t, os.WriteFile(path, write(t, opts), 0o644))

			var readArgs, validateArgs []string
			if opts.Signer != nil {
				_, pub := keyFiles(t, dir, opts.Signer)
				readArgs = []string{"-k", pub}
				validateArgs = []string{"-k", pub}
			}
			out := runTool(t, tool, append(append([]string{"read"}, readArgs...), path)...)
			assert.Contains(t, out, "Name: "+opts.Name+"\n")
			assert.Contains(t, out, "Version: 3\n")
			assert.Contains(t, out, "Compatible devices: '["+strings.Join(opts.DeviceTypes, " ")+"]'")
			assert.Regexp(t, regexp.MustCompile(`Type:\s+`+regexp.QuoteMeta(opts.Type)+`\n`), out)
			if tt.signed {
				assert.Contains(t, out, "Signature: signed and verified correctly")
			} else {
				assert.Contains(t, out, "Signature: no signature")
			}
			assert.Contains(t, out, "rootfs-image."+opts.Type+".version: "+opts.Name, "default provides")
			assert.Contains(t, out, `Clears Provides: ["rootfs-image.`+opts.Type+`.*"]`)
			if opts.Group != "" {
				assert.Contains(t, out, "Provides group: "+opts.Group)
				assert.Contains(t, out, "Depends on one of artifact(s): ["+strings.Join(opts.DependsNames, " ")+"]")
				assert.Contains(t, out, "rootfs-image.version: 1", "type-info depends")
			}
			for _, in := range opts.Files {
				rc, err := in.Open()
				require.NoError(t, err)
				var b bytes.Buffer
				_, err = b.ReadFrom(rc)
				require.NoError(t, err)
				assert.Regexp(t, regexp.MustCompile(`name:\s+`+regexp.QuoteMeta(in.Name)+`\n\s+size:\s+`+
					strconv.Itoa(b.Len())+`\n.*\n\s+checksum:\s+`+sum(b.Bytes())), out, "file %s", in.Name)
			}
			out = runTool(t, tool, append(append([]string{"validate"}, validateArgs...), path)...)
			assert.Contains(t, out, "validated successfully")
			if tt.signed {
				_, other := keyFiles(t, t.TempDir(), ecKey(t))
				cmd := exec.CommandContext(t.Context(), tool, "validate", "-k", other, path)
				outb, err := cmd.CombinedOutput()
				assert.Error(t, err, "mender-artifact validate with another key must fail: %s", outb)
			}
		})
	}
}
