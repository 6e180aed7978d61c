package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
)

// readArtifactFile reads path with internal/artifact and returns the
// artifact and its payload files' contents.
func readArtifactFile(t *testing.T, path string, opts artifact.ReadOptions) (*artifact.Artifact, map[string]string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	files := map[string]string{}
	opts.File = func(fl artifact.File, r io.Reader) error {
		b, err := io.ReadAll(r)
		files[fl.Name] = string(b)
		return err
	}
	art, err := artifact.Read(f, opts)
	require.NoError(t, err)
	return art, files
}

func TestArtifactWriteSingleFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "app.conf")
	require.NoError(t, os.WriteFile(src, []byte("key = value\n"), 0o640))
	require.NoError(t, os.Chmod(src, 0o640))
	out := filepath.Join(dir, "out.mender")
	stdout, stderr, code := sim(t, "artifact", "write", "--type", "single-file", "--name", "conf-1",
		"--device-type", "raspberrypi4", "--device-type", "qemux86-64", "--file", src, "--dest-dir", "/etc/app", "-o", out)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "wrote "+out)

	art, files := readArtifactFile(t, out, artifact.ReadOptions{})
	assert.Equal(t, "conf-1", art.Name)
	assert.Equal(t, []string{"raspberrypi4", "qemux86-64"}, art.DeviceTypes)
	assert.Equal(t, "single-file", art.Payload.Type)
	assert.Equal(t, artifact.Gzip, art.Compression)
	assert.Equal(t, map[string]string{"dest_dir": "/etc/app\n", "filename": "app.conf\n", "permissions": "640\n", "app.conf": "key = value\n"},
		files, "what the single-file module reads")
	names := []string{}
	for _, f := range art.Payload.Files {
		names = append(names, f.Name)
	}
	assert.Equal(t, []string{"dest_dir", "filename", "permissions", "app.conf"}, names, "single-file-artifact-gen's order")

	// simulator artifact read prints it all.
	stdout, stderr, code = sim(t, "artifact", "read", out)
	require.Equal(t, 0, code, stderr)
	sum := sha256.Sum256([]byte("key = value\n"))
	for _, want := range []string{"Name:", "conf-1", "mender, version 3", "raspberrypi4, qemux86-64", "Payload type:", "single-file",
		"rootfs-image.single-file.version=conf-1", "Signature:", "unsigned", "Files (4):", "app.conf", "12 bytes",
		"sha256:" + hex.EncodeToString(sum[:]), "device_type=raspberrypi4|qemux86-64"} {
		assert.Contains(t, stdout, want)
	}

	// An existing output is kept without --force.
	_, stderr, code = sim(t, "artifact", "write", "--type", "single-file", "--name", "conf-2", "--device-type", "d", "--file", src, "--dest-dir", "/etc/app", "-o", out)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "--force")
	art, _ = readArtifactFile(t, out, artifact.ReadOptions{})
	assert.Equal(t, "conf-1", art.Name)

	// mender-artifact accepts it, when installed (internal/artifact's
	// interop tests cover it in depth).
	if tool, err := exec.LookPath("mender-artifact"); err == nil {
		b, err := exec.CommandContext(t.Context(), tool, "validate", out).CombinedOutput()
		assert.NoError(t, err, "mender-artifact validate: %s", b)
	}
}

func TestArtifactWriteGenericSignedAndRead(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.bin"), filepath.Join(dir, "b.txt")
	require.NoError(t, os.WriteFile(a, []byte(strings.Repeat("A", 70000)), 0o644))
	require.NoError(t, os.WriteFile(b, []byte("bee"), 0o644))
	meta := filepath.Join(dir, "meta.json")
	require.NoError(t, os.WriteFile(meta, []byte(`{"version":"2.1"}`), 0o644))

	ecPriv, ecPub := writeKeyPair(t, dir, "ec", mustEC(t))
	rsaPriv, rsaPub := writeKeyPair(t, dir, "rsa", mustRSA(t))
	_, otherPub := writeKeyPair(t, dir, "other", mustEC(t))

	for _, k := range []struct{ name, priv, pub string }{{"ecdsa", ecPriv, ecPub}, {"rsa", rsaPriv, rsaPub}} {
		t.Run(k.name, func(t *testing.T) {
			out := filepath.Join(dir, k.name+".mender")
			_, stderr, code := sim(t, "artifact", "write", "--type", "directory", "--name", "app-2", "--device-type", "dev-a,dev-b",
				"--file", a, "--file", b, "--dest-dir", "/opt/app", "--meta-data", meta, "--provides", "app.version:2.1",
				"--depends", "app.version:2.0", "--provides-group", "prod", "--depends-name", "app-1", "--depends-group", "beta",
				"--compression", "none", "--key", k.priv, "--output", out)
			require.Equal(t, 0, code, stderr)

			art, files := readArtifactFile(t, out, artifact.ReadOptions{})
			assert.Equal(t, artifact.None, art.Compression)
			assert.Equal(t, []string{"dev-a", "dev-b"}, art.DeviceTypes)
			assert.Equal(t, "prod", art.Group)
			assert.Equal(t, []string{"app-1"}, art.DependsNames)
			assert.Equal(t, []string{"beta"}, art.DependsGroups)
			assert.Equal(t, map[string]string{"app.version": "2.1", "rootfs-image.directory.version": "app-2"}, art.Payload.Provides)
			assert.Equal(t, map[string][]string{"app.version": {"2.0"}}, art.Payload.Depends)
			assert.Equal(t, map[string]any{"version": "2.1"}, art.Payload.MetaData)
			assert.Equal(t, "/opt/app\n", files["dest_dir"])
			assert.Len(t, files["a.bin"], 70000)
			assert.Equal(t, "bee", files["b.txt"])
			assert.True(t, art.Signed)

			stdout, stderr, code := sim(t, "artifact", "read", out, "--key", k.pub)
			require.Equal(t, 0, code, stderr)
			assert.Contains(t, stdout, "signed, verified with key sha256:")
			assert.Contains(t, stdout, "app.version=2.1")
			assert.Contains(t, stdout, `{"version":"2.1"}`)

			stdout, _, code = sim(t, "artifact", "read", out)
			assert.Equal(t, 0, code)
			assert.Contains(t, stdout, "signed, not verified (give --key to verify)")

			_, stderr, code = sim(t, "artifact", "read", "--key", otherPub, out)
			assert.Equal(t, 1, code, "another key must not verify")
			assert.Contains(t, stderr, "manifest.sig")
			assert.Contains(t, stderr, "does not verify")
		})
	}
}

func mustEC(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func mustRSA(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return k
}

func writeKeyPair(t *testing.T, dir, name string, key crypto.Signer) (string, string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	require.NoError(t, err)
	priv, pub := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	require.NoError(t, os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644))
	return priv, pub
}

func TestArtifactErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "app.conf")
	require.NoError(t, os.WriteFile(src, []byte("x"), 0o644))
	bad := filepath.Join(dir, "bad name.txt")
	require.NoError(t, os.WriteFile(bad, []byte("x"), 0o644))
	reserved := filepath.Join(dir, "filename")
	require.NoError(t, os.WriteFile(reserved, []byte("x"), 0o644))
	notJSON := filepath.Join(dir, "meta.json")
	require.NoError(t, os.WriteFile(notJSON, []byte(`[1]`), 0o644))
	good := filepath.Join(dir, "good.mender")
	_, stderr, code := sim(t, "artifact", "write", "--type", "single-file", "--name", "n", "--device-type", "d", "--file", src, "--dest-dir", "/x", "-o", good)
	require.Equal(t, 0, code, stderr)
	corrupt := filepath.Join(dir, "corrupt.mender")
	b, err := os.ReadFile(good)
	require.NoError(t, err)
	i := strings.Index(string(b), "data/0000/app.conf")
	require.Positive(t, i)
	b[i-5] ^= 1 // a manifest checksum digit
	if b[i-5] > 'f' || (b[i-5] > '9' && b[i-5] < 'a') {
		b[i-5] = '0'
	}
	require.NoError(t, os.WriteFile(corrupt, b, 0o644))
	_, pubKey := writeKeyPair(t, dir, "k", mustEC(t))

	out := filepath.Join(dir, "o.mender")
	sf := []string{"artifact", "write", "--type", "single-file", "--name", "n", "--device-type", "d"}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", []string{"artifact"}, 2, "Commands:"},
		{"unknown command", []string{"artifact", "sign"}, 2, `unknown command "sign"`},
		{"no type", []string{"artifact", "write", "--name", "n", "--device-type", "d", "-o", out}, 1, "--type is required"},
		{"no device type", []string{"artifact", "write", "--type", "x", "--name", "n", "-o", out}, 1, "--device-type is required"},
		{"no output", append(sf, "--file", src, "--dest-dir", "/x"), 1, "--output is required"},
		{"no dest-dir", append(sf, "--file", src, "-o", out), 1, "--dest-dir is required"},
		{"relative dest-dir", append(sf, "--file", src, "--dest-dir", "x", "-o", out), 1, "--dest-dir \"x\": must be an absolute directory"},
		{"two files", append(sf, "--file", src, "--file", src, "--dest-dir", "/x", "-o", out), 1, "exactly one --file (got 2)"},
		{"missing file", append(sf, "--file", filepath.Join(dir, "nope"), "--dest-dir", "/x", "-o", out), 1, "--file: stat"},
		{"reserved name", append(sf, "--file", reserved, "--dest-dir", "/x", "-o", out), 1, `reserves the name "filename"`},
		{"bad name", append(sf, "--file", bad, "--dest-dir", "/x", "-o", out), 1, "only letters, digits"},
		{"compression", append(sf, "--file", src, "--dest-dir", "/x", "--compression", "lzma", "-o", out), 1, `--compression "lzma": want gzip or none`},
		{"meta-data", append(sf, "--file", src, "--dest-dir", "/x", "--meta-data", notJSON, "-o", out), 1, "not a JSON object"},
		{"provides", append(sf, "--provides", "novalue"), 2, `"novalue": want KEY:VALUE`},
		{"key is not a key", append(sf, "--file", src, "--dest-dir", "/x", "--key", src, "-o", out), 1, "--key " + src},
		{"read no file", []string{"artifact", "read"}, 2, "want one artifact FILE"},
		{"read missing", []string{"artifact", "read", filepath.Join(dir, "nope.mender")}, 1, "no such file"},
		{"read corrupt", []string{"artifact", "read", corrupt}, 1, "data/0000/app.conf: malformed artifact: checksum mismatch"},
		{"read not an artifact", []string{"artifact", "read", src}, 1, "artifact"},
		{"read unsigned with key", []string{"artifact", "read", good, "--key", pubKey}, 1, "not signed"},
		{"read private key as key", []string{"artifact", "read", good, "--key", filepath.Join(dir, "k.key")}, 1, "a private key does not belong here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := sim(t, tt.args...)
			assert.Equal(t, tt.code, code, stderr)
			assert.Contains(t, stderr, tt.want)
			if tt.code == 1 {
				assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %s", stderr)
			}
		})
	}
	_, err = os.Stat(out)
	assert.ErrorIs(t, err, os.ErrNotExist, "no output after an error")
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	assert.Empty(t, left, "no temporary files left")
}

func TestArtifactHelp(t *testing.T) {
	for _, args := range [][]string{
		{"artifact", "--help"}, {"help", "artifact"},
		{"artifact", "write", "--help"}, {"artifact", "read", "-h"}, {"help", "artifact", "write"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			stdout, stderr, code := sim(t, args...)
			assert.Equal(t, 0, code, stderr)
			assert.Empty(t, stderr)
			assert.Contains(t, stdout, "Usage: simulator artifact")
			assert.NotRegexp(t, `(?m)^\s+-[a-z]`, stdout, "flags are spelled --flag")
			assert.NotRegexp(t, `(?m)^  --[a-z0-9-]+ (string|int|value)$`, stdout, "placeholders name what they take")
		})
	}
	stdout, _, _ := sim(t, "artifact", "write", "--help")
	for _, f := range []string{"--type MODULE", "--name NAME", "--device-type TYPE", "--file FILE", "--dest-dir DIR", "--output FILE", "--key FILE", "--compression KIND"} {
		assert.Contains(t, stdout, f)
	}
	stdout, _, _ = sim(t, "--help")
	assert.Contains(t, stdout, "simulator artifact write")
	assert.Contains(t, stdout, "simulator artifact read")
}
