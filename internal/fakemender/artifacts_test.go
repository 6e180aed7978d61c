package fakemender_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
)

const pathArtifacts = "/api/management/v1/deployments/artifacts"

// payloadMarker starts every test payload, so a test can find the payload
// bytes inside an uncompressed artifact.
const payloadMarker = "PAYLOAD-MARKER-0123456789"

// buildArtifact writes an artifact with artifact.Write: a single-file
// payload of size bytes, or another payload type.
func buildArtifact(t *testing.T, name string, types []string, payloadType string, comp artifact.Compression, size int) []byte {
	t.Helper()
	content := []byte(payloadMarker + strings.Repeat("x", max(0, size-len(payloadMarker))))
	files := []artifact.InputFile{artifact.FileFromBytes("payload.bin", content)}
	if payloadType == "single-file" {
		files = append([]artifact.InputFile{
			artifact.FileFromBytes("dest_dir", []byte("/opt\n")),
			artifact.FileFromBytes("filename", []byte("payload.bin\n")),
		}, files...)
	}
	var buf bytes.Buffer
	require.NoError(t, artifact.Write(&buf, artifact.WriteOptions{
		Name: name, DeviceTypes: types, Type: payloadType, Files: files, Compression: comp,
		MetaData: map[string]any{"origin": "test"}, ModTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}))
	return buf.Bytes()
}

// formPart is one multipart part before the artifact.
type formPart struct{ name, value string }

// multipartUpload builds an upload body: the parts in order, then the
// artifact part unless art is nil.
func multipartUpload(t *testing.T, art []byte, parts ...formPart) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		require.NoError(t, mw.WriteField(p.name, p.value))
	}
	if art != nil {
		fw, err := mw.CreateFormFile("artifact", "a.mender")
		require.NoError(t, err)
		_, err = fw.Write(art)
		require.NoError(t, err)
	}
	require.NoError(t, mw.Close())
	return buf.Bytes(), mw.FormDataContentType()
}

func upload(t *testing.T, s http.Handler, mgmt string, art []byte, parts ...formPart) *httptest.ResponseRecorder {
	t.Helper()
	body, ct := multipartUpload(t, art, parts...)
	return do(t, s, req{method: "POST", path: pathArtifacts, body: body, hdr: map[string]string{"Authorization": "Bearer " + mgmt, "Content-Type": ct}})
}

// mustUpload uploads art and returns its id.
func mustUpload(t *testing.T, s http.Handler, mgmt string, art []byte, parts ...formPart) string {
	t.Helper()
	rec := upload(t, s, mgmt, art, parts...)
	require.Equal(t, http.StatusCreated, rec.Code, rec.Body.String())
	loc := rec.Header().Get("Location")
	require.True(t, strings.HasPrefix(loc, pathArtifacts+"/"), "Location %q", loc)
	return strings.TrimPrefix(loc, pathArtifacts+"/")
}

func getJSON(t *testing.T, s http.Handler, mgmt, path string, v any) *httptest.ResponseRecorder {
	t.Helper()
	rec := do(t, s, req{method: "GET", path: path, hdr: bearerHdr(mgmt)})
	if v != nil && rec.Code == http.StatusOK {
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), v), rec.Body.String())
	}
	return rec
}

func TestUploadListGetDownload(t *testing.T) {
	clk := newClock()
	s := newServer(t, fakemender.Options{Now: clk.Now, LinkLifetime: time.Hour})
	mgmt := login(t, s)
	for _, comp := range []artifact.Compression{artifact.Gzip, artifact.None} {
		t.Run(string(comp), func(t *testing.T) {
			name := "release-" + string(comp)
			art := buildArtifact(t, name, []string{"qemu", "rpi4"}, "single-file", comp, 6000)
			id := mustUpload(t, s, mgmt, art, formPart{"size", strconv.Itoa(len(art))}, formPart{"description", "the " + string(comp) + " one"}, formPart{"unknown", "skipped"})

			var im fakemender.Image
			require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathArtifacts+"/"+id, &im).Code)
			assert.Equal(t, id, im.ID)
			assert.Equal(t, name, im.Name)
			assert.Equal(t, "the "+string(comp)+" one", im.Description)
			assert.Equal(t, []string{"qemu", "rpi4"}, im.DeviceTypesCompatible)
			assert.Equal(t, fakemender.ImageInfo{Format: "mender", Version: 3}, im.Info)
			assert.False(t, im.Signed)
			assert.Equal(t, int64(len(art)), im.Size)
			assert.Equal(t, clk.Now(), im.Modified)
			require.Len(t, im.Updates, 1)
			assert.Equal(t, "single-file", im.Updates[0].TypeInfo.Type)
			assert.Equal(t, map[string]any{"origin": "test"}, im.Updates[0].MetaData)
			require.Len(t, im.Updates[0].Files, 3)
			f := im.Updates[0].Files[2]
			assert.Equal(t, "payload.bin", f.Name)
			assert.Equal(t, int64(6000), f.Size)
			assert.Len(t, f.Checksum, 64)
			assert.Equal(t, name, im.ArtifactProvides["artifact_name"])
			assert.Equal(t, name, im.ArtifactProvides["rootfs-image.single-file.version"], "payload provides are merged in")
			assert.Equal(t, []string{"qemu", "rpi4"}, im.ArtifactDepends["device_type"])
			assert.Equal(t, []string{"rootfs-image.single-file.*"}, im.ClearsArtifactProvides)

			// The download link is signed, on the request's host, and
			// serves the uploaded bytes.
			var link struct{ URI, Expire string }
			require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathArtifacts+"/"+id+"/download", &link).Code)
			u, err := url.Parse(link.URI)
			require.NoError(t, err)
			assert.Equal(t, "http://example.com", u.Scheme+"://"+u.Host)
			assert.Equal(t, "/api/devices/v1/deployments/download/"+id, u.Path)
			assert.NotEmpty(t, u.Query().Get("sig"))
			assert.Equal(t, clk.Now().Add(time.Hour).Format(time.RFC3339), link.Expire)
			rec := do(t, s, req{method: "GET", path: u.RequestURI()})
			require.Equal(t, http.StatusOK, rec.Code)
			assert.Equal(t, art, rec.Body.Bytes(), "the stored file is byte for byte the upload")
			assert.Equal(t, strconv.Itoa(len(art)), rec.Header().Get("Content-Length"))
			assert.Equal(t, "attachment; filename="+name+".mender", rec.Header().Get("Content-Disposition"))
			rec = do(t, s, req{method: "GET", path: u.RequestURI(), hdr: map[string]string{"Range": "bytes=100-199"}})
			require.Equal(t, http.StatusPartialContent, rec.Code)
			assert.Equal(t, art[100:200], rec.Body.Bytes())
			assert.Equal(t, "bytes 100-199/"+strconv.Itoa(len(art)), rec.Header().Get("Content-Range"))
		})
	}

	var all []fakemender.Image
	require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathArtifacts, &all).Code)
	require.Len(t, all, 2)
	assert.Equal(t, []string{"release-gzip", "release-none"}, []string{all[0].Name, all[1].Name}, "same time: sorted by name")
	assert.Equal(t, all, s.Artifacts())

	assert.Equal(t, http.StatusNotFound, getJSON(t, s, mgmt, pathArtifacts+"/"+"00000000-0000-4000-8000-000000000000", nil).Code)
	assert.Equal(t, http.StatusNotFound, getJSON(t, s, mgmt, pathArtifacts+"/00000000-0000-4000-8000-000000000000/download", nil).Code)
	assert.Equal(t, http.StatusBadRequest, getJSON(t, s, mgmt, pathArtifacts+"/not-a-uuid/download", nil).Code)
	assert.Equal(t, http.StatusUnauthorized, do(t, s, req{method: "GET", path: pathArtifacts}).Code, "management token required")
}

func TestDownloadLinkSignature(t *testing.T) {
	clk := newClock()
	s := newServer(t, fakemender.Options{Now: clk.Now, LinkLifetime: time.Minute})
	mgmt := login(t, s)
	id := mustUpload(t, s, mgmt, buildArtifact(t, "r1", []string{"qemu"}, "single-file", artifact.Gzip, 100))
	var link struct{ URI string }
	require.Equal(t, http.StatusOK, getJSON(t, s, mgmt, pathArtifacts+"/"+id+"/download", &link).Code)
	u, err := url.Parse(link.URI)
	require.NoError(t, err)
	q := u.Query()
	with := func(key, val string) string {
		q2 := url.Values{}
		for k, v := range q {
			q2[k] = v
		}
		if val == "" {
			q2.Del(key)
		} else {
			q2.Set(key, val)
		}
		return u.Path + "?" + q2.Encode()
	}
	flipped := []byte(q.Get("sig"))
	flipped[0] ^= 1
	tests := []struct {
		name, path string
		want       int
		msg        string
	}{
		{"valid", u.RequestURI(), http.StatusOK, ""},
		{"no sig", with("sig", ""), http.StatusForbidden, "signature"},
		{"wrong sig", with("sig", string(flipped)), http.StatusForbidden, "signature"},
		{"later expiry", with("expires", strconv.FormatInt(clk.Now().Add(time.Hour).Unix(), 10)), http.StatusForbidden, "signature"},
		{"other artifact", strings.Replace(u.RequestURI(), id, "00000000-0000-4000-8000-000000000000", 1), http.StatusForbidden, "signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := do(t, s, req{method: "GET", path: tt.path})
			assert.Equal(t, tt.want, rec.Code, rec.Body.String())
			if tt.msg != "" {
				assert.Contains(t, errorMsg(t, rec).Error, tt.msg)
			}
		})
	}
	clk.Advance(2 * time.Minute)
	rec := do(t, s, req{method: "GET", path: u.RequestURI()})
	assert.Equal(t, http.StatusForbidden, rec.Code)
	assert.Equal(t, "link expired", errorMsg(t, rec).Error)
}

// corrupt returns the artifact with one payload byte changed.
func corrupt(t *testing.T, art []byte) []byte {
	t.Helper()
	i := bytes.Index(art, []byte(payloadMarker))
	require.Positive(t, i, "an uncompressed artifact holds the payload")
	out := bytes.Clone(art)
	out[i+3] ^= 0x20
	return out
}

// version2Artifact is an outer tar whose version file says 2.
func version2Artifact(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	v := []byte(`{"format":"mender","version":2}`)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "version", Mode: 0o600, Size: int64(len(v))}))
	_, err := tw.Write(v)
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

func TestUploadRefusesBadArtifacts(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, fakemender.Options{ArtifactDir: dir})
	mgmt := login(t, s)
	good := buildArtifact(t, "r1", []string{"qemu"}, "single-file", artifact.None, 5000)
	var big bytes.Buffer
	require.NoError(t, artifact.Write(&big, artifact.WriteOptions{
		Name: "big", DeviceTypes: []string{"qemu"}, Type: "single-file",
		MetaData: map[string]any{"blob": strings.Repeat("a", artifact.DefaultMaxHeaderSize+1)},
	}))
	tests := []struct {
		name  string
		art   []byte
		parts []formPart
		want  string
	}{
		{"truncated", good[:len(good)/2], nil, "truncated"},
		{"flipped payload byte", corrupt(t, good), nil, "checksum"},
		{"not a tar", []byte(strings.Repeat("garbage!", 200)), nil, "not a tar"},
		{"format version 2", version2Artifact(t), nil, "format version 2 is not supported"},
		{"header over the bound", big.Bytes(), nil, "over the"},
		{"empty", []byte{}, nil, "empty artifact"},
		{"size part too small", good, []formPart{{"size", strconv.Itoa(len(good) - 1)}}, "longer than the size part"},
		{"size part too large", good, []formPart{{"size", strconv.Itoa(len(good) + 1)}}, "the size part says"},
		{"size not a number", good, []formPart{{"size", "12x"}}, "size part"},
		{"size too long", good, []formPart{{"size", strings.Repeat("1", 21)}}, "size part"},
		{"artifact_id not a UUID", good, []formPart{{"artifact_id", "nope"}}, "artifact_id part: want a UUID"},
		{"description over 1 MiB", good, []formPart{{"description", strings.Repeat("d", 1<<20+1)}}, "description part"},
		{"missing artifact", nil, []formPart{{"description", "x"}}, "missing artifact"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := upload(t, s, mgmt, tt.art, tt.parts...)
			require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
			e := errorMsg(t, rec)
			assert.Contains(t, e.Error, tt.want)
			assert.NotEmpty(t, e.RequestID)
			left, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, left, "nothing stored")
			assert.Empty(t, s.Artifacts())
		})
	}
	rec := do(t, s, req{method: "POST", path: pathArtifacts, body: []byte(`{}`), hdr: bearerHdr(mgmt)})
	assert.Equal(t, http.StatusBadRequest, rec.Code, "a JSON body is not a form")
	assert.Contains(t, errorMsg(t, rec).Error, "multipart/form-data")

	// The good artifact is accepted afterwards, with a given id.
	const id = "0f6c0c59-4c3a-4b8e-9d1c-2f2a4f0a1b2c"
	assert.Equal(t, id, mustUpload(t, s, mgmt, good, formPart{"artifact_id", strings.ToUpper(id)}))
	assert.FileExists(t, filepath.Join(dir, id+".mender"))
}

func TestUploadConflictAndLimit(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, fakemender.Options{ArtifactDir: dir, MaxArtifactUploadSize: 20000})
	mgmt := login(t, s)
	first := mustUpload(t, s, mgmt, buildArtifact(t, "r1", []string{"qemu", "rpi4"}, "single-file", artifact.Gzip, 100))

	rec := upload(t, s, mgmt, buildArtifact(t, "r1", []string{"rpi4", "bbb"}, "directory", artifact.None, 100))
	require.Equal(t, http.StatusConflict, rec.Code, rec.Body.String())
	assert.Equal(t, "An artifact with the same name has conflicting dependencies", errorMsg(t, rec).Error)
	rec = upload(t, s, mgmt, buildArtifact(t, "r2", []string{"qemu"}, "single-file", artifact.Gzip, 100), formPart{"artifact_id", first})
	assert.Equal(t, http.StatusConflict, rec.Code, "the id is taken")

	mustUpload(t, s, mgmt, buildArtifact(t, "r1", []string{"bbb"}, "directory", artifact.None, 100))
	assert.Len(t, s.Artifacts(), 2, "the same name for other device types is fine")

	// Over MaxArtifactUploadSize, with and without a size part.
	huge := buildArtifact(t, "huge", []string{"qemu"}, "single-file", artifact.None, 30000)
	for _, parts := range [][]formPart{nil, {{"size", strconv.Itoa(len(huge))}}} {
		rec = upload(t, s, mgmt, huge, parts...)
		require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code, rec.Body.String())
		assert.Contains(t, errorMsg(t, rec).Error, "20000 byte upload limit")
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "only the two stored artifacts")
	_, err = s.UploadArtifact(bytes.NewReader(huge), "")
	assert.ErrorIs(t, err, fakemender.ErrTooLarge)
	_, err = s.UploadArtifact(strings.NewReader("nope"), "")
	assert.ErrorIs(t, err, fakemender.ErrInvalid)
}

func TestArtifactsPaged(t *testing.T) {
	clk := newClock()
	s := newServer(t, fakemender.Options{Now: clk.Now})
	mgmt := login(t, s)
	var names []string
	for i := range 5 {
		name := "r" + strconv.Itoa(i)
		names = append(names, name)
		_, err := s.UploadArtifact(bytes.NewReader(buildArtifact(t, name, []string{"qemu"}, "single-file", artifact.Gzip, 10)), "")
		require.NoError(t, err)
		clk.Advance(time.Second)
	}
	tests := []struct {
		query     string
		want      []string
		wantLinks []string
	}{
		{"", names, []string{`rel="first"`, `rel="last"`}},
		{"?per_page=2", names[0:2], []string{`<` + pathArtifacts + `/list?page=1&per_page=2>; rel="first"`, `<` + pathArtifacts + `/list?page=2&per_page=2>; rel="next"`, `<` + pathArtifacts + `/list?page=3&per_page=2>; rel="last"`}},
		{"?per_page=2&page=2", names[2:4], []string{`rel="prev"`, `rel="next"`}},
		{"?per_page=2&page=3", names[4:], []string{`rel="prev"`}},
		{"?page=9", []string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var got []fakemender.Image
			rec := getJSON(t, s, mgmt, pathArtifacts+"/list"+tt.query, &got)
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			gotNames := []string{}
			for _, im := range got {
				gotNames = append(gotNames, im.Name)
			}
			assert.Equal(t, tt.want, gotNames)
			assert.Equal(t, "5", rec.Header().Get("X-Total-Count"))
			for _, l := range tt.wantLinks {
				assert.Contains(t, rec.Header().Get("Link"), l)
			}
			if !strings.Contains(strings.Join(tt.wantLinks, ""), "next") {
				assert.NotContains(t, rec.Header().Get("Link"), `rel="next"`)
			}
		})
	}
	for _, q := range []string{"?per_page=501", "?per_page=0", "?page=0", "?page=x"} {
		assert.Equal(t, http.StatusBadRequest, getJSON(t, s, mgmt, pathArtifacts+"/list"+q, nil).Code, q)
	}
}

func TestDeleteArtifact(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, fakemender.Options{ArtifactDir: dir})
	mgmt := login(t, s)
	_, devID, tok := acceptedDevice(t, s, "02:00:00:00:00:70")
	id := mustUpload(t, s, mgmt, buildArtifact(t, "r2", []string{"qemu"}, "single-file", artifact.Gzip, 100))
	del := func(id string) int {
		return do(t, s, req{method: "DELETE", path: pathArtifacts + "/" + id, hdr: bearerHdr(mgmt)}).Code
	}
	depID := createDeployment(t, s, mgmt, map[string]any{"name": "d", "artifact_name": "r2", "devices": []string{devID}})
	assert.Equal(t, http.StatusConflict, del(id), "used by a pending deployment")
	require.Equal(t, http.StatusOK, do(t, s, req{method: "GET", path: nextGet("r1", "qemu"), hdr: bearerHdr(tok)}).Code)
	assert.Equal(t, http.StatusConflict, del(id), "used by an active deployment")
	require.Equal(t, http.StatusNoContent, deviceStatus(t, s, tok, depID, "success"))
	require.Equal(t, http.StatusNoContent, del(id), "the deployment finished")
	assert.NoFileExists(t, filepath.Join(dir, id+".mender"))
	assert.Empty(t, s.Artifacts())
	assert.Equal(t, http.StatusNotFound, del(id))
}

func TestArtifactsSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s1 := newServer(t, fakemender.Options{StatePath: path})
	mgmt := login(t, s1)
	art := buildArtifact(t, "r1", []string{"qemu"}, "single-file", artifact.Gzip, 3000)
	id := mustUpload(t, s1, mgmt, art, formPart{"description", "kept"})
	var link struct{ URI string }
	require.Equal(t, http.StatusOK, getJSON(t, s1, mgmt, pathArtifacts+"/"+id+"/download", &link).Code)

	s2 := newServer(t, fakemender.Options{StatePath: path})
	assert.Equal(t, s1.Artifacts(), s2.Artifacts())
	got, err := s2.ArtifactBytes(id)
	require.NoError(t, err)
	assert.Equal(t, art, got)
	u, err := url.Parse(link.URI)
	require.NoError(t, err)
	rec := do(t, s2, req{method: "GET", path: u.RequestURI()})
	require.Equal(t, http.StatusOK, rec.Code, "the link key survives too: %s", rec.Body.String())
	sum := sha256.Sum256(rec.Body.Bytes())
	sum0 := sha256.Sum256(art)
	assert.Equal(t, hex.EncodeToString(sum0[:]), hex.EncodeToString(sum[:]))

	// A missing artifact file is a clear error at load.
	require.NoError(t, os.Remove(filepath.Join(filepath.Dir(path), "artifacts", id+".mender")))
	_, err = fakemender.New(fakemender.Options{StatePath: path})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "restore the artifact directory")
}

func TestTempArtifactDirRemovedByClose(t *testing.T) {
	s, err := fakemender.New(fakemender.Options{})
	require.NoError(t, err)
	_, err = s.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "r1", DeviceTypes: []string{"qemu"}})
	require.NoError(t, err)
	id := s.Artifacts()[0].ID
	b, err := s.ArtifactBytes(id)
	require.NoError(t, err)
	require.NotEmpty(t, b)
	require.NoError(t, s.Close())
	_, err = s.ArtifactBytes(id)
	assert.Error(t, err, "the temporary directory is gone")
	assert.NoError(t, s.Close(), "Close is idempotent")
}
