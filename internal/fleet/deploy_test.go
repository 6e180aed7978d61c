package fleet

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// randomBytes returns n reproducible random bytes.
func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b) // never fails
	return b
}

// makeArtifact writes a single-file artifact of payload for deviceTypes.
func makeArtifact(t *testing.T, name string, deviceTypes []string, payload []byte, comp artifact.Compression) []byte {
	t.Helper()
	var buf bytes.Buffer
	require.NoError(t, artifact.Write(&buf, artifact.WriteOptions{
		Name: name, DeviceTypes: deviceTypes, Type: "single-file", Compression: comp,
		MetaData: map[string]any{"dest_dir": "/opt/app", "filename": "update.bin"},
		Files:    []artifact.InputFile{artifact.FileFromBytes("update.bin", payload)},
		ModTime:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}))
	return buf.Bytes()
}

func TestFleetDeploysRealArtifacts(t *testing.T) {
	payload := randomBytes(48<<10, 1)
	good := makeArtifact(t, "release-2", []string{"other-board", DefaultDeviceType}, payload, artifact.Gzip)
	corrupt := makeArtifact(t, "release-2", []string{DefaultDeviceType}, payload, artifact.None)
	at := bytes.Index(corrupt, payload[:64])
	require.Positive(t, at, "the uncompressed artifact holds the payload as is")
	corrupt[at+1000] ^= 0xff
	junk := randomBytes(256<<10, 2)

	tests := []struct {
		name         string
		mtls         bool
		art          testArtifact
		failRate     float64
		installDelay time.Duration
		wantStatus   string
		wantLog      []string // in the failure log
		// installed: the install ran (success or failure at the fail rate).
		installed bool
		// download is "whole" (every byte arrives once), "cut" (the device
		// stops as soon as the artifact does not read) or "" (the reader
		// fails near the end: either may happen).
		download string
	}{
		{name: "real artifact installs through the ambassador", mtls: true, art: testArtifact{data: good}, download: "whole",
			installDelay: 150 * time.Millisecond, wantStatus: menderapi.StatusSuccess, installed: true},
		{name: "fail rate after a real download", art: testArtifact{data: good}, download: "whole", failRate: 1,
			wantStatus: menderapi.StatusFailure, wantLog: []string{"simulated installation failure"}, installed: true},
		{name: "artifact for another device type", download: "whole",
			art:        testArtifact{data: makeArtifact(t, "release-2", []string{"other-board"}, payload, artifact.Gzip)},
			wantStatus: menderapi.StatusFailure, wantLog: []string{`artifact "release-2" is for device types other-board, not this device's "test"`}},
		{name: "artifact name differs from the deployment", download: "whole",
			art:        testArtifact{data: makeArtifact(t, "release-3", []string{DefaultDeviceType}, payload, artifact.Gzip)},
			wantStatus: menderapi.StatusFailure, wantLog: []string{`artifact name "release-3" in the artifact header differs from the deployment's "release-2"`}},
		{name: "announced checksum differs", art: testArtifact{data: good, checksum: strings.Repeat("ab", 32)}, download: "whole",
			wantStatus: menderapi.StatusFailure, wantLog: []string{"differs from the announced " + strings.Repeat("ab", 32)}},
		{name: "payload corrupted", art: testArtifact{data: corrupt},
			wantStatus: menderapi.StatusFailure, wantLog: []string{"artifact rejected after", "data/0000/update.bin", "checksum mismatch"}},
		{name: "not an artifact", art: testArtifact{data: junk}, download: "cut",
			wantStatus: menderapi.StatusFailure, wantLog: []string{"artifact rejected after", "not a tar archive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, tt.mtls)
			env.artifact.Store(&tt.art)
			const n = 3
			opts := env.fastOptions(env.creds(t, n, tt.mtls))
			opts.FailRate, opts.InstallDelay = tt.failRate, tt.installDelay
			opts.Rand = func() float64 { return 0.5 }
			r, depID, targets := deployToAll(t, env, opts, tt.wantStatus)

			size := uint64(len(tt.art.data))
			d := r.Deployments
			assert.Equal(t, uint64(n), d.Started)
			assert.Zero(t, d.Aborted+d.Incomplete)
			assert.Zero(t, r.ErrorsTotal, "no exchange failed: %v", r.Operations)
			if tt.wantStatus == menderapi.StatusSuccess {
				assert.Equal(t, uint64(n), d.Succeeded)
			} else {
				assert.Equal(t, uint64(n), d.Failed)
				assert.Equal(t, uint64(n)*uint64(tt.failRate), d.FailedOnPurpose)
			}
			switch tt.download {
			case "cut":
				assert.Less(t, d.DownloadedBytes, n*size, "each device stopped its download early")
				assert.Zero(t, d.DownloadSeconds.Count, "no download completed")
				assert.Zero(t, d.CompletedDownloadBytes)
			case "whole":
				assert.Equal(t, n*size, d.DownloadedBytes, "every device downloaded the whole artifact once")
				assert.Equal(t, n*size, d.CompletedDownloadBytes)
				assert.Equal(t, size, d.ArtifactBytesPerDevice)
				assert.Equal(t, uint64(n), d.DownloadSeconds.Count, "one download time per device")
				assert.Positive(t, d.DownloadSeconds.MaxS)
			}
			if tt.installed {
				assert.Equal(t, uint64(n), d.InstallSeconds.Count, "one install time per device")
				assert.Equal(t, uint64(n), d.InstallSeconds.Histogram.Count())
				assert.GreaterOrEqual(t, d.InstallSeconds.P50S, tt.installDelay.Seconds(), "the install delay is part of the install time")
				assert.GreaterOrEqual(t, d.InstallSeconds.MaxS, d.InstallSeconds.P50S)
			} else {
				assert.Zero(t, d.InstallSeconds.Count, "a rejected artifact is not installed")
			}
			for _, id := range targets {
				if tt.wantStatus == menderapi.StatusSuccess {
					assert.Equal(t, "release-2", env.backend.Inventory(id)["artifact_name"])
					continue
				}
				log := env.backend.DeploymentLog(depID, id)
				require.NotEmpty(t, log, "a failed deployment uploads a log")
				for _, want := range tt.wantLog {
					assert.Contains(t, log[len(log)-1].Message, want)
				}
			}
		})
	}
}

// deployToAll runs a fleet with opts, deploys release-2 to every device
// once all are accepted, waits until each reached wantStatus and its
// deployment ended on the device, then stops the run and returns the
// report, the deployment and its targets.
func deployToAll(t *testing.T, env *testEnv, opts Options, wantStatus string) (*Report, string, []string) {
	t.Helper()
	n := len(opts.Credentials)
	f, err := New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan *Report, 1)
	go func() {
		r, err := f.Run(ctx)
		assert.NoError(t, err)
		done <- r
	}()
	require.Eventually(t, func() bool { return f.Progress().Accepted == n }, 30*time.Second, 20*time.Millisecond)
	var targets []string
	for _, d := range env.backend.Devices() {
		targets = append(targets, d.ID)
	}
	depID, err := env.backend.AddDeployment(fakemender.DeploymentSpec{ArtifactName: "release-2",
		DeviceTypes: []string{DefaultDeviceType}, Size: fakemender.MinArtifactSize, Devices: targets})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, id := range targets {
			if env.backend.DeviceDeploymentStatus(depID, id) != wantStatus {
				return false
			}
		}
		c := f.col
		ended := c.depSucceeded.Load() + c.depFailed.Load() + c.depAborted.Load() + c.depIncomplete.Load()
		return c.depStarted.Load() == uint64(n) && ended == uint64(n)
	}, 30*time.Second, 10*time.Millisecond, "every target reached %s", wantStatus)
	cancel()
	return <-done, depID, targets
}

// oneDevice returns a device of a fleet that is never run, for calling
// its deployment steps directly.
func oneDevice(t *testing.T) *device {
	t.Helper()
	f := offlineFleet(t, 1, &fakeClock{})
	f.runCtx = t.Context()
	return f.devices[0]
}

func TestFetchResumesIntoTheSameReader(t *testing.T) {
	art := makeArtifact(t, "release-2", []string{DefaultDeviceType}, randomBytes(200<<10, 3), artifact.Gzip)
	var requests, ranges atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(art))
			return
		}
		// The first answer announces everything and is cut after a part
		// of the header.
		w.Header().Set("Content-Length", strconv.Itoa(len(art)))
		_, _ = w.Write(art[:3000])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(srv.Close)
	d := oneDevice(t)

	got, err := d.fetch(t.Context(), srv.URL+"/artifact")
	require.NoError(t, err)
	require.NoError(t, got.bad, "the artifact reads across the resume")
	assert.True(t, got.complete)
	assert.Equal(t, int64(len(art)), got.n)
	assert.Equal(t, "release-2", got.art.Name)
	require.Len(t, got.art.Payload.Files, 1)
	assert.Equal(t, int64(200<<10), got.art.Payload.Files[0].Size)
	assert.Equal(t, int32(2), requests.Load(), "one cut download and one resume")
	assert.Equal(t, int32(1), ranges.Load())
	assert.Empty(t, d.check(&menderapi.DeploymentInstructions{Artifact: menderapi.DeploymentArtifact{ArtifactName: "release-2",
		Size: int64(len(art))}}, got), "the resumed artifact passes every check")
}

func TestFetchEndsWhenTheDownloadIsAbandoned(t *testing.T) {
	art := makeArtifact(t, "release-2", []string{DefaultDeviceType}, randomBytes(200<<10, 4), artifact.Gzip)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(art)))
		_, _ = w.Write(art[:5000])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the rest never comes
	}))
	t.Cleanup(srv.Close)
	d := oneDevice(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		// The run ends mid-download, once the first bytes went through.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for d.f.col.depBytes.Load() < 5000 && ctx.Err() == nil {
			<-tick.C
		}
		cancel()
	}()
	type result struct {
		got fetched
		err error
	}
	res := make(chan result, 1)
	go func() {
		got, err := d.fetch(ctx, srv.URL+"/artifact")
		res <- result{got, err}
	}()
	select {
	case r := <-res:
		assert.ErrorIs(t, r.err, context.Canceled, "the abandoned download is an error for the caller")
		assert.False(t, r.got.complete)
		assert.Equal(t, int64(5000), r.got.n)
		assert.Nil(t, r.got.art)
	case <-time.After(10 * time.Second):
		t.Fatal("fetch did not return after its context ended: the reader goroutine or the download is stuck")
	}
}

func TestFetchStopsOnAMalformedArtifact(t *testing.T) {
	junk := randomBytes(1<<20, 5)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(junk))
	}))
	t.Cleanup(srv.Close)
	d := oneDevice(t)

	got, err := d.fetch(t.Context(), srv.URL+"/artifact")
	require.NoError(t, err, "a bad artifact is not a download error to retry")
	assert.False(t, got.complete)
	assert.Less(t, got.n, int64(len(junk)), "the download stopped early")
	require.Error(t, got.bad)
	assert.True(t, errors.Is(got.bad, artifact.ErrMalformed))
	assert.Contains(t, d.check(&menderapi.DeploymentInstructions{}, got), "not a tar archive")
}
