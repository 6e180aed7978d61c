package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/artifact"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Management API paths of the deployments service (mender-stack notes §4.1).
const (
	pathMgmtArtifacts   = "/api/management/v1/deployments/artifacts"
	pathMgmtDeployments = "/api/management/v1/deployments/deployments"
)

// deployPasswordEnv is the variable deploy reads the management password
// from when neither --password nor --password-file is given.
const deployPasswordEnv = "SIMULATOR_PASSWORD"

// Deployment statuses of one device that do not change any more.
var finalDeviceStatuses = []string{"success", "failure", "already-installed", "noartifact", "aborted", "decommissioned"}

// deviceStatusOrder is the order statuses are listed in progress lines.
var deviceStatusOrder = []string{
	"pending", "downloading", "pause_before_installing", "installing", "pause_before_rebooting", "rebooting",
	"pause_before_committing", "success", "already-installed", "failure", "noartifact", "aborted", "decommissioned",
}

// deployLogTail is how many lines of a failed device's log are printed.
const deployLogTail = 10

const deploySynopsis = `Deploy an artifact to devices through the Mender management API (any Mender server, or
'simulator serve'), and follow the deployment to its end.

With --artifact FILE, the file is checked locally first (structure and every checksum) and
uploaded unless the server already has an artifact with the same name, device types and size.
With --artifact-name NAME, an artifact already on the server is deployed. The deployment goes
to the --devices given, or to every accepted device with --all.

While following, a terminal shows one status line redrawn in place; otherwise every change of a
device's status is printed as "DEVICE OLD -> NEW", with a summary line now and then. At the end
a table lists every device with its status and time taken, followed by the last lines of each
failed device's log. Exit code 0: every device succeeded or already had the artifact; 1: a
device failed, was aborted or had no compatible artifact, --timeout passed, or an error; 2: bad
flags. Ctrl-C stops following; the deployment carries on on the server.

The password comes from --password-file FILE (first line), or the SIMULATOR_PASSWORD variable,
or --password (visible to other users in the process list). It is never printed.
With 'simulator serve --mtls', give the backend's own address (the "backend:" line it prints),
not the ambassador's.`

// deployFlags are the flags of simulator deploy.
type deployFlags struct {
	server, ca                 string
	insecure                   bool
	user, password, passFile   string
	artifactFile, artifactName string
	name, description          string
	devices                    listFlag
	all                        bool
	interval, timeout          time.Duration
	noFollow, json             bool
}

func cmdDeploy(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var f deployFlags
	fs := newFlagSet("deploy", deploySynopsis, stdout, stderr)
	fs.usage = "simulator deploy --server URL --user EMAIL (--artifact FILE | --artifact-name NAME) (--devices ID,… | --all) [flags]"
	fs.StringVar(&f.server, "server", "", "management API base `URL` of the server, e.g. https://127.0.0.1:8443 (required)")
	fs.StringVar(&f.ca, "ca", "", "CA `FILE` trusted for the server certificate, e.g. DIR/ca.crt of simulator serve (default: the system roots)")
	fs.BoolVar(&f.insecure, "insecure", false, "do not verify the server certificate (tests only)")
	fs.StringVar(&f.user, "user", "", "management user `EMAIL` (required)")
	fs.StringVar(&f.passFile, "password-file", "", "`FILE` whose first line is the management password")
	fs.StringVar(&f.password, "password", "", "management `PASSWORD` (prefer --password-file or "+deployPasswordEnv+")")
	fs.StringVar(&f.artifactFile, "artifact", "", "artifact `FILE` to upload (unless the server has it) and deploy")
	fs.StringVar(&f.artifactName, "artifact-name", "", "deploy the artifact `NAME` already on the server")
	fs.StringVar(&f.description, "description", "", "description `TEXT` of an uploaded artifact")
	fs.StringVar(&f.name, "name", "", "deployment `NAME` (default: the artifact name and the UTC time)")
	fs.Var(&f.devices, "devices", "device `IDS` to deploy to, comma-separated or repeated")
	fs.BoolVar(&f.all, "all", false, "deploy to every accepted device")
	fs.DurationVar(&f.interval, "interval", time.Second, "poll the deployment every `DURATION`")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Minute, "stop following after this `DURATION` and exit 1 (0: no limit)")
	fs.BoolVar(&f.noFollow, "no-follow", false, "exit once the deployment is created")
	fs.BoolVar(&f.json, "json", false, "print a JSON summary on stdout instead of the table (messages go to stderr)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "simulator deploy: %s\nRun 'simulator deploy --help' for the flags.\n", fmt.Sprintf(format, a...))
		return errUsage
	}
	switch {
	case f.server == "":
		return usageErr("--server is required: the management API URL, e.g. https://127.0.0.1:8443")
	case f.user == "":
		return usageErr("--user is required: the management user's email")
	case (f.artifactFile == "") == (f.artifactName == ""):
		return usageErr("give exactly one of --artifact FILE (upload and deploy) or --artifact-name NAME (already on the server)")
	case (len(f.devices) == 0) == !f.all:
		return usageErr("give exactly one of --devices ID,… or --all")
	case f.interval <= 0:
		return usageErr("--interval %v: want a positive duration", f.interval)
	case f.timeout < 0:
		return usageErr("--timeout %v: want a positive duration, or 0 for no limit", f.timeout)
	case f.ca != "" && f.insecure:
		return usageErr("--ca and --insecure exclude each other: --ca verifies the server with that CA, --insecure does not verify it")
	case f.password != "" && f.passFile != "":
		return usageErr("--password and --password-file exclude each other")
	}
	base, err := parseServerURL(f.server)
	if err != nil {
		return usageErr("%v", err)
	}
	password, err := f.resolvePassword(getenv)
	if err != nil {
		return err
	}
	if password == "" {
		return usageErr("no password: give --password-file FILE, set %s, or give --password", deployPasswordEnv)
	}

	// Messages go to stdout, or to stderr when stdout carries the JSON.
	msgs := stdout
	if f.json {
		msgs = stderr
	}
	var roots *x509.CertPool
	if f.ca != "" {
		if roots, err = loadPool(f.ca); err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
	}
	if f.insecure {
		fmt.Fprintf(stderr, "simulator deploy: warning: --insecure: the certificate of %s is not verified\n", base)
	}
	c := newMgmtClient(base, roots, f.insecure)
	defer c.close()

	// Read the local file before talking to the server: a broken artifact
	// fails here with the part named.
	var local *localArtifact
	if f.artifactFile != "" {
		if local, err = readLocalArtifact(f.artifactFile); err != nil {
			return err
		}
	}
	res := deployResult{}
	id, err := prepareDeployment(ctx, c, &f, password, local, &res, msgs)
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted: no deployment was created")
		}
		return err
	}
	name, artifactName := res.Name, res.ArtifactName
	target := strings.Join(f.devices, ", ")
	if f.all {
		target = "all accepted devices"
	}
	fmt.Fprintf(msgs, "deployment %s created: %q, artifact %s, to %s\n", id, name, artifactName, target)
	if f.noFollow {
		if f.json {
			return writeJSON(stdout, res)
		}
		fmt.Fprintf(msgs, "not following it (--no-follow); see it with: GET %s%s/%s\n", base, pathMgmtDeployments, id)
		return nil
	}

	fw := &follower{c: c, id: id, targets: f.devices, interval: f.interval, timeout: f.timeout,
		out: msgs, tty: isTerminal(msgs), summaryEvery: plainRefresh}
	outcome, err := fw.follow(ctx)
	if err != nil {
		return err
	}
	return finishDeploy(ctx, c, fw, outcome, &res, base, f.json, stdout)
}

// prepareDeployment logs in, makes sure the artifact is on the server and
// creates the deployment; it fills in res and returns the deployment id.
func prepareDeployment(ctx context.Context, c *mgmtClient, f *deployFlags, password string, local *localArtifact,
	res *deployResult, msgs io.Writer) (string, error) {
	if err := c.login(ctx, f.user, password); err != nil {
		return "", err
	}
	res.ArtifactName = f.artifactName
	if local != nil {
		res.ArtifactName = local.art.Name
		var err error
		if res.ArtifactID, res.Uploaded, err = ensureUploaded(ctx, c, local, f.description, msgs); err != nil {
			return "", err
		}
	} else {
		imgs, err := c.listArtifacts(ctx)
		if err != nil {
			return "", err
		}
		img := findImage(imgs, func(im mgmtImage) bool { return im.Name == f.artifactName })
		if img == nil {
			return "", fmt.Errorf("--artifact-name %s: no artifact of that name on %s (it has: %s); upload one with --artifact FILE",
				f.artifactName, c.base, imageNames(imgs))
		}
		res.ArtifactID = img.ID
	}
	res.Name = f.name
	if res.Name == "" {
		res.Name = res.ArtifactName + " " + time.Now().UTC().Format("2006-01-02T15:04:05Z")
	}
	id, err := c.createDeployment(ctx, res.Name, res.ArtifactName, f.devices, f.all)
	if err != nil {
		return "", err
	}
	res.DeploymentID = id
	return id, nil
}

// parseServerURL checks --server: an http or https URL (https:// is added
// when the scheme is missing, as mender-cli does).
func parseServerURL(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--server %q: want the server's base URL, e.g. https://127.0.0.1:8443", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	return u, nil
}

// resolvePassword returns the password from --password, --password-file
// or the environment, in that order.
func (f *deployFlags) resolvePassword(getenv func(string) string) (string, error) {
	switch {
	case f.password != "":
		return f.password, nil
	case f.passFile != "":
		b, err := os.ReadFile(f.passFile)
		if err != nil {
			return "", fmt.Errorf("--password-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		line = strings.TrimRight(line, "\r")
		if line == "" {
			return "", fmt.Errorf("--password-file %s: the first line is empty: write the password on it", f.passFile)
		}
		return line, nil
	}
	return getenv(deployPasswordEnv), nil
}

// localArtifact is the --artifact file as read by artifact.Read.
type localArtifact struct {
	path string
	size int64
	art  *artifact.Artifact
}

// readLocalArtifact checks path (structure and every checksum) and returns
// what it declares and its size.
func readLocalArtifact(p string) (*localArtifact, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("--artifact: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("--artifact: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("--artifact %s: not a regular file", p)
	}
	art, err := artifact.Read(bufio.NewReaderSize(f, 1<<16), artifact.ReadOptions{})
	if err != nil {
		return nil, fmt.Errorf("--artifact %s: %w", p, err)
	}
	return &localArtifact{path: p, size: st.Size(), art: art}, nil
}

// ensureUploaded uploads local unless the server has it already. It returns
// the artifact's id on the server and whether it was uploaded now.
func ensureUploaded(ctx context.Context, c *mgmtClient, local *localArtifact, description string, msgs io.Writer) (string, bool, error) {
	imgs, err := c.listArtifacts(ctx)
	if err != nil {
		return "", false, err
	}
	if img := findImage(imgs, local.same); img != nil {
		fmt.Fprintf(msgs, "artifact %s already on the server (id %s)\n", img.Name, img.ID)
		return img.ID, false, nil
	}
	id, err := c.uploadArtifact(ctx, local, description, newUploadProgress(msgs, isTerminal(msgs), local))
	var ae *apiError
	if errors.As(err, &ae) && ae.status == http.StatusConflict {
		// Someone else may have uploaded the same artifact meanwhile: the
		// conflict is harmless when the server now lists it.
		if imgs, lerr := c.listArtifacts(ctx); lerr == nil {
			if img := findImage(imgs, local.same); img != nil {
				fmt.Fprintf(msgs, "artifact %s already on the server (id %s)\n", img.Name, img.ID)
				return img.ID, false, nil
			}
			if img := findImage(imgs, local.clashes); img != nil {
				return "", false, fmt.Errorf("upload %s: the server already has another artifact named %s for %s (id %s, %d bytes; this file is %d bytes): "+
					"deploy it with --artifact-name, or delete it on the server first", local.path, img.Name,
					strings.Join(img.DeviceTypes, ", "), img.ID, img.Size, local.size)
			}
		}
	}
	if err != nil {
		return "", false, fmt.Errorf("upload %s: %w", local.path, err)
	}
	fmt.Fprintf(msgs, "artifact %s uploaded (id %s)\n", local.art.Name, id)
	return id, true, nil
}

// same reports whether img is this artifact: same name, device types and size.
func (l *localArtifact) same(img mgmtImage) bool {
	a, b := slices.Clone(img.DeviceTypes), slices.Clone(l.art.DeviceTypes)
	slices.Sort(a)
	slices.Sort(b)
	return img.Name == l.art.Name && img.Size == l.size && slices.Equal(slices.Compact(a), slices.Compact(b))
}

// clashes reports whether img has this artifact's name and a device type in
// common with it (what the server refuses with 409).
func (l *localArtifact) clashes(img mgmtImage) bool {
	return img.Name == l.art.Name && slices.ContainsFunc(img.DeviceTypes, func(t string) bool { return slices.Contains(l.art.DeviceTypes, t) })
}

func findImage(imgs []mgmtImage, match func(mgmtImage) bool) *mgmtImage {
	for i := range imgs {
		if match(imgs[i]) {
			return &imgs[i]
		}
	}
	return nil
}

// imageNames lists the artifact names for an error message.
func imageNames(imgs []mgmtImage) string {
	var names []string
	for _, im := range imgs {
		if !slices.Contains(names, im.Name) {
			names = append(names, im.Name)
		}
	}
	switch {
	case len(names) == 0:
		return "none"
	case len(names) > 10:
		return strings.Join(names[:10], ", ") + fmt.Sprintf(" and %d more", len(names)-10)
	}
	return strings.Join(names, ", ")
}

// uploadProgress shows how much of an upload went out: on a terminal one
// line redrawn in place (at most every 200 ms), otherwise a line at each
// quarter.
type uploadProgress struct {
	w     io.Writer
	tty   bool
	name  string
	total int64
	last  time.Time
	shown int64 // quarters shown (plain output)
}

func newUploadProgress(w io.Writer, tty bool, l *localArtifact) *uploadProgress {
	return &uploadProgress{w: w, tty: tty, name: l.art.Name, total: l.size}
}

// update is called with the bytes sent so far.
func (p *uploadProgress) update(sent int64) {
	done := sent >= p.total
	if p.tty {
		if !done && time.Since(p.last) < 200*time.Millisecond {
			return
		}
		p.last = time.Now()
		fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(sent))
		if done {
			fmt.Fprintln(p.w)
		}
		return
	}
	quarter := int64(4)
	if p.total > 0 {
		quarter = min(sent*4/p.total, 4)
	}
	if quarter > p.shown {
		p.shown = quarter
		fmt.Fprintln(p.w, p.line(sent))
	}
}

func (p *uploadProgress) line(sent int64) string {
	pct := 100.0
	if p.total > 0 {
		pct = float64(sent) * 100 / float64(p.total)
	}
	return fmt.Sprintf("uploading %s: %s / %s (%.0f%%)", p.name, byteSize(sent), byteSize(p.total), pct)
}

// byteSize prints n bytes in B, KiB, MiB or GiB.
func byteSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}

// countingReader reports the bytes read so far to progress.
type countingReader struct {
	r        io.Reader
	n        int64
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 {
		c.progress(c.n)
	}
	return n, err
}

// mgmtClient talks to the management API as one logged-in user.
type mgmtClient struct {
	base  *url.URL
	hc    *http.Client
	token string // the user JWT; never printed
}

// mgmtRequestTimeout bounds each management request except the upload,
// which can take as long as the file needs.
const mgmtRequestTimeout = 30 * time.Second

func newMgmtClient(base *url.URL, roots *x509.CertPool, insecure bool) *mgmtClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, InsecureSkipVerify: insecure} //nolint:gosec // --insecure is asked for and warned about
	return &mgmtClient{base: base, hc: &http.Client{Transport: tr}}
}

func (c *mgmtClient) close() { c.hc.CloseIdleConnections() }

// apiError is an answer of the server other than the one expected.
type apiError struct {
	method, path string
	status       int
	msg          string
	requestID    string
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s %s: %d %s", e.method, e.path, e.status, http.StatusText(e.status))
	if e.msg != "" {
		s += ": " + e.msg
	}
	if e.requestID != "" {
		s += " (request id " + e.requestID + ")"
	}
	return s
}

// readAPIError reads a Mender error body from resp.
func readAPIError(req *http.Request, resp *http.Response) *apiError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	e := &apiError{method: req.Method, path: req.URL.Path, status: resp.StatusCode, requestID: resp.Header.Get(menderapi.HeaderRequestID)}
	var body menderapi.ErrorBody
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.msg = body.Error
		if body.RequestID != "" {
			e.requestID = body.RequestID
		}
		return e
	}
	e.msg = strings.TrimSpace(string(b))
	if len(e.msg) > 200 {
		e.msg = e.msg[:200]
	}
	return e
}

// transportError turns a failed request into one line naming the server
// and what to do about it.
func (c *mgmtClient) transportError(err error) error {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach %s: connection refused: is the server running there? (check --server; 'simulator serve' prints its URL)", c.base)
	case errors.As(err, &unknownCA):
		return fmt.Errorf("cannot reach %s: its certificate is not signed by a trusted CA: give the CA with --ca FILE (DIR/ca.crt of simulator serve)", c.base)
	case errors.As(err, &hostErr):
		return fmt.Errorf("cannot reach %s: its certificate is not valid for this host name (%v): use a name the certificate holds in --server", c.base, hostErr)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("cannot reach %s: unknown host %s: check --server", c.base, dnsErr.Name)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("cannot reach %s: %w", c.base, err)
}

// do sends a request with the user token and returns the response when its
// status is one of want; any other status is an *apiError. body may be nil.
func (c *mgmtClient) do(ctx context.Context, method, p string, body io.Reader, contentType string, want ...int) (*http.Response, error) {
	u := *c.base
	u.Path += p
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.transportError(err)
	}
	if !slices.Contains(want, resp.StatusCode) {
		defer resp.Body.Close()
		return nil, readAPIError(req, resp)
	}
	return resp, nil
}

// getJSON GETs p and decodes the JSON answer into v.
func (c *mgmtClient) getJSON(ctx context.Context, p string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, mgmtRequestTimeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodGet, p, nil, "", http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: the answer is not the JSON expected: %w", p, err)
	}
	return nil
}

// login gets a user token with HTTP Basic authentication.
func (c *mgmtClient) login(ctx context.Context, user, password string) error {
	ctx, cancel := context.WithTimeout(ctx, mgmtRequestTimeout)
	defer cancel()
	u := *c.base
	u.Path += menderapi.PathLogin
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(user, password)
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.transportError(err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return fmt.Errorf("login to %s as %s: wrong user or password", c.base, user)
	default:
		return fmt.Errorf("login to %s as %s: %w", c.base, user, readAPIError(req, resp))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("login to %s: %w", c.base, err)
	}
	c.token = strings.TrimSpace(string(b))
	if c.token == "" || strings.ContainsAny(c.token, " \t\r\n") {
		return fmt.Errorf("login to %s: the answer is not a token: is --server a Mender server?", c.base)
	}
	return nil
}

// mgmtImage is an artifact as the deployments service lists it.
type mgmtImage struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	DeviceTypes []string `json:"device_types_compatible"`
	Size        int64    `json:"size"`
	Signed      bool     `json:"signed"`
}

func (c *mgmtClient) listArtifacts(ctx context.Context) ([]mgmtImage, error) {
	var imgs []mgmtImage
	return imgs, c.getJSON(ctx, pathMgmtArtifacts, &imgs)
}

// uploadArtifact streams the file to the server as multipart/form-data
// (size, description, then the artifact last, as the server requires) and
// returns the new artifact's id.
func (c *mgmtClient) uploadArtifact(ctx context.Context, l *localArtifact, description string, progress *uploadProgress) (string, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	var wg sync.WaitGroup
	wg.Go(func() {
		pw.CloseWithError(writeUploadParts(mw, f, l, description, progress))
	})
	resp, err := c.do(ctx, http.MethodPost, pathMgmtArtifacts, pr, mw.FormDataContentType(), http.StatusCreated)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the writer when the server answered early
	wg.Wait()
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	return idFromLocation(resp, pathMgmtArtifacts)
}

// writeUploadParts writes the multipart body of an upload.
func writeUploadParts(mw *multipart.Writer, f *os.File, l *localArtifact, description string, progress *uploadProgress) error {
	if err := mw.WriteField("size", strconv.FormatInt(l.size, 10)); err != nil {
		return err
	}
	if description != "" {
		if err := mw.WriteField("description", description); err != nil {
			return err
		}
	}
	part, err := mw.CreateFormFile("artifact", filepath.Base(l.path))
	if err != nil {
		return err
	}
	n, err := io.Copy(part, &countingReader{r: f, progress: progress.update})
	if err != nil {
		return err
	}
	if n != l.size {
		return fmt.Errorf("%s changed while being uploaded (%d bytes, was %d)", l.path, n, l.size)
	}
	return mw.Close()
}

// idFromLocation returns the last element of the Location header of a 201.
func idFromLocation(resp *http.Response, under string) (string, error) {
	loc, err := resp.Location()
	if err != nil {
		return "", fmt.Errorf("POST %s: the server answered 201 without a Location header", under)
	}
	id := path.Base(loc.Path)
	if id == "" || id == "." || id == "/" || loc.Path == under {
		return "", fmt.Errorf("POST %s: the Location %q holds no id", under, loc)
	}
	return id, nil
}

// createDeployment creates a deployment and returns its id.
func (c *mgmtClient) createDeployment(ctx context.Context, name, artifactName string, devices []string, all bool) (string, error) {
	body := map[string]any{"name": name, "artifact_name": artifactName}
	if all {
		body["all_devices"] = true
	} else {
		body["devices"] = devices
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, mgmtRequestTimeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPost, pathMgmtDeployments, bytes.NewReader(b), menderapi.ContentTypeJSON, http.StatusCreated)
	var ae *apiError
	switch {
	case errors.As(err, &ae) && ae.status == http.StatusUnprocessableEntity:
		return "", fmt.Errorf("create deployment: the server has no artifact named %s (%s)", artifactName, ae.msg)
	case err != nil:
		return "", fmt.Errorf("create deployment: %w", err)
	}
	defer resp.Body.Close()
	return idFromLocation(resp, pathMgmtDeployments)
}

// mgmtDeployment is a deployment as the deployments service shows it.
type mgmtDeployment struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	ArtifactName string     `json:"artifact_name"`
	Created      *time.Time `json:"created"`
	Finished     *time.Time `json:"finished"`
	Status       string     `json:"status"`
	DeviceCount  int        `json:"device_count"`
}

// mgmtDeviceDeployment is one device's part in a deployment.
type mgmtDeviceDeployment struct {
	ID       string     `json:"id"`
	Status   string     `json:"status"`
	Substate string     `json:"substate"`
	Created  *time.Time `json:"created"`
	Started  *time.Time `json:"started"`
	Finished *time.Time `json:"finished"`
	Log      bool       `json:"log"`
}

// duration is how long the device took, or "" when not finished.
func (d *mgmtDeviceDeployment) duration() time.Duration {
	start := d.Started
	if start == nil {
		start = d.Created
	}
	if start == nil || d.Finished == nil || d.Finished.Before(*start) {
		return 0
	}
	return d.Finished.Sub(*start)
}

func isFinalStatus(s string) bool { return slices.Contains(finalDeviceStatuses, s) }

// followOutcome is how following ended.
type followOutcome int

const (
	followDone followOutcome = iota
	followTimeout
	followInterrupted
)

// follower polls a deployment until it is finished, printing progress.
type follower struct {
	c        *mgmtClient
	id       string
	targets  []string // the --devices ids; nil with --all
	interval time.Duration
	timeout  time.Duration // 0 = no limit
	out      io.Writer
	tty      bool
	// summaryEvery is how often a summary line is printed in plain output.
	summaryEvery time.Duration

	dep     mgmtDeployment
	devices map[string]*mgmtDeviceDeployment
	order   []string // device ids, targets first, then in order of appearance
}

// maxPollFailures is how many polls in a row may fail (5xx, connection
// errors) before follow gives up.
const maxPollFailures = 5

// follow polls until the deployment is finished, the timeout passes or ctx
// is canceled. Errors are those of the server; the outcome says how it ended.
func (fw *follower) follow(ctx context.Context) (followOutcome, error) {
	fw.devices = map[string]*mgmtDeviceDeployment{}
	for _, id := range fw.targets {
		if _, dup := fw.devices[id]; !dup {
			fw.devices[id] = &mgmtDeviceDeployment{ID: id, Status: "pending"}
			fw.order = append(fw.order, id)
		}
	}
	var deadline <-chan time.Time
	if fw.timeout > 0 {
		t := time.NewTimer(fw.timeout)
		defer t.Stop()
		deadline = t.C
	}
	var lastSummary time.Time // zero: the first poll prints one
	failures := 0
	for {
		err := fw.poll(ctx)
		switch {
		case ctx.Err() != nil:
			fw.endLine()
			return followInterrupted, nil
		case err != nil && transient(err) && failures+1 < maxPollFailures:
			failures++
			fw.endLine()
			fmt.Fprintf(fw.out, "poll failed, retrying: %v\n", err)
		case err != nil:
			fw.endLine()
			return followDone, fmt.Errorf("follow deployment %s: %w", fw.id, err)
		default:
			failures = 0
			if fw.tty {
				fmt.Fprintf(fw.out, "\r%s\x1b[K", fw.summary())
			} else if time.Since(lastSummary) >= fw.summaryEvery {
				lastSummary = time.Now()
				fmt.Fprintln(fw.out, fw.summary())
			}
			if fw.done() {
				fw.endLine()
				return followDone, nil
			}
		}
		select {
		case <-ctx.Done():
			fw.endLine()
			return followInterrupted, nil
		case <-deadline:
			fw.endLine()
			return followTimeout, nil
		case <-time.After(fw.interval):
		}
	}
}

// endLine ends the redrawn terminal line.
func (fw *follower) endLine() {
	if fw.tty {
		fmt.Fprintln(fw.out)
	}
}

// transient reports whether a failed poll is worth repeating.
func transient(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status >= 500 || ae.status == http.StatusTooManyRequests
	}
	return !errors.Is(err, context.Canceled)
}

// poll fetches the deployment and its devices and prints each device whose
// status changed (plain output only).
func (fw *follower) poll(ctx context.Context) error {
	var dep mgmtDeployment
	if err := fw.c.getJSON(ctx, pathMgmtDeployments+"/"+url.PathEscape(fw.id), &dep); err != nil {
		return err
	}
	var devs []mgmtDeviceDeployment
	if err := fw.c.getJSON(ctx, pathMgmtDeployments+"/"+url.PathEscape(fw.id)+"/devices", &devs); err != nil {
		return err
	}
	fw.dep = dep
	for i := range devs {
		d := devs[i]
		old, seen := fw.devices[d.ID]
		prev := "pending"
		if seen {
			prev = old.Status
		} else {
			fw.order = append(fw.order, d.ID)
		}
		fw.devices[d.ID] = &d
		if d.Status != prev && !fw.tty {
			fmt.Fprintf(fw.out, "%s %s -> %s\n", d.ID, prev, d.Status)
		}
	}
	return nil
}

// total is the number of devices the deployment targets.
func (fw *follower) total() int { return max(fw.dep.DeviceCount, len(fw.devices)) }

// done reports whether the deployment is over: the server says finished,
// or every targeted device is in a final status.
func (fw *follower) done() bool {
	if fw.dep.Status == "finished" {
		return true
	}
	total := fw.total()
	return total > 0 && len(fw.devices) >= total && fw.finished() == total
}

func (fw *follower) finished() int {
	n := 0
	for _, d := range fw.devices {
		if isFinalStatus(d.Status) {
			n++
		}
	}
	return n
}

// counts returns the number of devices in each status; devices the
// server has not listed yet count as pending.
func (fw *follower) counts() map[string]int {
	m := map[string]int{}
	for _, d := range fw.devices {
		m[d.Status]++
	}
	if unseen := fw.total() - len(fw.devices); unseen > 0 {
		m["pending"] += unseen
	}
	return m
}

// summary is the one-line state: status, share finished, counts.
func (fw *follower) summary() string {
	total, fin := fw.total(), fw.finished()
	pct := 0
	if total > 0 {
		pct = fin * 100 / total
	}
	status := fw.dep.Status
	if status == "" {
		status = "pending"
	}
	return fmt.Sprintf("deployment %s: %s, %d/%d devices finished (%d%%): %s", fw.id, status, fin, total, pct, formatCounts(fw.counts()))
}

// formatCounts prints "status n, ..." in deviceStatusOrder, unknown
// statuses last in name order.
func formatCounts(m map[string]int) string {
	var parts []string
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		ia, ib := slices.Index(deviceStatusOrder, a), slices.Index(deviceStatusOrder, b)
		if ia < 0 {
			ia = len(deviceStatusOrder)
		}
		if ib < 0 {
			ib = len(deviceStatusOrder)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	for _, k := range keys {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "no devices yet"
	}
	return strings.Join(parts, ", ")
}

// unfinished lists the devices not in a final status, and how many the
// server has not listed yet.
func (fw *follower) unfinished() ([]string, int) {
	var ids []string
	for _, id := range fw.order {
		if d := fw.devices[id]; !isFinalStatus(d.Status) {
			ids = append(ids, id)
		}
	}
	return ids, max(0, fw.total()-len(fw.devices))
}

// deployResult is the JSON summary of --json.
type deployResult struct {
	DeploymentID string         `json:"deployment_id"`
	Name         string         `json:"name"`
	ArtifactName string         `json:"artifact_name"`
	ArtifactID   string         `json:"artifact_id"`
	Uploaded     bool           `json:"uploaded"`
	Status       string         `json:"status,omitempty"`
	Result       string         `json:"result,omitempty"` // success, failure, timeout, interrupted
	Counts       map[string]int `json:"counts,omitempty"`
	Devices      []deviceResult `json:"devices,omitempty"`
	Unlisted     int            `json:"unlisted_devices,omitempty"`
}

// deviceResult is one device in the JSON summary.
type deviceResult struct {
	ID              string   `json:"id"`
	Status          string   `json:"status"`
	Substate        string   `json:"substate,omitempty"`
	DurationSeconds float64  `json:"duration_seconds,omitempty"`
	LogTail         []string `json:"log_tail,omitempty"`
}

// finishDeploy prints the summary table (or the JSON) and the logs of the
// failed devices, and returns the error that sets the exit code.
func finishDeploy(ctx context.Context, c *mgmtClient, fw *follower, outcome followOutcome, res *deployResult,
	base *url.URL, asJSON bool, stdout io.Writer) error {
	abortHint := fmt.Sprintf("to abort it: PUT %s%s/%s/status with {\"status\":\"aborted\"}", base, pathMgmtDeployments, fw.id)
	if outcome == followInterrupted {
		// ctx is canceled: nothing more is fetched.
		if asJSON {
			fillResult(res, fw, nil, "interrupted")
			_ = writeJSON(stdout, res)
		}
		return fmt.Errorf("interrupted: stopped following deployment %s, which continues on the server; %s", fw.id, abortHint)
	}
	logs := map[string][]string{}
	var failed []string
	for _, id := range fw.order {
		d := fw.devices[id]
		if isFinalStatus(d.Status) && d.Status != "success" && d.Status != "already-installed" {
			failed = append(failed, id)
			if d.Log {
				logs[id] = fw.logTail(ctx, id)
			}
		}
	}
	result := "success"
	switch {
	case outcome == followTimeout:
		result = "timeout"
	case len(failed) > 0:
		result = "failure"
	}
	if asJSON {
		fillResult(res, fw, logs, result)
		if err := writeJSON(stdout, res); err != nil {
			return err
		}
	} else {
		printDeployTable(stdout, fw, failed, logs)
	}
	if outcome == followTimeout {
		ids, unlisted := fw.unfinished()
		what := strings.Join(ids, ", ")
		if unlisted > 0 {
			if what != "" {
				what += " and "
			}
			what += fmt.Sprintf("%d device(s) that have not asked for it yet", unlisted)
		}
		return fmt.Errorf("--timeout %v passed: deployment %s is unfinished on %s (it continues on the server; %s)", fw.timeout, fw.id, what, abortHint)
	}
	if len(failed) > 0 {
		return fmt.Errorf("deployment %s: %d of %d device(s) did not install %s: %s", fw.id, len(failed), fw.total(), res.ArtifactName,
			formatCounts(failedCounts(fw, failed)))
	}
	return nil
}

func failedCounts(fw *follower, failed []string) map[string]int {
	m := map[string]int{}
	for _, id := range failed {
		m[fw.devices[id].Status]++
	}
	return m
}

// logTail returns the last lines of a device's deployment log, or one line
// saying why there are none.
func (fw *follower) logTail(ctx context.Context, dev string) []string {
	ctx, cancel := context.WithTimeout(ctx, mgmtRequestTimeout)
	defer cancel()
	resp, err := fw.c.do(ctx, http.MethodGet, pathMgmtDeployments+"/"+url.PathEscape(fw.id)+"/devices/"+url.PathEscape(dev)+"/log", nil, "", http.StatusOK)
	if err != nil {
		return []string{"(log unavailable: " + err.Error() + ")"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return []string{"(log unavailable: " + err.Error() + ")"}
	}
	var lines []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if l = strings.TrimRight(l, "\r"); strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return logExcerpt(lines, deployLogTail)
}

// logExcerpt picks what to print of a failed device's log lines
// ("TIME LEVEL: MESSAGE"): the last n lines, and before them the last n
// lines at level error or fatal, since a client's last lines are often
// its clean-up while the reason came earlier. Lines keep their order and
// "…" marks a gap.
func logExcerpt(lines []string, n int) []string {
	keep := make([]bool, len(lines))
	for i := max(0, len(lines)-n); i < len(lines); i++ {
		keep[i] = true
	}
	for i, errs := len(lines)-1, 0; i >= 0 && errs < n; i-- {
		if isErrorLogLine(lines[i]) {
			keep[i] = true
			errs++
		}
	}
	var out []string
	gap := false
	for i, l := range lines {
		if !keep[i] {
			gap = true
			continue
		}
		if gap {
			out = append(out, "…")
			gap = false
		}
		out = append(out, l)
	}
	return out
}

// isErrorLogLine reports whether a "TIME LEVEL: MESSAGE" log line has level
// error or fatal (any case, colon optional).
func isErrorLogLine(l string) bool {
	f := strings.Fields(l)
	if len(f) < 3 {
		return false
	}
	switch strings.ToLower(strings.TrimSuffix(f[1], ":")) {
	case "error", "fatal", "panic":
		return true
	}
	return false
}

// printDeployTable prints every device with its status and duration, then
// the log tails of the failed devices.
func printDeployTable(w io.Writer, fw *follower, failed []string, logs map[string][]string) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, fw.summary())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATUS\tDURATION")
	for _, id := range fw.order {
		d := fw.devices[id]
		dur := "-"
		if t := d.duration(); t >= time.Second {
			dur = t.Round(100 * time.Millisecond).String()
		} else if t > 0 {
			dur = t.Round(time.Millisecond).String()
		}
		status := d.Status
		if d.Substate != "" {
			status += " (" + d.Substate + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", id, status, dur)
	}
	if _, unlisted := fw.unfinished(); unlisted > 0 {
		fmt.Fprintf(tw, "(%d more)\tpending\t-\n", unlisted)
	}
	_ = tw.Flush()
	for _, id := range failed {
		lines, ok := logs[id]
		if !ok {
			continue
		}
		if slices.Contains(lines, "…") {
			fmt.Fprintf(w, "\nlog of %s (its last %d lines, and its error lines before them):\n", id, deployLogTail)
		} else {
			fmt.Fprintf(w, "\nlog of %s (%d lines):\n", id, len(lines))
		}
		for _, l := range lines {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

func fillResult(res *deployResult, fw *follower, logs map[string][]string, result string) {
	res.Status, res.Result, res.Counts = fw.dep.Status, result, fw.counts()
	res.Devices = nil
	for _, id := range fw.order {
		d := fw.devices[id]
		res.Devices = append(res.Devices, deviceResult{ID: id, Status: d.Status, Substate: d.Substate,
			DurationSeconds: d.duration().Seconds(), LogTail: logs[id]})
	}
	_, res.Unlisted = fw.unfinished()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
