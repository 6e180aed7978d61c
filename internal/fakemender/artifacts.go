package fakemender

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Paths of the artifact store.
const (
	pathMgmtArtifacts = "/api/management/v1/deployments/artifacts"
	// artifactContentType is what downloads are served as.
	artifactContentType = "application/vnd.mender-artifact"
)

// DefaultMaxArtifactUploadSize is the default of Options.MaxArtifactUploadSize.
const DefaultMaxArtifactUploadSize = 1 << 30

// DefaultLinkLifetime is the default of Options.LinkLifetime, Mender's
// presigned link lifetime.
const DefaultLinkLifetime = 24 * time.Hour

// Upload form limits (as the deployments service has them).
const (
	maxSizePartLen        = 20
	maxDescriptionPartLen = 1 << 20
	// multipartOverhead bounds what an upload body may carry besides the
	// artifact: the description, the other parts and the part headers.
	multipartOverhead = maxDescriptionPartLen + 64<<10
)

// Image is a stored artifact as the management API shows it.
type Image struct {
	ID                     string              `json:"id"`
	Description            string              `json:"description"`
	Name                   string              `json:"name"`
	DeviceTypesCompatible  []string            `json:"device_types_compatible"`
	Info                   ImageInfo           `json:"info"`
	Signed                 bool                `json:"signed"`
	Updates                []ImageUpdate       `json:"updates"`
	ArtifactProvides       map[string]string   `json:"artifact_provides"`
	ArtifactDepends        map[string][]string `json:"artifact_depends"`
	ClearsArtifactProvides []string            `json:"clears_artifact_provides"`
	// Size is the artifact file's length in bytes.
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// ImageInfo is the artifact's format and version.
type ImageInfo struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
}

// ImageUpdate is one payload of an Image.
type ImageUpdate struct {
	TypeInfo ImageTypeInfo  `json:"type_info"`
	Files    []ImageFile    `json:"files"`
	MetaData map[string]any `json:"meta_data,omitempty"`
}

// ImageTypeInfo is a payload's type (the update module).
type ImageTypeInfo struct {
	Type string `json:"type"`
}

// ImageFile is one payload file of an Image.
type ImageFile struct {
	Name     string    `json:"name"`
	Checksum string    `json:"checksum"`
	Size     int64     `json:"size"`
	Date     time.Time `json:"date"`
}

// storedArtifact is an Image plus what only the server needs.
type storedArtifact struct {
	Image
	Seq int64 `json:"seq"`
	// Checksum is the lowercase hex sha256 of the whole artifact file.
	Checksum string `json:"checksum"`
}

func (a *storedArtifact) view() Image {
	im := a.Image
	im.DeviceTypesCompatible = slices.Clone(im.DeviceTypesCompatible)
	im.Updates = slices.Clone(im.Updates)
	for i := range im.Updates {
		im.Updates[i].Files = slices.Clone(im.Updates[i].Files)
		im.Updates[i].MetaData = maps.Clone(im.Updates[i].MetaData)
	}
	im.ArtifactProvides = maps.Clone(im.ArtifactProvides)
	im.ArtifactDepends = maps.Clone(im.ArtifactDepends)
	im.ClearsArtifactProvides = slices.Clone(im.ClearsArtifactProvides)
	return im
}

// overlaps reports whether a and b share a device type.
func overlaps(a, b []string) bool {
	return slices.ContainsFunc(a, func(t string) bool { return slices.Contains(b, t) })
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// artifactDir returns the artifact directory, creating it (and, without
// Options.ArtifactDir and StatePath, a temporary one) on first use. Stale
// upload files of an earlier process are removed then.
func (s *Server) artifactDir() (string, error) {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	if s.closed {
		return "", errors.New("fake backend closed")
	}
	if s.artDir != "" {
		return s.artDir, nil
	}
	dir := s.opts.ArtifactDir
	switch {
	case dir == "" && s.opts.StatePath != "":
		dir = filepath.Join(filepath.Dir(s.opts.StatePath), "artifacts")
	case dir == "":
		tmp, err := os.MkdirTemp("", "fakemender-artifacts-")
		if err != nil {
			return "", fmt.Errorf("create artifact directory: %w", err)
		}
		s.artDir, s.artDirTemp = tmp, true
		return tmp, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create artifact directory (Options.ArtifactDir): %w", err)
	}
	stale, _ := filepath.Glob(filepath.Join(dir, ".upload-*"))
	for _, f := range stale {
		_ = os.Remove(f)
	}
	s.artDir = dir
	return dir, nil
}

// artifactPath is where artifact id is stored; "" before the directory exists.
func (s *Server) artifactPath(id string) string {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	if s.artDir == "" {
		return ""
	}
	return filepath.Join(s.artDir, id+".mender")
}

// Close removes the temporary artifact directory, if the server made one.
// Stored artifacts of a server with a StatePath or ArtifactDir stay. Close
// is idempotent; the server must not be used afterwards.
func (s *Server) Close() error {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	s.closed = true
	if !s.artDirTemp || s.artDir == "" {
		return nil
	}
	dir := s.artDir
	s.artDir, s.artDirTemp = "", false
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove artifact directory: %w", err)
	}
	return nil
}

// uploadOpts are the form fields of an upload.
type uploadOpts struct {
	description string
	id          string // "" = a new UUID
	size        int64  // -1 = not given
}

// UploadArtifact validates the artifact read from r, stores it and returns
// its Image. Errors wrap ErrInvalid (not a valid artifact: the message names
// the part), ErrConflict (an artifact with the same name and an overlapping
// device type exists) or ErrTooLarge (over Options.MaxArtifactUploadSize).
func (s *Server) UploadArtifact(r io.Reader, description string) (Image, error) {
	if err := s.ensure(); err != nil {
		return Image{}, err
	}
	return s.storeArtifact(r, uploadOpts{description: description, size: -1})
}

// uploadReader counts and bounds what artifact.Read takes from the upload
// and remembers the first error that is not the artifact's fault.
type uploadReader struct {
	r     io.Reader
	n     int64
	limit int64 // the most bytes allowed
	exact int64 // -1, or the exact length the part must have
	err   error // the first reader, size or limit error
	file  *os.File
	sum   hash.Hash
}

func (u *uploadReader) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	max := u.limit
	if u.exact >= 0 {
		max = min(max, u.exact)
	}
	if u.n >= max {
		// Probe one byte to tell "exactly at the bound" from "over it".
		var b [1]byte
		n, err := io.ReadFull(u.r, b[:])
		switch {
		case n == 1 && u.exact >= 0 && u.exact <= u.limit:
			u.err = fmt.Errorf("%w: artifact part is longer than the size part (%d bytes)", ErrInvalid, u.exact)
		case n == 1:
			u.err = fmt.Errorf("%w: artifact is over the %d byte upload limit", ErrTooLarge, u.limit)
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return 0, io.EOF
		default:
			u.err = err
		}
		return 0, u.err
	}
	if int64(len(p)) > max-u.n {
		p = p[:max-u.n]
	}
	n, err := u.r.Read(p)
	if n > 0 {
		if _, werr := u.file.Write(p[:n]); werr != nil {
			u.err = fmt.Errorf("write artifact file: %w", werr)
			return 0, u.err
		}
		u.sum.Write(p[:n])
		u.n += int64(n)
	}
	if err != nil && err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			u.err = fmt.Errorf("%w: request body is over the upload limit", ErrTooLarge)
		} else {
			u.err = fmt.Errorf("%w: read artifact part: %v", ErrInvalid, err)
		}
		return n, u.err
	}
	return n, err
}

// storeArtifact streams r to a temporary file in the artifact directory
// while artifact.Read checks it, then files it under its id. Nothing stays
// on disk or in the state when it fails.
func (s *Server) storeArtifact(r io.Reader, o uploadOpts) (Image, error) {
	limit := s.opts.MaxArtifactUploadSize
	if o.size > limit {
		return Image{}, fmt.Errorf("%w: size %d is over the %d byte upload limit", ErrTooLarge, o.size, limit)
	}
	dir, err := s.artifactDir()
	if err != nil {
		return Image{}, err
	}
	f, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return Image{}, fmt.Errorf("create artifact file: %w", err)
	}
	tmp := f.Name()
	kept := false
	defer func() {
		_ = f.Close()
		if !kept {
			_ = os.Remove(tmp)
		}
	}()
	ur := &uploadReader{r: r, limit: limit, exact: o.size, file: f, sum: sha256.New()}
	art, rerr := artifact.Read(ur, artifact.ReadOptions{})
	if rerr == nil {
		// Keep what follows the tar's end marker so that the stored
		// file is byte for byte what was uploaded.
		_, rerr = io.Copy(io.Discard, ur)
	}
	switch {
	case ur.err != nil:
		return Image{}, ur.err
	case rerr != nil:
		return Image{}, fmt.Errorf("%w: %w", ErrInvalid, rerr)
	case o.size >= 0 && ur.n != o.size:
		return Image{}, fmt.Errorf("%w: artifact part is %d bytes, the size part says %d", ErrInvalid, ur.n, o.size)
	}
	if err := f.Sync(); err != nil {
		return Image{}, fmt.Errorf("write artifact file: %w", err)
	}
	if err := f.Close(); err != nil {
		return Image{}, fmt.Errorf("write artifact file: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	id := o.id
	if id == "" {
		id = newUUID()
	}
	if s.artifacts[id] != nil {
		return Image{}, fmt.Errorf("%w: an artifact with id %s exists", ErrConflict, id)
	}
	for _, other := range s.artifacts {
		if other.Name == art.Name && overlaps(other.DeviceTypesCompatible, art.DeviceTypes) {
			return Image{}, fmt.Errorf("%w: %s", ErrConflict, msgArtifactConflict)
		}
	}
	s.seq++
	sa := &storedArtifact{Image: imageOf(art, id, o.description, ur.n, now), Seq: s.seq, Checksum: hex.EncodeToString(ur.sum.Sum(nil))}
	dst := filepath.Join(dir, id+".mender")
	if err := os.Rename(tmp, dst); err != nil {
		return Image{}, fmt.Errorf("store artifact file: %w", err)
	}
	s.artifacts[id] = sa
	if err := s.saveLocked(); err != nil {
		delete(s.artifacts, id)
		_ = os.Remove(dst)
		return Image{}, err
	}
	kept = true
	s.log.Info("artifact stored", "artifact_id", id, "name", sa.Name, "size", sa.Size, "sha256", sa.Checksum)
	return sa.view(), nil
}

// msgArtifactConflict is the deployments service's 409 message.
const msgArtifactConflict = "An artifact with the same name has conflicting dependencies"

// imageOf describes a checked artifact.
func imageOf(a *artifact.Artifact, id, description string, size int64, now time.Time) Image {
	files := make([]ImageFile, 0, len(a.Payload.Files))
	for _, f := range a.Payload.Files {
		files = append(files, ImageFile{Name: f.Name, Checksum: f.SHA256, Size: f.Size, Date: f.ModTime.UTC()})
	}
	provides := map[string]string{"artifact_name": a.Name}
	if a.Group != "" {
		provides["artifact_group"] = a.Group
	}
	maps.Copy(provides, a.Payload.Provides)
	depends := map[string][]string{"device_type": slices.Clone(a.DeviceTypes)}
	if len(a.DependsNames) > 0 {
		depends["artifact_name"] = slices.Clone(a.DependsNames)
	}
	if len(a.DependsGroups) > 0 {
		depends["artifact_group"] = slices.Clone(a.DependsGroups)
	}
	for k, v := range a.Payload.Depends {
		depends[k] = slices.Clone(v)
	}
	clears := slices.Clone(a.Payload.ClearsProvides)
	if clears == nil {
		clears = []string{}
	}
	return Image{
		ID: id, Description: description, Name: a.Name,
		DeviceTypesCompatible: slices.Clone(a.DeviceTypes),
		Info:                  ImageInfo{Format: "mender", Version: a.FormatVersion},
		Signed:                a.Signed,
		Updates: []ImageUpdate{{
			TypeInfo: ImageTypeInfo{Type: a.Payload.Type}, Files: files, MetaData: a.Payload.MetaData,
		}},
		ArtifactProvides: provides, ArtifactDepends: depends, ClearsArtifactProvides: clears,
		Size: size, Modified: now,
	}
}

// Artifacts returns every stored artifact, sorted by modification time
// then name.
func (s *Server) Artifacts() []Image {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Image{}
	for _, a := range s.sortedArtifactsLocked() {
		out = append(out, a.view())
	}
	return out
}

// ArtifactBytes returns the stored artifact file of id. Errors wrap
// ErrNotFound for an unknown id.
func (s *Server) ArtifactBytes(id string) ([]byte, error) {
	if err := s.ensure(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	a := s.artifacts[id]
	s.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("artifact %s: %w", id, ErrNotFound)
	}
	return os.ReadFile(s.artifactPath(id))
}

func (s *Server) sortedArtifactsLocked() []*storedArtifact {
	return slices.SortedFunc(maps.Values(s.artifacts), func(a, b *storedArtifact) int {
		return cmp.Or(a.Modified.Compare(b.Modified), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Seq, b.Seq))
	})
}

// handleUploadArtifact is POST /api/management/v1/deployments/artifacts:
// multipart/form-data with optional size, description and artifact_id
// parts before the artifact part (unknown parts are skipped). 201 with
// Location; 400 for a bad form or artifact; 409 for a name conflict; 413
// over the upload limit.
func (s *Server) handleUploadArtifact(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	mt, params, err := mime.ParseMediaType(r.Header.Get(menderapi.HeaderContentType))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		menderapi.WriteError(w, http.StatusBadRequest, "request Content-Type must be multipart/form-data with a boundary", rc.id)
		return
	}
	limit := s.opts.MaxArtifactUploadSize
	if r.ContentLength > limit+multipartOverhead {
		menderapi.WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("artifact is over the %d byte upload limit", limit), rc.id)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit+multipartOverhead)
	mr := multipart.NewReader(r.Body, params["boundary"])
	o := uploadOpts{size: -1}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			menderapi.WriteError(w, http.StatusBadRequest, "missing artifact", rc.id)
			return
		}
		if err != nil {
			s.writeUploadError(w, rc, fmt.Errorf("%w: multipart form: %v", ErrInvalid, err))
			return
		}
		switch p.FormName() {
		case "size":
			v, err := formValue(p, maxSizePartLen)
			if err == nil {
				o.size, err = strconv.ParseInt(v, 10, 64)
			}
			if err != nil || o.size < 0 {
				menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("size part: want a decimal byte count of at most %d digits", maxSizePartLen), rc.id)
				return
			}
		case "description":
			v, err := formValue(p, maxDescriptionPartLen)
			if err != nil {
				menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("description part: %v (the limit is %d bytes)", err, maxDescriptionPartLen), rc.id)
				return
			}
			o.description = v
		case "artifact_id":
			v, err := formValue(p, 64)
			if err != nil || !uuidRE.MatchString(v) {
				menderapi.WriteError(w, http.StatusBadRequest, "artifact_id part: want a UUID", rc.id)
				return
			}
			o.id = strings.ToLower(v)
		case "artifact":
			img, err := s.storeArtifact(p, o)
			if err != nil {
				s.writeUploadError(w, rc, err)
				return
			}
			w.Header().Set("Location", pathMgmtArtifacts+"/"+img.ID)
			w.WriteHeader(http.StatusCreated)
			return
		default:
			if _, err := io.Copy(io.Discard, p); err != nil {
				s.writeUploadError(w, rc, fmt.Errorf("%w: multipart form: %v", ErrInvalid, err))
				return
			}
		}
	}
}

// formValue reads a small form part, refusing more than max bytes.
func formValue(p *multipart.Part, max int64) (string, error) {
	b, err := io.ReadAll(io.LimitReader(p, max+1))
	if err != nil {
		return "", err
	}
	if int64(len(b)) > max {
		return "", errors.New("too long")
	}
	return string(b), nil
}

// writeUploadError maps a storeArtifact error to its status.
func (s *Server) writeUploadError(w http.ResponseWriter, rc *reqCtx, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, ErrTooLarge) || errors.As(err, &mbe):
		menderapi.WriteError(w, http.StatusRequestEntityTooLarge, strings.TrimPrefix(err.Error(), ErrTooLarge.Error()+": "), rc.id)
	case errors.Is(err, ErrConflict):
		menderapi.WriteError(w, http.StatusConflict, strings.TrimPrefix(err.Error(), ErrConflict.Error()+": "), rc.id)
	case errors.Is(err, ErrInvalid):
		menderapi.WriteError(w, http.StatusBadRequest, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "), rc.id)
	default:
		s.log.Error("store artifact", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
	}
}

// handleListArtifacts is GET .../artifacts: every artifact, no paging.
func (s *Server) handleListArtifacts(w http.ResponseWriter, _ *http.Request, _ *reqCtx) {
	writeJSON(w, http.StatusOK, s.Artifacts())
}

// handleListArtifactsPaged is GET .../artifacts/list?page&per_page.
func (s *Server) handleListArtifactsPaged(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	pg, ok := parsePagingOrFail(w, r, rc)
	if !ok {
		return
	}
	all := s.Artifacts()
	writePage(w, r, pg, all)
}

// handleGetArtifact is GET .../artifacts/{id}.
func (s *Server) handleGetArtifact(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	a := s.artifacts[rc.params["id"]]
	var im Image
	if a != nil {
		im = a.view()
	}
	s.mu.Unlock()
	if a == nil {
		menderapi.WriteError(w, http.StatusNotFound, "artifact not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, im)
}

// handleArtifactDownloadLink is GET .../artifacts/{id}/download: a signed
// link on the request's host, like Mender's presigned storage link.
func (s *Server) handleArtifactDownloadLink(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	id := rc.params["id"]
	if !uuidRE.MatchString(id) {
		menderapi.WriteError(w, http.StatusBadRequest, "artifact id must be a UUID", rc.id)
		return
	}
	s.mu.Lock()
	a := s.artifacts[id]
	var uri string
	var expire time.Time
	if a != nil {
		uri, expire = s.downloadLinkLocked(r, id)
	}
	s.mu.Unlock()
	if a == nil {
		menderapi.WriteError(w, http.StatusNotFound, "artifact not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"uri": uri, "expire": expire.Format(time.RFC3339)})
}

// handleDeleteArtifact is DELETE .../artifacts/{id}: 204; 404; 409 while
// an unfinished deployment uses it.
func (s *Server) handleDeleteArtifact(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	id := rc.params["id"]
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.artifacts[id]
	if a == nil {
		menderapi.WriteError(w, http.StatusNotFound, "artifact not found", rc.id)
		return
	}
	for _, dep := range s.deployments {
		if slices.Contains(dep.Artifacts, id) && dep.status() != DeploymentFinished {
			menderapi.WriteError(w, http.StatusConflict, "artifact is used in an active deployment", rc.id)
			return
		}
	}
	delete(s.artifacts, id)
	if !s.mutatedLocked(w, rc) {
		s.artifacts[id] = a
		return
	}
	if p := s.artifactPath(id); p != "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove artifact file", "artifact_id", id, "err", err, "request_id", rc.id)
		}
	}
	s.log.Info("artifact deleted", "artifact_id", id, "name", a.Name, "request_id", rc.id)
	w.WriteHeader(http.StatusNoContent)
}

// downloadLinkLocked signs a download link for artifact id.
func (s *Server) downloadLinkLocked(r *http.Request, id string) (string, time.Time) {
	expire := s.now().Add(s.opts.LinkLifetime).UTC().Truncate(time.Second)
	exp := strconv.FormatInt(expire.Unix(), 10)
	return s.baseURLLocked(r) + pathDownloadPrefix + id + "?expires=" + exp + "&sig=" + s.linkSig(id, exp), expire
}

// linkSig is the hex HMAC-SHA256 over the artifact id and expiry.
func (s *Server) linkSig(id, expires string) string {
	m := hmac.New(sha256.New, s.linkKey)
	m.Write([]byte(id + "\n" + expires))
	return hex.EncodeToString(m.Sum(nil))
}

// handleDownload serves an artifact file for a signed link, without a JWT
// like a presigned storage link: 403 for a missing, wrong or expired
// signature, 404 for an unknown artifact, Range and HEAD by ServeContent.
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	id := rc.params["id"]
	q := r.URL.Query()
	exp, sig := q.Get("expires"), q.Get("sig")
	s.mu.Lock()
	want := s.linkSig(id, exp)
	a := s.artifacts[id]
	var name string
	var mod time.Time
	if a != nil {
		name, mod = a.Name, a.Modified
	}
	now := s.now()
	s.mu.Unlock()
	expUnix, err := strconv.ParseInt(exp, 10, 64)
	if sig == "" || err != nil || !hmac.Equal([]byte(sig), []byte(want)) {
		menderapi.WriteError(w, http.StatusForbidden, "missing or invalid link signature", rc.id)
		return
	}
	if now.Unix() > expUnix {
		menderapi.WriteError(w, http.StatusForbidden, "link expired", rc.id)
		return
	}
	if a == nil {
		menderapi.WriteError(w, http.StatusNotFound, "artifact not found", rc.id)
		return
	}
	f, err := os.Open(s.artifactPath(id))
	if err != nil {
		s.log.Error("open artifact file", "artifact_id", id, "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
		return
	}
	defer f.Close()
	w.Header().Set(menderapi.HeaderContentType, artifactContentType)
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name + ".mender"}))
	http.ServeContent(w, r, "", mod, f)
}
