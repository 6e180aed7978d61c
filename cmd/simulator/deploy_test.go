package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// contractServer is a small management API that follows the deployments
// service contract deploy is written against (mender-stack notes §4.1):
// enough to reach the cases the real fake backend cannot easily produce
// (a 409 racing another upload, scripted device progress, a server error).
type contractServer struct {
	t        *testing.T
	user     string
	password string

	mu     sync.Mutex
	images []mgmtImage
	// uploadStatus, when set, answers the next upload with this status
	// (and, for 409, lists conflictImage afterwards).
	uploadStatus  int
	conflictImage *mgmtImage
	uploads       []contractUpload
	// scripts are the statuses each device goes through, one step per
	// GET of the devices list; the first entry is the status when the
	// device first appears. A device without a script never appears.
	scripts     map[string][]string
	polls       int
	deployments []contractDeployment
	logs        map[string]string
	// onPoll, when set, runs on every GET of the devices list.
	onPoll func(n int)
	// failPolls answers this many GETs of the devices list with 503.
	failPolls int
}

type contractUpload struct {
	parts       []string
	size        int64
	description string
	got         int64
}

type contractDeployment struct {
	ID           string
	Name         string
	ArtifactName string
	Devices      []string
	All          bool
}

const contractToken = "contract-token-b2c4"

func newContractServer(t *testing.T) *contractServer {
	return &contractServer{t: t, user: "admin@example.com", password: "s3cret-pw", scripts: map[string][]string{}, logs: map[string]string{}}
}

func (s *contractServer) start(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv
}

func (s *contractServer) fail(w http.ResponseWriter, status int, msg string) {
	menderapi.WriteError(w, status, msg, "req-7")
}

func (s *contractServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == menderapi.PathLogin {
		u, p, ok := r.BasicAuth()
		if r.Method != http.MethodPost || !ok || u != s.user || p != s.password {
			s.fail(w, http.StatusUnauthorized, "unauthorized")
			return
		}
		_, _ = io.WriteString(w, contractToken)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+contractToken {
		s.fail(w, http.StatusUnauthorized, "no token")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := r.URL.Path
	switch {
	case p == pathMgmtArtifacts && r.Method == http.MethodGet:
		writeTestJSON(w, http.StatusOK, s.images)
	case p == pathMgmtArtifacts && r.Method == http.MethodPost:
		s.upload(w, r)
	case p == pathMgmtDeployments && r.Method == http.MethodPost:
		var body struct {
			Name         string   `json:"name"`
			ArtifactName string   `json:"artifact_name"`
			Devices      []string `json:"devices"`
			AllDevices   bool     `json:"all_devices"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || (len(body.Devices) > 0) == body.AllDevices || body.Name == "" {
			s.fail(w, http.StatusBadRequest, "invalid request")
			return
		}
		if !slices.ContainsFunc(s.images, func(im mgmtImage) bool { return im.Name == body.ArtifactName }) {
			s.fail(w, http.StatusUnprocessableEntity, "no artifact for the deployment")
			return
		}
		id := fmt.Sprintf("dep-%d", len(s.deployments)+1)
		s.deployments = append(s.deployments, contractDeployment{ID: id, Name: body.Name, ArtifactName: body.ArtifactName,
			Devices: body.Devices, All: body.AllDevices})
		w.Header().Set("Location", pathMgmtDeployments+"/"+id)
		w.WriteHeader(http.StatusCreated)
	case strings.HasPrefix(p, pathMgmtDeployments+"/") && r.Method == http.MethodGet:
		s.deploymentGet(w, strings.Split(strings.TrimPrefix(p, pathMgmtDeployments+"/"), "/"))
	default:
		s.fail(w, http.StatusNotFound, "no route "+r.Method+" "+p)
	}
}

// upload reads the multipart body part by part, as the server does, and
// records what came.
func (s *contractServer) upload(w http.ResponseWriter, r *http.Request) {
	mr, err := r.MultipartReader()
	if err != nil {
		s.fail(w, http.StatusBadRequest, "not multipart")
		return
	}
	var up contractUpload
	var art *artifact.Artifact
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			s.fail(w, http.StatusBadRequest, err.Error())
			return
		}
		up.parts = append(up.parts, part.FormName())
		switch part.FormName() {
		case "size":
			b, _ := io.ReadAll(part)
			up.size, _ = strconv.ParseInt(string(b), 10, 64)
		case "description":
			b, _ := io.ReadAll(part)
			up.description = string(b)
		case "artifact":
			cr := &countingReader{r: part, progress: func(int64) {}}
			art, err = artifact.Read(cr, artifact.ReadOptions{})
			_, _ = io.Copy(io.Discard, cr)
			up.got = cr.n
			if err != nil {
				s.uploads = append(s.uploads, up)
				s.fail(w, http.StatusBadRequest, "invalid artifact: "+err.Error())
				return
			}
		}
	}
	s.uploads = append(s.uploads, up)
	if art == nil {
		s.fail(w, http.StatusBadRequest, "no artifact part")
		return
	}
	if st := s.uploadStatus; st != 0 {
		s.uploadStatus = 0
		if s.conflictImage != nil {
			s.images = append(s.images, *s.conflictImage)
		}
		s.fail(w, st, "artifact not unique")
		return
	}
	id := fmt.Sprintf("art-%d", len(s.images)+1)
	s.images = append(s.images, mgmtImage{ID: id, Name: art.Name, DeviceTypes: art.DeviceTypes, Size: up.got})
	w.Header().Set("Location", pathMgmtArtifacts+"/"+id)
	w.WriteHeader(http.StatusCreated)
}

// step returns a device's status at poll n, and whether it has appeared.
func (s *contractServer) step(dev string, n int) (string, bool) {
	sc, ok := s.scripts[dev]
	if !ok || len(sc) == 0 {
		return "", false
	}
	return sc[min(n, len(sc)-1)], true
}

func (s *contractServer) deploymentGet(w http.ResponseWriter, parts []string) {
	i := slices.IndexFunc(s.deployments, func(d contractDeployment) bool { return d.ID == parts[0] })
	if i < 0 {
		s.fail(w, http.StatusNotFound, "no such deployment")
		return
	}
	d := s.deployments[i]
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	devs := []map[string]any{}
	final := 0
	for _, id := range d.Devices {
		st, ok := s.step(id, s.polls)
		if !ok {
			continue
		}
		dd := map[string]any{"id": id, "status": st, "created": t0, "log": s.logs[id] != ""}
		if isFinalStatus(st) {
			final++
			dd["finished"] = t0.Add(1500 * time.Millisecond)
		}
		devs = append(devs, dd)
	}
	switch {
	case len(parts) == 1:
		status := "inprogress"
		if final == len(d.Devices) {
			status = "finished"
		}
		writeTestJSON(w, http.StatusOK, map[string]any{"id": d.ID, "name": d.Name, "artifact_name": d.ArtifactName,
			"created": t0, "status": status, "device_count": len(d.Devices)})
	case len(parts) == 2 && parts[1] == "devices" && s.failPolls > 0:
		s.failPolls--
		s.fail(w, http.StatusServiceUnavailable, "try later")
	case len(parts) == 2 && parts[1] == "devices":
		s.polls++
		if s.onPoll != nil {
			s.onPoll(s.polls)
		}
		writeTestJSON(w, http.StatusOK, devs)
	case len(parts) == 4 && parts[1] == "devices" && parts[3] == "log":
		if s.logs[parts[2]] == "" {
			s.fail(w, http.StatusNotFound, "no log")
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, s.logs[parts[2]])
	default:
		s.fail(w, http.StatusNotFound, "no route")
	}
}

func writeTestJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeTestArtifact writes a single-file artifact with a payload of n bytes
// and returns its path.
func writeTestArtifact(t *testing.T, dir, name string, n int, deviceTypes ...string) string {
	t.Helper()
	p := filepath.Join(dir, name+".mender")
	var b bytes.Buffer
	payload := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
	require.NoError(t, artifact.Write(&b, artifact.WriteOptions{Name: name, DeviceTypes: deviceTypes, Type: "single-file",
		Files: []artifact.InputFile{
			artifact.FileFromBytes("dest_dir", []byte("/opt/app\n")),
			artifact.FileFromBytes("filename", []byte("app.bin\n")),
			artifact.FileFromBytes("permissions", []byte("644\n")),
			artifact.FileFromBytes("app.bin", payload),
		}}))
	require.NoError(t, os.WriteFile(p, b.Bytes(), 0o644))
	return p
}

// deployArgs are the common flags of a deploy against srv.
func deployArgs(srvURL, password string, extra ...string) []string {
	return append([]string{"deploy", "--server", srvURL, "--user", "admin@example.com", "--password", password, "--interval", "20ms"}, extra...)
}

func TestDeployContractFollowsToFailure(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	art := writeTestArtifact(t, t.TempDir(), "app-1", 5000, "raspberrypi4", "qemux86-64")
	cs.scripts["dev-ok"] = []string{"pending", "downloading", "installing", "rebooting", "success"}
	cs.scripts["dev-bad"] = []string{"downloading", "installing", "failure"}
	var devLog strings.Builder
	for i := 1; i <= 14; i++ {
		fmt.Fprintf(&devLog, "2026-03-01T12:00:%02dZ info step %d\n", i, i)
	}
	devLog.WriteString("2026-03-01T12:00:15Z error install: exit status 1\n")
	cs.logs["dev-bad"] = devLog.String()

	stdout, stderr, code := sim(t, deployArgs(srv.URL, cs.password, "--artifact", art, "--devices", "dev-ok,dev-bad", "--description", "first")...)
	assert.Equal(t, 1, code, "a failed device: exit 1\nstdout: %s\nstderr: %s", stdout, stderr)

	require.Len(t, cs.uploads, 1)
	up := cs.uploads[0]
	st, err := os.Stat(art)
	require.NoError(t, err)
	assert.Equal(t, []string{"size", "description", "artifact"}, up.parts, "size first, the artifact last")
	assert.Equal(t, st.Size(), up.size)
	assert.Equal(t, st.Size(), up.got, "the whole file streamed")
	assert.Equal(t, "first", up.description)
	require.Len(t, cs.deployments, 1)
	dep := cs.deployments[0]
	assert.Equal(t, []string{"dev-ok", "dev-bad"}, dep.Devices)
	assert.Equal(t, "app-1", dep.ArtifactName)
	assert.Regexp(t, `^app-1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`, dep.Name, "the default name")

	for _, want := range []string{
		"uploading app-1: ", "(100%)", "artifact app-1 uploaded (id art-1)",
		"deployment dep-1 created",
		"dev-ok pending -> downloading\n", "dev-ok downloading -> installing\n", "dev-ok rebooting -> success\n",
		"dev-bad pending -> downloading\n", "dev-bad installing -> failure\n",
		"deployment dep-1: finished, 2/2 devices finished (100%): success 1, failure 1",
		"log of dev-bad (its last 10 lines, and its error lines before them):", "    2026-03-01T12:00:15Z error install: exit status 1",
	} {
		assert.Contains(t, stdout, want)
	}
	assert.NotContains(t, stdout, "step 5\n", "only the last 10 lines of the log")
	assert.Contains(t, stdout, "step 6\n")
	assert.Regexp(t, `(?m)^DEVICE\s+STATUS\s+DURATION$`, stdout)
	assert.Regexp(t, `(?m)^dev-ok\s+success\s+1.5s$`, stdout)
	assert.Regexp(t, `(?m)^dev-bad\s+failure\s+1.5s$`, stdout)
	assert.Equal(t, "simulator: deployment dep-1: 1 of 2 device(s) did not install app-1: failure 1\n", stderr)
	assert.NotContains(t, stdout+stderr, cs.password, "the password is never printed")
	assert.NotContains(t, stdout+stderr, contractToken, "the token is never printed")
}

func TestDeployContractSuccessJSON(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	art := writeTestArtifact(t, t.TempDir(), "app-2", 100, "qemux86-64")
	cs.scripts["a"] = []string{"downloading", "success"}
	cs.scripts["b"] = []string{"already-installed"}
	stdout, stderr, code := sim(t, deployArgs(srv.URL, cs.password, "--artifact", art, "--devices", "a", "--devices", "b", "--json", "--name", "rollout")...)
	require.Equal(t, 0, code, "stderr: %s", stderr)
	var res deployResult
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), "stdout is only the JSON: %s", stdout)
	assert.Equal(t, "dep-1", res.DeploymentID)
	assert.Equal(t, "rollout", res.Name)
	assert.Equal(t, "art-1", res.ArtifactID)
	assert.True(t, res.Uploaded)
	assert.Equal(t, "success", res.Result)
	assert.Equal(t, "finished", res.Status)
	assert.Equal(t, map[string]int{"success": 1, "already-installed": 1}, res.Counts)
	require.Len(t, res.Devices, 2)
	assert.Equal(t, deviceResult{ID: "a", Status: "success", DurationSeconds: 1.5}, res.Devices[0])
	assert.Equal(t, "already-installed", res.Devices[1].Status)
	assert.Contains(t, stderr, "deployment dep-1 created", "messages go to stderr with --json")
	assert.Contains(t, stderr, "a downloading -> success")
}

func TestDeployContractUploadSkipsAndConflicts(t *testing.T) {
	dir := t.TempDir()
	art := writeTestArtifact(t, dir, "app-3", 300, "rpi4", "rpi3")
	st, err := os.Stat(art)
	require.NoError(t, err)
	cs := newContractServer(t)
	srv := cs.start(t)
	noFollow := func(extra ...string) (string, string, int) {
		return sim(t, deployArgs(srv.URL, cs.password, append([]string{"--artifact", art, "--all", "--no-follow"}, extra...)...)...)
	}

	// Already there with the same name, device types (any order) and size:
	// no upload.
	cs.images = []mgmtImage{{ID: "old-1", Name: "app-3", DeviceTypes: []string{"rpi3", "rpi4"}, Size: st.Size()}}
	stdout, stderr, code := noFollow()
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "artifact app-3 already on the server (id old-1)")
	assert.Contains(t, stdout, "deployment dep-1 created")
	assert.Contains(t, stdout, "not following it (--no-follow)")
	assert.Empty(t, cs.uploads)
	assert.True(t, cs.deployments[0].All)

	// A 409 after which the server lists the same artifact (another
	// client uploaded it meanwhile) is fine.
	cs.images = nil
	cs.uploadStatus = http.StatusConflict
	cs.conflictImage = &mgmtImage{ID: "raced-1", Name: "app-3", DeviceTypes: []string{"rpi4", "rpi3"}, Size: st.Size()}
	stdout, stderr, code = noFollow()
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "artifact app-3 already on the server (id raced-1)")
	assert.Len(t, cs.uploads, 1)

	// A 409 for a different artifact of the same name is an error naming both.
	cs.images = nil
	cs.uploadStatus = http.StatusConflict
	cs.conflictImage = &mgmtImage{ID: "other-1", Name: "app-3", DeviceTypes: []string{"rpi4"}, Size: 77}
	_, stderr, code = noFollow()
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "another artifact named app-3 for rpi4 (id other-1, 77 bytes")
	assert.Contains(t, stderr, "--artifact-name")
	assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %s", stderr)

	// A 409 with nothing listed: the server's error, as it said it.
	cs.images = nil
	cs.uploadStatus = http.StatusConflict
	cs.conflictImage = nil
	_, stderr, code = noFollow()
	assert.Equal(t, 1, code)
	assert.Equal(t, "simulator: upload "+art+": POST "+pathMgmtArtifacts+": 409 Conflict: artifact not unique (request id req-7)\n", stderr)
	assert.Len(t, cs.deployments, 2, "no deployment after a failed upload")
}

func TestDeployContractArtifactName(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	cs.images = []mgmtImage{{ID: "x1", Name: "base-1", DeviceTypes: []string{"rpi4"}, Size: 10}}

	_, stderr, code := sim(t, deployArgs(srv.URL, cs.password, "--artifact-name", "nope", "--devices", "d1")...)
	assert.Equal(t, 1, code)
	assert.Equal(t, "simulator: --artifact-name nope: no artifact of that name on "+srv.URL+" (it has: base-1); upload one with --artifact FILE\n", stderr)
	assert.Empty(t, cs.deployments)

	stdout, stderr, code := sim(t, deployArgs(srv.URL, cs.password, "--artifact-name", "base-1", "--devices", "d1", "--no-follow", "--json")...)
	require.Equal(t, 0, code, stderr)
	var res deployResult
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), stdout)
	assert.Equal(t, deployResult{DeploymentID: "dep-1", Name: res.Name, ArtifactName: "base-1", ArtifactID: "x1"}, res)
}

func TestDeployContractTimeoutNamesUnfinished(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	cs.images = []mgmtImage{{ID: "x1", Name: "base-1", DeviceTypes: []string{"rpi4"}, Size: 10}}
	cs.scripts["quick"] = []string{"success"}
	cs.scripts["stuck"] = []string{"downloading"}
	start := time.Now()
	stdout, stderr, code := sim(t, deployArgs(srv.URL, cs.password, "--artifact-name", "base-1", "--devices", "quick,stuck,silent",
		"--timeout", "300ms")...)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, 1, code, stdout)
	assert.Contains(t, stderr, "--timeout 300ms passed: deployment dep-1 is unfinished on stuck, silent (it continues on the server; to abort it: PUT "+
		srv.URL+pathMgmtDeployments+"/dep-1/status")
	assert.Equal(t, 1, strings.Count(stderr, "\n"), stderr)
	assert.Regexp(t, `(?m)^silent\s+pending\s+-$`, stdout, "a device that never asked shows as pending")
	assert.Regexp(t, `(?m)^stuck\s+downloading\s+-$`, stdout)
}

func TestDeployContractInterrupted(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	cs.images = []mgmtImage{{ID: "x1", Name: "base-1", DeviceTypes: []string{"rpi4"}, Size: 10}}
	cs.scripts["d1"] = []string{"downloading"}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cs.onPoll = func(n int) {
		if n == 3 {
			cancel() // Ctrl-C while following
		}
	}
	var stdout, stderr bytes.Buffer
	code := run(ctx, deployArgs(srv.URL, cs.password, "--artifact-name", "base-1", "--devices", "d1"), &stdout, &stderr)
	assert.Equal(t, 1, code)
	assert.Equal(t, "simulator: interrupted: stopped following deployment dep-1, which continues on the server; to abort it: PUT "+
		srv.URL+pathMgmtDeployments+"/dep-1/status with {\"status\":\"aborted\"}\n", stderr.String())
	assert.NotContains(t, stdout.String(), "DEVICE", "no table after an interrupt")
}

// On a terminal the progress is one line redrawn in place, without the
// per-device lines; a server error while polling is retried.
func TestFollowTerminalAndRetry(t *testing.T) {
	cs := newContractServer(t)
	srv := cs.start(t)
	cs.images = []mgmtImage{{ID: "x1", Name: "base-1"}}
	cs.scripts["d1"] = []string{"downloading", "installing", "success"}
	cs.deployments = []contractDeployment{{ID: "dep-9", ArtifactName: "base-1", Devices: []string{"d1"}}}
	cs.failPolls = 2
	base, err := parseServerURL(srv.URL)
	require.NoError(t, err)
	c := newMgmtClient(base, nil, false)
	defer c.close()
	c.token = contractToken
	var out bytes.Buffer
	fw := &follower{c: c, id: "dep-9", targets: []string{"d1"}, interval: 10 * time.Millisecond, out: &out, tty: true, summaryEvery: time.Hour}
	outcome, err := fw.follow(t.Context())
	require.NoError(t, err)
	assert.Equal(t, followDone, outcome)
	text := out.String()
	assert.Contains(t, text, "\rdeployment dep-9: inprogress, 0/1 devices finished (0%): downloading 1\x1b[K")
	assert.Contains(t, text, "\rdeployment dep-9: finished, 1/1 devices finished (100%): success 1\x1b[K\n")
	assert.Equal(t, 2, strings.Count(text, "poll failed, retrying: GET "+pathMgmtDeployments+"/dep-9/devices: 503 Service Unavailable: try later"))
	assert.NotContains(t, text, "->", "no per-device lines on a terminal")
	assert.True(t, strings.HasSuffix(text, "\n"), "the redrawn line is ended")

	// Too many failures in a row end the command with the server's error.
	cs.polls, cs.failPolls = 0, maxPollFailures
	fw = &follower{c: c, id: "dep-9", targets: []string{"d1"}, interval: time.Millisecond, out: io.Discard, summaryEvery: time.Hour}
	_, err = fw.follow(t.Context())
	assert.EqualError(t, err, "follow deployment dep-9: GET "+pathMgmtDeployments+"/dep-9/devices: 503 Service Unavailable: try later (request id req-7)")
}

func TestDeployErrors(t *testing.T) {
	dir := t.TempDir()
	cs := newContractServer(t)
	srv := cs.start(t)
	art := writeTestArtifact(t, dir, "app-e", 100, "rpi4")
	corrupt := filepath.Join(dir, "corrupt.mender")
	b, err := os.ReadFile(art)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(corrupt, b[:len(b)/2], 0o644))
	passFile := filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(passFile, []byte("wrong\n"), 0o600))
	tlsSrv := httptest.NewUnstartedServer(cs)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedURL := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())

	base := []string{"deploy", "--user", "admin@example.com", "--artifact", art, "--all"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"wrong password", append(base, "--server", srv.URL, "--password", "nope"),
			"simulator: login to " + srv.URL + " as admin@example.com: wrong user or password\n"},
		{"password file", append(base, "--server", srv.URL, "--password-file", passFile),
			"simulator: login to " + srv.URL + " as admin@example.com: wrong user or password\n"},
		{"connection refused", append(base, "--server", closedURL, "--password", "x"),
			"simulator: cannot reach " + closedURL + ": connection refused: is the server running there? (check --server; 'simulator serve' prints its URL)\n"},
		{"unknown CA", append(base, "--server", tlsSrv.URL, "--password", "x"),
			"simulator: cannot reach " + tlsSrv.URL + ": its certificate is not signed by a trusted CA: give the CA with --ca FILE (DIR/ca.crt of simulator serve)\n"},
		{"corrupt artifact", []string{"deploy", "--user", "u", "--password", "x", "--server", srv.URL, "--artifact", corrupt, "--all"},
			"simulator: --artifact " + corrupt + ": "},
		{"missing artifact", []string{"deploy", "--user", "u", "--password", "x", "--server", srv.URL, "--artifact", filepath.Join(dir, "none"), "--all"},
			"simulator: --artifact: open " + filepath.Join(dir, "none") + ": no such file or directory\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := sim(t, tt.args...)
			assert.Equal(t, 1, code)
			assert.Empty(t, stdout)
			assert.True(t, strings.HasPrefix(stderr, tt.want), "got %q\nwant %q", stderr, tt.want)
			assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
		})
	}
	assert.Empty(t, cs.uploads)

	// --insecure reaches the TLS server (with a warning), --ca with its CA too.
	_, stderr, code := sim(t, append(base, "--server", tlsSrv.URL, "--password", cs.password, "--insecure", "--no-follow")...)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "warning: --insecure")
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644))
	t.Setenv(deployPasswordEnv, cs.password)
	_, stderr, code = sim(t, append(base, "--server", tlsSrv.URL, "--ca", caFile, "--no-follow")...)
	assert.Equal(t, 0, code, "password from %s: %s", deployPasswordEnv, stderr)
}

func TestDeployFlagErrors(t *testing.T) {
	ok := []string{"--server", "https://127.0.0.1:1", "--user", "u", "--password", "p"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--nope"}, "flag provided but not defined: --nope"},
		{"bad interval", append(ok, "--interval", "soon"), `invalid value "soon" for flag --interval`},
		{"no server", []string{"--user", "u", "--artifact-name", "a", "--all"}, "--server is required"},
		{"no user", []string{"--server", "https://x", "--artifact-name", "a", "--all"}, "--user is required"},
		{"both artifacts", append(ok, "--artifact", "f", "--artifact-name", "a", "--all"), "give exactly one of --artifact FILE"},
		{"no artifact", append(ok, "--all"), "give exactly one of --artifact FILE"},
		{"no target", append(ok, "--artifact-name", "a"), "give exactly one of --devices ID,… or --all"},
		{"both targets", append(ok, "--artifact-name", "a", "--all", "--devices", "d"), "give exactly one of --devices ID,… or --all"},
		{"zero interval", append(ok, "--artifact-name", "a", "--all", "--interval", "0s"), "--interval 0s: want a positive duration"},
		{"negative timeout", append(ok, "--artifact-name", "a", "--all", "--timeout", "-1s"), "--timeout -1s"},
		{"ca and insecure", append(ok, "--artifact-name", "a", "--all", "--ca", "c", "--insecure"), "--ca and --insecure exclude each other"},
		{"two passwords", append(ok, "--artifact-name", "a", "--all", "--password-file", "f"), "--password and --password-file exclude each other"},
		{"bad server", []string{"--server", "ftp://x", "--user", "u", "--password", "p", "--artifact-name", "a", "--all"}, `--server "ftp://x": want the server's base URL`},
		{"no password", []string{"--server", "https://x", "--user", "u", "--artifact-name", "a", "--all"}, "no password: give --password-file FILE, set SIMULATOR_PASSWORD"},
	}
	t.Setenv(deployPasswordEnv, "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := sim(t, append([]string{"deploy"}, tt.args...)...)
			assert.Equal(t, 2, code, stderr)
			assert.Empty(t, stdout)
			assert.Contains(t, stderr, "simulator deploy: "+tt.want)
			assert.Contains(t, stderr, "Run 'simulator deploy --help' for the flags.")
			assert.Equal(t, 2, strings.Count(stderr, "\n"), stderr)
		})
	}
}

func TestUploadProgress(t *testing.T) {
	l := &localArtifact{size: 4 << 20, art: &artifact.Artifact{Name: "big"}}
	var plain bytes.Buffer
	p := newUploadProgress(&plain, false, l)
	for sent := int64(0); sent <= l.size; sent += 256 << 10 {
		p.update(sent)
	}
	assert.Equal(t, "uploading big: 1.0 MiB / 4.0 MiB (25%)\nuploading big: 2.0 MiB / 4.0 MiB (50%)\n"+
		"uploading big: 3.0 MiB / 4.0 MiB (75%)\nuploading big: 4.0 MiB / 4.0 MiB (100%)\n", plain.String(), "a line per quarter")

	var tty bytes.Buffer
	p = newUploadProgress(&tty, true, l)
	p.update(1000)
	p.update(2000) // within 200 ms of the last redraw: skipped
	p.update(l.size)
	assert.Equal(t, "\ruploading big: 1000 B / 4.0 MiB (0%)\x1b[K\ruploading big: 4.0 MiB / 4.0 MiB (100%)\x1b[K\n", tty.String())

	assert.Equal(t, "1.50 GiB", byteSize(3<<29))
	assert.Equal(t, "2.0 KiB", byteSize(2048))
}

func TestFollowerProgress(t *testing.T) {
	fw := &follower{id: "d1", targets: []string{"a", "b", "c"}}
	fw.devices = map[string]*mgmtDeviceDeployment{
		"a": {ID: "a", Status: "success"}, "b": {ID: "b", Status: "downloading"}, "c": {ID: "c", Status: "pause_before_rebooting"},
		"x": {ID: "x", Status: "weird"},
	}
	fw.order = []string{"a", "b", "c", "x"}
	fw.dep = mgmtDeployment{Status: "inprogress", DeviceCount: 6}
	assert.Equal(t, "deployment d1: inprogress, 1/6 devices finished (16%): pending 2, downloading 1, pause_before_rebooting 1, success 1, weird 1",
		fw.summary())
	assert.False(t, fw.done())
	ids, unlisted := fw.unfinished()
	assert.Equal(t, []string{"b", "c", "x"}, ids)
	assert.Equal(t, 2, unlisted)

	for _, d := range fw.devices {
		d.Status = "failure"
	}
	assert.False(t, fw.done(), "2 devices not listed yet")
	fw.dep.DeviceCount = 4
	assert.True(t, fw.done(), "every targeted device is final")
	fw.devices["a"].Status = "installing"
	fw.dep.Status = "finished"
	assert.True(t, fw.done(), "the server says finished")
	assert.Equal(t, "no devices yet", formatCounts(map[string]int{}))
}

func TestParseServerURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8443":             "https://127.0.0.1:8443",
		"https://mender.example/":    "https://mender.example",
		"http://127.0.0.1:80/prefix": "http://127.0.0.1:80/prefix",
	} {
		u, err := parseServerURL(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, u.String())
	}
	for _, in := range []string{"ftp://x", "https://", "https://x/?q=1", "http://x/#f"} {
		_, err := parseServerURL(in)
		assert.Error(t, err, in)
	}
}

// Keep the multipart writer honest: a body cut short by a changed file is an
// error, not a truncated upload.
func TestWriteUploadPartsChangedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.mender")
	require.NoError(t, os.WriteFile(p, []byte("short"), 0o644))
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	l := &localArtifact{path: p, size: 10, art: &artifact.Artifact{Name: "a"}}
	err = writeUploadParts(multipart.NewWriter(io.Discard), f, l, "", newUploadProgress(io.Discard, false, l))
	assert.ErrorContains(t, err, "changed while being uploaded (5 bytes, was 10)")
}

// testDevice is a device driven by hand against the fake backend: it
// authenticates with a signed auth request and reports deployment
// statuses over plain HTTP, as a Mender client does.
type testDevice struct {
	srv   *httptest.Server
	hc    *http.Client
	mac   string
	token string
	id    string
}

// newTestDevice authenticates a new device (the backend accepts it at once)
// and returns it with its device id.
func newTestDevice(t *testing.T, srv *httptest.Server, s *fakemender.Server, mac string) *testDevice {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	body, err := menderapi.BuildAuthRequest(`{"mac":"`+mac+`"}`, key.Public(), "")
	require.NoError(t, err)
	sig, err := menderapi.Sign(key, body)
	require.NoError(t, err)
	hc := *srv.Client() // a copy: the server's client is shared
	hc.Timeout = 10 * time.Second
	d := &testDevice{srv: srv, hc: &hc, mac: mac}
	code, tok := d.send(t, http.MethodPost, menderapi.PathAuthRequests, body, map[string]string{menderapi.HeaderSignature: sig})
	require.Equal(t, http.StatusOK, code, tok)
	d.token = tok
	for _, dev := range s.Devices() {
		if dev.IdentityData["mac"] == mac {
			d.id = dev.ID
		}
	}
	require.NotEmpty(t, d.id, "device %s listed", mac)
	return d
}

// send does one request and returns the status and body; it reports
// failures with assert (safe in goroutines) and -1 as the status.
func (d *testDevice) send(t *testing.T, method, p string, body []byte, hdr map[string]string) (int, string) {
	req, err := http.NewRequestWithContext(t.Context(), method, d.srv.URL+p, bytes.NewReader(body))
	if !assert.NoError(t, err) {
		return -1, ""
	}
	req.Header.Set("Content-Type", "application/json")
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := d.hc.Do(req)
	if !assert.NoError(t, err) {
		return -1, ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	assert.NoError(t, err)
	return resp.StatusCode, string(b)
}

// next polls for a deployment until one comes (or 10 s pass) and returns
// its id.
func (d *testDevice) next(t *testing.T) string {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		code, body := d.send(t, http.MethodGet, menderapi.PathNextV1+"?artifact_name=factory-1&device_type=qemux86-64", nil, nil)
		switch code {
		case http.StatusOK:
			var ins menderapi.DeploymentInstructions
			if assert.NoError(t, json.Unmarshal([]byte(body), &ins), body) {
				return ins.ID
			}
			return ""
		case http.StatusNoContent:
			time.Sleep(20 * time.Millisecond) // the deployment is not created yet
		default:
			assert.Failf(t, "next", "%d %s", code, body)
			return ""
		}
	}
	assert.Fail(t, "no deployment for device "+d.mac+" within 10 s")
	return ""
}

// report sends the statuses in order, each once the deploy command has
// shown the one before (so every change is seen), and the log lines (if
// any) before the last status.
func (d *testDevice) report(t *testing.T, out *syncBuffer, depID string, log []string, statuses ...string) {
	prev := "pending"
	for i, st := range statuses {
		if i == len(statuses)-1 && len(log) > 0 {
			var dl menderapi.DeploymentLog
			for _, l := range log {
				dl.Messages = append(dl.Messages, menderapi.LogMessage{Timestamp: time.Now().UTC(), Level: "error", Message: l})
			}
			b, _ := json.Marshal(dl)
			code, body := d.send(t, http.MethodPut, menderapi.DeploymentLogPath(depID), b, nil)
			assert.Equal(t, http.StatusNoContent, code, body)
		}
		b, _ := json.Marshal(menderapi.StatusReport{Status: st})
		code, body := d.send(t, http.MethodPut, menderapi.DeploymentStatusPath(depID), b, nil)
		assert.Equal(t, http.StatusNoContent, code, "%s: %s", st, body)
		if !waitFor(t, out, d.id+" "+prev+" -> "+st+"\n") {
			return
		}
		prev = st
	}
}

// waitFor waits until the output b holds want (or 10 s pass).
func waitFor(t *testing.T, b *syncBuffer, want string) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(b.String(), want) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return assert.Fail(t, "output never showed "+want, b.String())
}

// runAsync runs the simulator in a goroutine; wait returns its output.
func runAsync(t *testing.T, args ...string) (stdout *syncBuffer, wait func() (string, string, int)) {
	stdout = &syncBuffer{}
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(t.Context(), args, stdout, &stderr) }()
	return stdout, func() (string, string, int) {
		select {
		case code := <-done:
			return stdout.String(), stderr.String(), code
		case <-time.After(20 * time.Second):
			t.Fatal("simulator deploy did not end within 20 s")
			return "", "", -1
		}
	}
}

// The whole command against the real fake backend over HTTPS: upload,
// deploy to two devices driven through next and status, one of which fails
// with a log; then a second deploy of the same file skips the upload, an
// unknown --artifact-name is refused, and a device that never asks times
// out.
func TestDeployAgainstFakeBackend(t *testing.T) {
	s, err := fakemender.New(fakemender.Options{AutoAccept: true, ArtifactDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	srv := httptest.NewTLSServer(s)
	t.Cleanup(srv.Close)
	s.SetArtifactBaseURL(srv.URL)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644))
	passFile := filepath.Join(dir, "password")
	require.NoError(t, os.WriteFile(passFile, []byte(fakemender.DefaultPassword+"\n"), 0o600))
	art := writeTestArtifact(t, dir, "app-7", 70000, "qemux86-64", "raspberrypi4")
	ok := newTestDevice(t, srv, s, "02:00:00:00:00:01")
	bad := newTestDevice(t, srv, s, "02:00:00:00:00:02")
	common := []string{"deploy", "--server", srv.URL, "--ca", caFile, "--user", fakemender.DefaultUser, "--password-file", passFile, "--interval", "50ms"}
	deploy := func(extra ...string) []string { return append(slices.Clone(common), extra...) }

	out, wait := runAsync(t, deploy("--artifact", art, "--devices", ok.id+","+bad.id)...)
	var wg sync.WaitGroup
	wg.Go(func() {
		if id := ok.next(t); id != "" {
			ok.report(t, out, id, nil, "downloading", "installing", "rebooting", "success")
		}
	})
	wg.Go(func() {
		if id := bad.next(t); id != "" {
			bad.report(t, out, id, []string{"fetching app.bin", "install: disk full", "rolling back"}, "downloading", "installing", "failure")
		}
	})
	wg.Wait()
	stdout, stderr, code := wait()
	assert.Equal(t, 1, code, "a device failed: exit 1\nstdout: %s\nstderr: %s", stdout, stderr)
	imgs := s.Artifacts()
	require.Len(t, imgs, 1, "uploaded once")
	assert.Equal(t, "app-7", imgs[0].Name)
	st, err := os.Stat(art)
	require.NoError(t, err)
	assert.Equal(t, st.Size(), imgs[0].Size)
	deps := s.Deployments()
	require.Len(t, deps, 1)
	depID := deps[0].ID
	for _, want := range []string{
		"uploading app-7: ", "(100%)", "artifact app-7 uploaded (id " + imgs[0].ID + ")",
		"deployment " + depID + " created",
		ok.id + " pending -> downloading\n", ok.id + " installing -> rebooting\n", ok.id + " rebooting -> success\n",
		bad.id + " downloading -> installing\n", bad.id + " installing -> failure\n",
		"deployment " + depID + ": finished, 2/2 devices finished (100%): success 1, failure 1",
		"log of " + bad.id + " (3 lines):", "install: disk full", "rolling back",
	} {
		assert.Contains(t, stdout, want)
	}
	assert.Regexp(t, `(?m)^`+ok.id+`\s+success\s+\S+$`, stdout)
	assert.Regexp(t, `(?m)^`+bad.id+`\s+failure\s+\S+$`, stdout)
	assert.Equal(t, "simulator: deployment "+depID+": 1 of 2 device(s) did not install app-7: failure 1\n", stderr)

	// The same file again: no second upload.
	stdout, stderr, code = sim(t, deploy("--artifact", art, "--devices", ok.id, "--no-follow")...)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "artifact app-7 already on the server (id "+imgs[0].ID+")")
	assert.NotContains(t, stdout, "uploading")
	assert.Len(t, s.Artifacts(), 1)

	// An artifact name the server does not have.
	_, stderr, code = sim(t, deploy("--artifact-name", "app-404", "--all")...)
	assert.Equal(t, 1, code)
	assert.Equal(t, "simulator: --artifact-name app-404: no artifact of that name on "+srv.URL+" (it has: app-7); upload one with --artifact FILE\n", stderr)

	// A device that never asks: --timeout names it.
	stdout, stderr, code = sim(t, deploy("--artifact-name", "app-7", "--devices", bad.id, "--timeout", "300ms", "--json")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "--timeout 300ms passed: deployment ")
	assert.Contains(t, stderr, "is unfinished on "+bad.id+" (it continues on the server")
	var res deployResult
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), stdout)
	assert.Equal(t, "timeout", res.Result)
	assert.Equal(t, []deviceResult{{ID: bad.id, Status: "pending"}}, res.Devices)

	// A wrong password.
	_, stderr, code = sim(t, "deploy", "--server", srv.URL, "--ca", caFile, "--user", fakemender.DefaultUser, "--password", "wrong",
		"--artifact-name", "app-7", "--all")
	assert.Equal(t, 1, code)
	assert.Equal(t, "simulator: login to "+srv.URL+" as "+fakemender.DefaultUser+": wrong user or password\n", stderr)
}

func TestLogExcerptKeepsErrorLines(t *testing.T) {
	var lines []string
	for i := range 30 {
		level := "debug"
		switch i {
		case 3:
			level = "error"
		case 5:
			level = "FATAL"
		}
		lines = append(lines, fmt.Sprintf("2026-12-02T05:00:%02dZ %s: line %d", i, level, i))
	}
	got := logExcerpt(lines, 4)
	want := []string{"…", lines[3], "…", lines[5], "…", lines[26], lines[27], lines[28], lines[29]}
	assert.Equal(t, want, got)
	// A short log is printed whole, with no markers.
	assert.Equal(t, lines[:3], logExcerpt(lines[:3], 4))
	// Only the last n error lines are kept.
	errs := []string{"t error: a", "t error: b", "t error: c", "t info: d"}
	assert.Equal(t, []string{"…", "t error: b", "t error: c", "t info: d"}, logExcerpt(errs, 2))
	assert.False(t, isErrorLogLine("no-level-here"))
	assert.True(t, isErrorLogLine("2026-03-01T12:00:15Z error install: exit status 1"))
	assert.False(t, isErrorLogLine("t info: error: inside the message"))
}
