package artifact

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return k
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// baseOptions is a single-file artifact as single-file-artifact-gen makes it.
func baseOptions() WriteOptions {
	return WriteOptions{
		Name: "release-1", DeviceTypes: []string{"raspberrypi4", "qemux86-64"}, Type: "single-file",
		MetaData: map[string]any{"origin": "test"},
		Files: []InputFile{
			FileFromBytes("dest_dir", []byte("/opt/app\n")),
			FileFromBytes("filename", []byte("app.conf\n")),
			FileFromBytes("app.conf", []byte("key = value\n")),
		},
		ModTime: time.Unix(1700000000, 0),
	}
}

func write(t testing.TB, opts WriteOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, Write(&buf, opts))
	return buf.Bytes()
}

func TestWriteReadRoundTrip(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	tests := []struct {
		name   string
		modify func(*WriteOptions)
		key    crypto.PublicKey
	}{
		{name: "gzip", modify: func(*WriteOptions) {}},
		{name: "none", modify: func(o *WriteOptions) { o.Compression = None }},
		{name: "rsa signed", modify: func(o *WriteOptions) { o.Signer = rs }, key: &rs.PublicKey},
		{name: "ecdsa signed uncompressed", modify: func(o *WriteOptions) { o.Signer = ec; o.Compression = None }, key: &ec.PublicKey},
		{name: "directory type, depends and groups, no files", modify: func(o *WriteOptions) {
			o.Type = "directory"
			o.Files = nil
			o.MetaData = nil
			o.Group = "prod"
			o.DependsNames = []string{"release-0"}
			o.DependsGroups = []string{"prod", "beta"}
			o.Depends = map[string][]string{"rootfs-image.version": {"1"}, "board": {"a", "b"}}
			o.Provides = map[string]string{"app.version": "2"}
			o.ClearsProvides = []string{}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := baseOptions()
			tt.modify(&opts)
			b := write(t, opts)
			var got = map[string]string{}
			art, err := Read(bytes.NewReader(b), ReadOptions{VerifyKey: tt.key, File: func(f File, r io.Reader) error {
				c, err := io.ReadAll(r)
				got[f.Name] = string(c)
				return err
			}})
			require.NoError(t, err)
			assert.Equal(t, 3, art.FormatVersion)
			assert.Equal(t, opts.Name, art.Name)
			assert.Equal(t, opts.Group, art.Group)
			assert.Equal(t, opts.DeviceTypes, art.DeviceTypes)
			assert.Equal(t, opts.DependsNames, art.DependsNames)
			assert.Equal(t, opts.DependsGroups, art.DependsGroups)
			assert.Equal(t, opts.Type, art.Payload.Type)
			wantComp := opts.Compression
			if wantComp == "" {
				wantComp = Gzip
			}
			assert.Equal(t, wantComp, art.Compression)
			assert.Equal(t, opts.Signer != nil, art.Signed)
			assert.Equal(t, tt.key != nil, art.Verified)
			if opts.Provides == nil {
				assert.Equal(t, map[string]string{"rootfs-image." + opts.Type + ".version": opts.Name}, art.Payload.Provides)
				assert.Equal(t, []string{"rootfs-image." + opts.Type + ".*"}, art.Payload.ClearsProvides)
			} else {
				assert.Equal(t, opts.Provides, art.Payload.Provides)
				assert.Empty(t, art.Payload.ClearsProvides)
			}
			if len(opts.Depends) > 0 {
				assert.Equal(t, opts.Depends, art.Payload.Depends)
			}
			assert.Equal(t, opts.MetaData, art.Payload.MetaData)
			require.Len(t, art.Payload.Files, len(opts.Files))
			for i, in := range opts.Files {
				rc, err := in.Open()
				require.NoError(t, err)
				content, _ := io.ReadAll(rc)
				f := art.Payload.Files[i]
				assert.Equal(t, in.Name, f.Name)
				assert.Equal(t, int64(len(content)), f.Size)
				assert.Equal(t, sum(content), f.SHA256)
				assert.Equal(t, string(content), got[in.Name], "streamed content of %s", in.Name)
			}
		})
	}
}

// entries splits an artifact into its outer tar entries.
type entry struct {
	name string
	body []byte
}

func entries(t testing.TB, b []byte) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		body, err := io.ReadAll(tr)
		require.NoError(t, err)
		out = append(out, entry{h.Name, body})
	}
}

func join(t testing.TB, es []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(e.body)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

// tarGz makes a gzip tar of name, content pairs.
func tarGz(t testing.TB, pairs ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for i := 0; i+1 < len(pairs); i += 2 {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: pairs[i], Mode: 0o600, Size: int64(len(pairs[i+1])), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(pairs[i+1]))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// withHeader replaces the header and fixes the manifest so only the
// header's content is wrong.
func withHeader(t testing.TB, es []entry, header []byte) []entry {
	t.Helper()
	out := append([]entry(nil), es...)
	for i := range out {
		if out[i].name == "header.tar.gz" {
			old := sum(out[i].body)
			out[i].body = header
			for j := range out {
				if out[j].name == "manifest" {
					out[j].body = []byte(strings.Replace(string(out[j].body), old, sum(header), 1))
				}
			}
		}
	}
	return out
}

func TestReadRefusesMalformed(t *testing.T) {
	good := write(t, baseOptions())
	es := entries(t, good)
	require.Equal(t, []string{"version", "manifest", "header.tar.gz", "data/0000.tar.gz"},
		[]string{es[0].name, es[1].name, es[2].name, es[3].name}, "mender-artifact's order")
	mod := func(f func([]entry) []entry) []byte {
		c := make([]entry, len(es))
		for i, e := range es {
			c[i] = entry{e.name, append([]byte(nil), e.body...)}
		}
		return join(t, f(c))
	}
	hi := `{"payloads":[{"type":"single-file"}],"artifact_provides":{"artifact_name":"a"},"artifact_depends":{"device_type":["d"]}}`
	ti := `{"type":"single-file"}`
	tests := []struct {
		name  string
		input []byte
		part  string
		want  string
	}{
		{"empty", nil, "version", "empty artifact"},
		{"not a tar", []byte("hello, this is not a tar file at all, but it is long enough to be something" + strings.Repeat("x", 600)), "version", "not a tar archive"},
		{"truncated", good[:len(good)/2], "", "truncated"},
		{"manifest first", mod(func(e []entry) []entry { return append(e[1:2], e[0:1]...) }), "version", "first entry"},
		{"format version 2", mod(func(e []entry) []entry { e[0].body = []byte(`{"format":"mender","version":2}`); return e }), "version", "format version 2 is not supported"},
		{"version checksum", mod(func(e []entry) []entry { e[0].body = []byte(`{"format":"mender", "version":3}`); return e }), "version", "checksum mismatch"},
		{"manifest line", mod(func(e []entry) []entry { e[1].body = append(e[1].body, "nonsense\n"...); return e }), "manifest", "line 6"},
		{"manifest duplicate", mod(func(e []entry) []entry {
			lines := strings.SplitAfter(string(e[1].body), "\n")
			e[1].body = []byte(string(e[1].body) + lines[0])
			return e
		}), "manifest", "listed twice"},
		{"manifest lists a missing file", mod(func(e []entry) []entry {
			e[1].body = append([]byte(strings.Repeat("a", 64)+"  data/0000/ghost\n"), e[1].body...)
			return e
		}), "manifest", "data/0000/ghost, which is not in the artifact"},
		{"header checksum", mod(func(e []entry) []entry { e[2].body[len(e[2].body)-9] ^= 1; return e }), "header.tar.gz", ""},
		{"data file checksum", mod(func(e []entry) []entry {
			e[3].body = tarGz(t, "dest_dir", "/opt/app\n", "filename", "app.conf\n", "app.conf", "key = evil\n")
			return e
		}), "data/0000/app.conf", "checksum mismatch"},
		{"data file not in manifest", mod(func(e []entry) []entry {
			e[3].body = tarGz(t, "extra", "x")
			return e
		}), "data/0000/extra", "not listed in the manifest"},
		{"data tar not gzip", mod(func(e []entry) []entry { e[3].body = []byte("plain"); return e }), "data/0000.tar.gz", "gzip"},
		{"xz", mod(func(e []entry) []entry { e[2].name = "header.tar.xz"; return e }), "header.tar.xz", "xz compression is not supported"},
		{"second payload", mod(func(e []entry) []entry { return append(e, entry{"data/0001.tar.gz", e[3].body}) }), "data/0001.tar.gz", "more than one payload"},
		{"missing data", mod(func(e []entry) []entry { return e[:3] }), "data/0000.tar.gz", "missing"},
		{"augment", mod(func(e []entry) []entry { return append(e[:2], append([]entry{{"manifest-augment", nil}}, e[2:]...)...) }), "manifest-augment", "not supported"},
		{"header-info not first", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "headers/0000/type-info", ti, "header-info", hi))
		}), "header.tar.gz", "want header-info"},
		{"header-info bad json", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", "{", "headers/0000/type-info", ti))
		}), "header.tar.gz/header-info", "truncated"},
		{"no name", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", strings.Replace(hi, `"a"`, `""`, 1), "headers/0000/type-info", ti))
		}), "header.tar.gz/header-info", "artifact_name is empty"},
		{"no device type", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", strings.Replace(hi, `["d"]`, `[]`, 1), "headers/0000/type-info", ti))
		}), "header.tar.gz/header-info", "device_type is empty"},
		{"type mismatch", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", hi, "headers/0000/type-info", `{"type":"directory"}`))
		}), "header.tar.gz/headers/0000/type-info", "does not match"},
		{"no type-info", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", hi))
		}), "header.tar.gz", "no headers/0000/type-info"},
		{"meta-data not an object", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", hi, "headers/0000/type-info", ti, "headers/0000/meta-data", "[1]"))
		}), "header.tar.gz/headers/0000/meta-data", "not a JSON object"},
		{"bad depends", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", hi, "headers/0000/type-info", `{"type":"single-file","artifact_depends":{"k":1}}`))
		}), "header.tar.gz/headers/0000/type-info", "want a string or a list"},
		{"header too big", mod(func(e []entry) []entry {
			return withHeader(t, e, tarGz(t, "header-info", hi, "scripts/ArtifactInstall_Enter_00", strings.Repeat("x", DefaultMaxHeaderSize+1)))
		}), "header.tar.gz", "over the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tt.input), ReadOptions{})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrMalformed)
			if tt.part != "" {
				var pe *PartError
				require.ErrorAs(t, err, &pe)
				assert.Equal(t, tt.part, pe.Part, "the error names the part: %v", err)
			}
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestSignatures(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	opts := baseOptions()
	opts.Signer = ec
	signedEC := write(t, opts)
	opts.Signer = rs
	signedRSA := write(t, opts)
	unsigned := write(t, baseOptions())

	tests := []struct {
		name      string
		art       []byte
		key       crypto.PublicKey
		wantErr   string
		signed    bool
		verifyied bool
	}{
		{"ecdsa good", signedEC, &ec.PublicKey, "", true, true},
		{"rsa good", signedRSA, &rs.PublicKey, "", true, true},
		{"signed, no key", signedEC, nil, "", true, false},
		{"ecdsa wrong key", signedEC, &ecKey(t).PublicKey, "does not verify", true, false},
		{"rsa artifact, ec key", signedRSA, &ec.PublicKey, "does not verify", true, false},
		{"unsigned with key", unsigned, &ec.PublicKey, "not signed", false, false},
		{"p384 key", signedEC, func() crypto.PublicKey {
			k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			return &k.PublicKey
		}(), "P-256 only", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			art, err := Read(bytes.NewReader(tt.art), ReadOptions{VerifyKey: tt.key})
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrSignature)
				assert.Contains(t, err.Error(), "manifest.sig")
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.signed, art.Signed)
			assert.Equal(t, tt.verifyied, art.Verified)
		})
	}

	// mender-artifact's ECDSA signature is the 64-byte r‖s.
	for _, e := range entries(t, signedEC) {
		if e.name == "manifest.sig" {
			assert.Len(t, e.body, 88, "base64 of 64 bytes")
		}
	}
	// A signed manifest pins everything: changing the manifest breaks it.
	es := entries(t, signedRSA)
	es[1].body = append(es[1].body, (strings.Repeat("b", 64) + "  extra\n")...)
	_, err := Read(bytes.NewReader(join(t, es)), ReadOptions{VerifyKey: &rs.PublicKey})
	assert.ErrorIs(t, err, ErrSignature)

	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	opts.Signer = edPriv
	assert.ErrorContains(t, Write(io.Discard, opts), "RSA or ECDSA P-256")
}

func TestParsePublicKeyPEM(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	pkix := func(k crypto.PublicKey) []byte {
		der, err := x509.MarshalPKIXPublicKey(k)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name, want string
		in         []byte
	}{
		{"ec", "", pkix(&ec.PublicKey)},
		{"rsa pkix", "", pkix(&rs.PublicKey)},
		{"rsa pkcs1", "", pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rs.PublicKey)})},
		{"private key", "a private key does not belong here", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
		{"not pem", "no PEM block", []byte("hello")},
		{"ed25519", "RSA or ECDSA P-256", pkix(edPub)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePublicKeyPEM(tt.in)
			if tt.want == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tt.want)
			}
		})
	}
}

func TestWriteValidates(t *testing.T) {
	opts := WriteOptions{Compression: "lzma", Files: []InputFile{FileFromBytes("a/b", nil), FileFromBytes("x", nil), FileFromBytes("x", nil)}}
	err := Write(io.Discard, opts)
	require.Error(t, err)
	for _, want := range []string{"artifact name is empty", "no device type", "payload type is empty", `compression "lzma"`, `file name "a/b"`, `"x" given twice`} {
		assert.ErrorContains(t, err, want)
	}
	// A file that changes between the passes, or has a wrong Size.
	changing := func(size int64, content func(n int) string) InputFile {
		n := 0
		return InputFile{Name: "f", Size: size, Open: func() (io.ReadCloser, error) {
			n++
			return io.NopCloser(strings.NewReader(content(n))), nil
		}}
	}
	for name, f := range map[string]InputFile{
		"grows, size unknown":  changing(0, func(n int) string { return strings.Repeat("x", n) }),
		"grows, size known":    changing(1, func(n int) string { return strings.Repeat("x", n) }),
		"shrinks":              changing(3, func(n int) string { return strings.Repeat("x", 4-n) }),
		"same size, new bytes": changing(2, func(n int) string { return strings.Repeat(string(rune('a'+n)), 2) }),
		"wrong size":           changing(5, func(int) string { return "abc" }),
	} {
		opts = baseOptions()
		opts.Files = []InputFile{f}
		assert.ErrorContains(t, Write(io.Discard, opts), "write artifact file f: changed while the artifact was written", name)
	}
}

// A callback error stops the read and names the file.
func TestReadCallbackError(t *testing.T) {
	boom := errors.New("disk full")
	_, err := Read(bytes.NewReader(write(t, baseOptions())), ReadOptions{File: func(f File, r io.Reader) error { return boom }})
	assert.ErrorIs(t, err, boom)
	assert.ErrorContains(t, err, "data/0000/dest_dir")
}

func FuzzRead(f *testing.F) {
	opts := baseOptions()
	f.Add(write(f, opts))
	opts.Compression = None
	f.Add(write(f, opts))
	opts.Signer = ecKey(f)
	f.Add(write(f, opts))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		art, err := Read(bytes.NewReader(b), ReadOptions{MaxHeaderSize: 1 << 16, File: func(f File, r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		}})
		if err != nil {
			if art != nil {
				t.Fatal("an error with an artifact")
			}
			return
		}
		if art.Name == "" || len(art.DeviceTypes) == 0 || art.Payload.Type == "" {
			t.Fatalf("accepted an artifact without name, device types or type: %+v", art)
		}
		for _, fl := range art.Payload.Files {
			if len(fl.SHA256) != 64 {
				t.Fatalf("file %q without checksum", fl.Name)
			}
		}
	})
}

// zeros is an endless-looking reader of n zero bytes.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.n {
		p = p[:z.n]
	}
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

// Writing and reading a payload far larger than the header bound streams:
// memory allocated stays a small fraction of the payload.
func TestLargePayloadStreams(t *testing.T) {
	const size = 48 << 20
	opts := baseOptions()
	opts.Files = []InputFile{{Name: "rootfs.img", Open: func() (io.ReadCloser, error) { return io.NopCloser(&zeros{size}), nil }}}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Write(pw, opts)) }()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var got int64
	art, err := Read(pr, ReadOptions{MaxHeaderSize: 1 << 20, File: func(f File, r io.Reader) error {
		n, err := io.Copy(io.Discard, r)
		got += n
		return err
	}})
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	assert.Equal(t, int64(size), got)
	require.Len(t, art.Payload.Files, 1)
	assert.Equal(t, int64(size), art.Payload.Files[0].Size)
	z := sha256.New()
	_, _ = io.Copy(z, &zeros{size})
	assert.Equal(t, hex.EncodeToString(z.Sum(nil)), art.Payload.Files[0].SHA256)
	alloc := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, alloc, uint64(size/4), "writing and reading %d bytes allocated %d bytes: not streaming", size, alloc)
}

// Bounds on what Read holds in memory name the part.
func TestReadBounds(t *testing.T) {
	b := write(t, baseOptions())
	_, err := Read(bytes.NewReader(b), ReadOptions{MaxHeaderSize: 100})
	var pe *PartError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "manifest", pe.Part, "the manifest is over 100 bytes: %v", err)
	assert.ErrorContains(t, err, "over the 100 byte limit")
}

// ECDSA signatures in ASN.1 DER (PKCS#11 signers) verify too.
func TestECDSASignatureDER(t *testing.T) {
	ec := ecKey(t)
	opts := baseOptions()
	opts.Signer = ec
	es := entries(t, write(t, opts))
	require.Equal(t, "manifest.sig", es[2].name)
	digest := sha256.Sum256(es[1].body)
	der, err := ecdsa.SignASN1(rand.Reader, ec, digest[:])
	require.NoError(t, err)
	es[2].body = []byte(base64.StdEncoding.EncodeToString(der))
	art, err := Read(bytes.NewReader(join(t, es)), ReadOptions{VerifyKey: &ec.PublicKey})
	require.NoError(t, err)
	assert.True(t, art.Verified)

	es[2].body = []byte("!!not base64")
	_, err = Read(bytes.NewReader(join(t, es)), ReadOptions{VerifyKey: &ec.PublicKey})
	assert.ErrorIs(t, err, ErrSignature)
	assert.ErrorContains(t, err, "manifest.sig: artifact signature: not base64")
}
