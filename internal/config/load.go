package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Mender's default directories and file names (protocol notes §7).
const (
	// DefaultConfDir is MENDER_CONF_DIR's default, the directory of the main file.
	DefaultConfDir = "/etc/mender"
	// DefaultDataDir is MENDER_DATA_DIR's default (identity and inventory scripts).
	DefaultDataDir = "/usr/share/mender"
	// DefaultDatastoreDir is MENDER_DATASTORE_DIR's default (state, keys, fallback file).
	DefaultDatastoreDir = "/var/lib/mender"
	// DefaultMTLSDir is where the Mender mTLS guide puts the device certificate and key.
	DefaultMTLSDir = "/data/mender"

	// ConfFileName is the name of both config files.
	ConfFileName = "mender.conf"
	// AgentConfFileName is the agent-only overlay file next to mender.conf
	// (see LoadOptions.OverlayPath).
	AgentConfFileName = "device-agent.conf"
	// MTLSCertFileName and MTLSKeyFileName are the mTLS files looked for in the mTLS directory.
	MTLSCertFileName = "mender-cert.pem"
	MTLSKeyFileName  = "mender-cert-private.pem"
	// AuthKeyFileName is the generated auth key in the datastore directory.
	AuthKeyFileName = "mender-agent.pem"
	// DeviceTypeFileName is the device_type file in the datastore directory.
	DeviceTypeFileName = "device_type"
)

// Interval defaults, used when the file leaves the key out or sets it to 0.
const (
	DefaultUpdatePollInterval    = 1800 * time.Second
	DefaultInventoryPollInterval = 28800 * time.Second // as the C++ client
	DefaultRetryPollInterval     = 300 * time.Second
)

// Device tiers accepted in DeviceTier.
const (
	TierStandard = "standard"
	TierMicro    = "micro"
	TierSystem   = "system"
)

// maxFileSize bounds how much of a config file is read.
const maxFileSize = 1 << 20

// ErrNoConfig is returned, wrapped with the paths tried, when neither config
// file exists.
var ErrNoConfig = errors.New("no mender.conf found")

// LoadOptions says where the config files and Mender's directories are.
type LoadOptions struct {
	// MainPath is the main file (usually /etc/mender/mender.conf); "" skips it.
	MainPath string
	// FallbackPath is the fallback file (usually /var/lib/mender/mender.conf),
	// loaded first and overridden by MainPath; "" skips it. At least one of the
	// two files must exist.
	FallbackPath string
	// OverlayPath is the agent-only file (usually
	// /etc/mender/device-agent.conf), read after MainPath with the same
	// schema; its keys win over both files. It holds what only this agent
	// may read, such as an HttpsClient with a TPM handle that Mender's own
	// tools, which read mender.conf too, cannot load. "" or a missing file
	// skips it; it does not count as a config file for ErrNoConfig.
	OverlayPath string
	// DataDir is the MENDER_DATA_DIR value; "" means /usr/share/mender.
	DataDir string
	// DatastoreDir is the MENDER_DATASTORE_DIR value; "" means /var/lib/mender.
	DatastoreDir string
	// MTLSDir holds mender-cert.pem and mender-cert-private.pem when mTLS is set
	// up as in the Mender mTLS guide; "" means /data/mender.
	MTLSDir string
}

// Config is the validated, resolved result of [Load] that cmd/ maps to
// component options. Paths are absolute when the file gave them relative
// (resolved against the directory of the file that set them), except TPM
// handles ("handle:0x...") which are kept as written.
type Config struct {
	// File is the merged raw file.
	File File
	// Sources are the files that were loaded, fallback first, then the
	// main file, then the agent-only overlay.
	Sources []string
	// Servers are the server base URLs from ServerURL or Servers, in order,
	// without duplicates, with trailing "/" trimmed and "https://" added when
	// the URL had no scheme. Never empty.
	Servers []string
	// TenantToken is the tenant token with surrounding whitespace trimmed.
	TenantToken string
	// DeviceTier is File.DeviceTier, "standard" when unset.
	DeviceTier string
	// CertFile and KeyFile are the mTLS client certificate and key; "" means
	// no mTLS. They come from HttpsClient, or, when HttpsClient is not
	// configured in either file, from MTLSDir when both files exist there.
	CertFile, KeyFile string
	// AuthKeyFile is the key that signs auth requests: Security.AuthPrivateKey,
	// else KeyFile, else <datastore>/mender-agent.pem.
	AuthKeyFile string
	// AuthKeyGenerated is true when AuthKeyFile is <datastore>/mender-agent.pem,
	// which the agent generates when it is absent.
	AuthKeyGenerated bool
	// ServerCertificate is an extra trusted CA or server certificate file; "" = none.
	ServerCertificate string
	// SkipVerify disables TLS server certificate verification.
	SkipVerify bool
	// UpdatePollInterval is the update-check period (default 30 min).
	UpdatePollInterval time.Duration
	// InventoryPollInterval is the inventory period (default 8 h).
	InventoryPollInterval time.Duration
	// RetryPollInterval is the cap of the retry backoff (default 5 min).
	RetryPollInterval time.Duration
	// RetryPollCount is the maximum number of retries; 0 = Mender's default rule.
	RetryPollCount int
	// DeviceTypeFile is the device_type file; default <datastore>/device_type.
	DeviceTypeFile string
	// DataDir and DatastoreDir are Mender's directories with defaults applied.
	DataDir, DatastoreDir string
	// TPMDevice is File.TPM.Device; "" when unset.
	TPMDevice string
	// Warnings are problems that do not stop the agent: unknown and duplicate
	// keys, Security.AuthPrivateKey differing from the mTLS key, relative
	// paths, half-present mTLS files. Each names the file or key.
	Warnings []string
}

// DefaultOverlayPath returns the agent-only overlay file for Mender's
// MENDER_CONF_DIR value ("" means /etc/mender): device-agent.conf next to
// mender.conf.
func DefaultOverlayPath(confDir string) string {
	return filepath.Join(orDefault(confDir, DefaultConfDir), AgentConfFileName)
}

// DefaultPaths returns the main and fallback config paths for Mender's
// MENDER_CONF_DIR and MENDER_DATASTORE_DIR values ("" means the Mender
// defaults, giving /etc/mender/mender.conf and /var/lib/mender/mender.conf).
// dataDir (MENDER_DATA_DIR) is accepted for symmetry with the three Mender
// variables; no config file lives there.
func DefaultPaths(confDir, dataDir, datastoreDir string) (main, fallback string) {
	_ = dataDir
	return filepath.Join(orDefault(confDir, DefaultConfDir), ConfFileName),
		filepath.Join(orDefault(datastoreDir, DefaultDatastoreDir), ConfFileName)
}

// Load reads, merges, validates and resolves the config files. The fallback
// file is decoded first and every key present in the main file overrides it;
// a JSON null counts as absent. Unknown keys become Config.Warnings.
//
// A missing file is skipped; when both are missing the error wraps
// [ErrNoConfig]. Problems with the content are all returned at once in a
// [*LoadError], each matching [ErrInvalid] and naming the file and key
// ([*KeyError], [*SyntaxError]), together with the warnings found so far.
// Decoding problems (malformed JSON, wrong types) are reported without the
// checks of combinations, which would only repeat them.
func Load(opts LoadOptions) (*Config, error) {
	d := newDecoder()
	var f File
	var sources, tried []string
	var readErrs []error
	found := 0        // of the main and fallback files
	var edited string // the last of them read: where missing keys belong
	for i, path := range []string{opts.FallbackPath, opts.MainPath, opts.OverlayPath} {
		if path == "" {
			continue
		}
		overlay := i == 2
		if !overlay {
			tried = append(tried, path)
		}
		data, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			readErrs = append(readErrs, err)
			continue
		}
		if !overlay {
			found++
			edited = path
		}
		sources = append(sources, path)
		d.decodeFile(path, data, &f)
	}
	if len(readErrs) > 0 || len(d.errs) > 0 {
		return nil, &LoadError{Problems: append(readErrs, d.errs...), Warnings: d.warnings}
	}
	if found == 0 {
		if len(tried) == 0 {
			return nil, fmt.Errorf("%w: no config path given; pass the main and fallback paths", ErrNoConfig)
		}
		return nil, fmt.Errorf("%w: tried %s; create %s with at least ServerURL",
			ErrNoConfig, strings.Join(tried, " and "), tried[len(tried)-1])
	}

	// Keys set in neither file are reported against the file the user edits.
	r := &resolver{f: &f, origin: d.origin, defaultFile: edited}
	if errs := r.validate(); len(errs) > 0 {
		return nil, &LoadError{Problems: errs, Warnings: d.warnings}
	}
	c := r.resolve(opts)
	c.Sources = sources
	c.Warnings = append(d.warnings, c.Warnings...)
	return c, nil
}

// LoadError is the error [Load] returns when a config file cannot be read or
// its content is unusable. Callers should print Warnings as well as the
// problems: a warning often explains a problem, as the unknown key
// "ServerUrl" (did you mean "ServerURL"?) explains "ServerURL is not set".
// Like an [errors.Join] result it unwraps to the problems, so errors.Is and
// errors.As see each of them.
type LoadError struct {
	// Problems are the errors, one per problem; content problems match
	// [ErrInvalid] and name the file and key.
	Problems []error
	// Warnings are the warnings found before the problems stopped loading
	// (unknown and duplicate keys), as in [Config.Warnings].
	Warnings []string
}

// Error lists the problems one per line, as errors.Join does.
func (e *LoadError) Error() string { return errors.Join(e.Problems...).Error() }

// Unwrap returns the problems.
func (e *LoadError) Unwrap() []error { return e.Problems }

// Validate checks f on its own, as [Load] does after merging, and returns
// every problem joined with [errors.Join]; each matches [ErrInvalid] and names
// the key. The errors name no file.
func (f *File) Validate() error {
	r := &resolver{f: f}
	return errors.Join(r.validate()...)
}

// readFile reads a config file, at most maxFileSize bytes.
func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("read config %s: %w: larger than %d bytes; is this really mender.conf?",
			path, ErrInvalid, maxFileSize)
	}
	return data, nil
}

// resolver validates and resolves a merged File, knowing which file set each key.
type resolver struct {
	f           *File
	origin      map[string]string
	defaultFile string
}

// fileOf returns the file that set key, or the default file.
func (r *resolver) fileOf(key string) string {
	if f, ok := r.origin[key]; ok {
		return f
	}
	return r.defaultFile
}

// keyErr returns a KeyError for key, attributed to the file of attrKey.
func (r *resolver) keyErr(key, attrKey, format string, args ...any) error {
	return &KeyError{File: r.fileOf(attrKey), Key: key, Msg: fmt.Sprintf(format, args...)}
}

// validate returns every problem of the merged file, one error per problem.
func (r *resolver) validate() []error {
	f := r.f
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, r.keyErr(key, key, format, args...))
	}

	// Servers.
	switch {
	case f.ServerURL != "" && len(f.Servers) > 0:
		add("Servers", "cannot be used together with ServerURL (set in %s); keep only one of them",
			r.fileOf("ServerURL"))
	case f.ServerURL == "" && len(f.Servers) == 0:
		add("ServerURL", "is not set and neither is Servers; set ServerURL to the Mender server, e.g. https://mender.example.com")
	}
	if f.ServerURL != "" {
		if _, err := normalizeServerURL(f.ServerURL); err != nil {
			add("ServerURL", "%v", err)
		}
	}
	for i, s := range f.Servers {
		key := fmt.Sprintf("Servers[%d].ServerURL", i)
		if strings.TrimSpace(s.ServerURL) == "" {
			errs = append(errs, r.keyErr(key, "Servers", "is empty; give every Servers entry a ServerURL or remove the entry"))
			continue
		}
		if _, err := normalizeServerURL(s.ServerURL); err != nil {
			errs = append(errs, r.keyErr(key, "Servers", "%v", err))
		}
	}

	// mTLS pair.
	switch {
	case f.HttpsClient.Key != "" && f.HttpsClient.Certificate == "":
		add("HttpsClient.Key", "is set but HttpsClient.Certificate is empty; set both or neither")
	case f.HttpsClient.Certificate != "" && f.HttpsClient.Key == "":
		add("HttpsClient.Certificate", "is set but HttpsClient.Key is empty; set both or neither")
	}

	// Key references this agent cannot use.
	for _, k := range []struct{ key, val string }{
		{"HttpsClient.Key", f.HttpsClient.Key},
		{"Security.AuthPrivateKey", f.Security.AuthPrivateKey},
	} {
		if isPKCS11(k.val) {
			add(k.key, "is a pkcs11: URI; pkcs11 keys are not supported by this agent; use a key file or a TPM handle (handle:0x...)")
		}
	}
	for _, k := range []struct{ key, val string }{
		{"HttpsClient.SSLEngine", f.HttpsClient.SSLEngine},
		{"Security.SSLEngine", f.Security.SSLEngine},
	} {
		if k.val != "" {
			add(k.key, "is %q, but OpenSSL engines are not supported by this agent; remove it and use a key file or a TPM handle", k.val)
		}
	}

	// Numbers.
	for _, n := range []struct {
		key string
		val int
	}{
		{"UpdatePollIntervalSeconds", f.UpdatePollIntervalSeconds},
		{"InventoryPollIntervalSeconds", f.InventoryPollIntervalSeconds},
		{"RetryPollIntervalSeconds", f.RetryPollIntervalSeconds},
		{"RetryPollCount", f.RetryPollCount},
		{"RetryDownloadCount", f.RetryDownloadCount},
		{"StateScriptTimeoutSeconds", f.StateScriptTimeoutSeconds},
		{"StateScriptRetryTimeoutSeconds", f.StateScriptRetryTimeoutSeconds},
		{"StateScriptRetryIntervalSeconds", f.StateScriptRetryIntervalSeconds},
		{"ModuleTimeoutSeconds", f.ModuleTimeoutSeconds},
		{"Connectivity.IdleConnTimeoutSeconds", f.Connectivity.IdleConnTimeoutSeconds},
		{"UpdateControlMapExpirationTimeSeconds", f.UpdateControlMapExpirationTimeSeconds},
		{"UpdateControlMapBootExpirationTimeSeconds", f.UpdateControlMapBootExpirationTimeSeconds},
	} {
		switch {
		case n.val < 0:
			add(n.key, "is %d; it must not be negative (0 means the default)", n.val)
		case strings.HasSuffix(n.key, "Seconds") && int64(n.val) > maxSeconds:
			add(n.key, "is %d; it must be at most %d", n.val, maxSeconds)
		}
	}

	if f.ArtifactVerifyKey != "" && len(f.ArtifactVerifyKeys) > 0 {
		add("ArtifactVerifyKeys", "cannot be used together with ArtifactVerifyKey (set in %s); keep only one of them",
			r.fileOf("ArtifactVerifyKey"))
	}
	switch _, set := r.origin["DeviceTier"]; {
	case f.DeviceTier == "" && set: // Mender 5.1 refuses it too
		add("DeviceTier", `is ""; remove the key for the default (standard), or set standard, micro or system`)
	case f.DeviceTier == "", f.DeviceTier == TierStandard, f.DeviceTier == TierMicro, f.DeviceTier == TierSystem:
	default:
		add("DeviceTier", "is %q; it must be one of standard, micro or system", f.DeviceTier)
	}
	return errs
}

// maxSeconds is the largest number of seconds a time.Duration holds.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// resolve builds the Config of a validated file.
func (r *resolver) resolve(opts LoadOptions) *Config {
	f := r.f
	c := &Config{
		File:                  *f,
		TenantToken:           strings.TrimSpace(f.TenantToken),
		DeviceTier:            orDefault(f.DeviceTier, TierStandard),
		SkipVerify:            f.SkipVerify,
		UpdatePollInterval:    seconds(f.UpdatePollIntervalSeconds, DefaultUpdatePollInterval),
		InventoryPollInterval: seconds(f.InventoryPollIntervalSeconds, DefaultInventoryPollInterval),
		RetryPollInterval:     seconds(f.RetryPollIntervalSeconds, DefaultRetryPollInterval),
		RetryPollCount:        f.RetryPollCount,
		DataDir:               orDefault(opts.DataDir, DefaultDataDir),
		DatastoreDir:          orDefault(opts.DatastoreDir, DefaultDatastoreDir),
		TPMDevice:             f.TPM.Device,
	}
	if c.DeviceTier == TierSystem {
		c.Warnings = append(c.Warnings, `DeviceTier is "system": auth requests say tier "system", but this agent has no `+
			`Mender Orchestrator support and checks for updates with device_type, not the system_type of a topology `+
			`(Mender 5.1 uses system_type for system devices); use "standard" unless the server requires "system"`)
	}

	// Servers: validate has checked that every URL normalizes.
	urls := []string{f.ServerURL}
	if f.ServerURL == "" {
		urls = urls[:0]
		for _, s := range f.Servers {
			urls = append(urls, s.ServerURL)
		}
	}
	for _, u := range urls {
		n, _ := normalizeServerURL(u)
		if slices.Contains(c.Servers, n) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("Servers: %s is listed more than once; the duplicate is ignored", n))
			continue
		}
		c.Servers = append(c.Servers, n)
	}

	c.ServerCertificate = r.path("ServerCertificate", f.ServerCertificate, &c.Warnings)
	c.DeviceTypeFile = r.path("DeviceTypeFile", f.DeviceTypeFile, &c.Warnings)
	if c.DeviceTypeFile == "" {
		c.DeviceTypeFile = filepath.Join(c.DatastoreDir, DeviceTypeFileName)
	}

	// mTLS: from HttpsClient, else the files of the Mender mTLS guide.
	c.CertFile = r.path("HttpsClient.Certificate", f.HttpsClient.Certificate, &c.Warnings)
	c.KeyFile = r.path("HttpsClient.Key", f.HttpsClient.Key, &c.Warnings)
	if c.CertFile == "" && c.KeyFile == "" {
		dir := orDefault(opts.MTLSDir, DefaultMTLSDir)
		cert := filepath.Join(dir, MTLSCertFileName)
		key := filepath.Join(dir, MTLSKeyFileName)
		certOK, keyOK := isFile(cert), isFile(key)
		switch {
		case certOK && keyOK:
			c.CertFile, c.KeyFile = cert, key
		case certOK:
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s exists but %s does not; not using mTLS (add the key or set HttpsClient)", cert, key))
		case keyOK:
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s exists but %s does not; not using mTLS (add the certificate or set HttpsClient)", key, cert))
		}
	}

	// Auth key (protocol notes §8.3).
	auth := r.path("Security.AuthPrivateKey", f.Security.AuthPrivateKey, &c.Warnings)
	switch {
	case auth != "":
		c.AuthKeyFile = auth
		if c.KeyFile != "" && c.KeyFile != auth {
			c.Warnings = append(c.Warnings, fmt.Sprintf(
				"Security.AuthPrivateKey (%s) differs from the mTLS key (%s): auth requests are signed with Security.AuthPrivateKey, "+
					"and an mTLS ambassador rejects them unless that key matches the client certificate; point both at the same key",
				auth, c.KeyFile))
		}
	case c.KeyFile != "":
		c.AuthKeyFile = c.KeyFile
	default:
		c.AuthKeyFile = filepath.Join(c.DatastoreDir, AuthKeyFileName)
		c.AuthKeyGenerated = true
	}
	return c
}

// path resolves the path-valued key val against the directory of the file
// that set it. TPM handles and empty values are returned as they are.
func (r *resolver) path(key, val string, warnings *[]string) string {
	if val == "" || isHandle(val) || filepath.IsAbs(val) {
		return val
	}
	file, ok := r.origin[key]
	if !ok {
		return val
	}
	abs := filepath.Join(filepath.Dir(file), val)
	*warnings = append(*warnings, fmt.Sprintf(
		"%s: key %q is the relative path %q; using %s (Mender resolves it against its working directory; use an absolute path)",
		file, key, val, abs))
	return abs
}

// normalizeServerURL trims whitespace, adds https:// when there is no scheme,
// checks the result is an http(s) URL with a host and nothing after the path,
// and trims trailing slashes.
func normalizeServerURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("is not a valid URL (%v); use e.g. https://mender.example.com", err)
	}
	if sch := strings.ToLower(u.Scheme); sch != "https" && sch != "http" {
		return "", fmt.Errorf("has scheme %q; use https:// (or http://)", u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("has no host (%q); use e.g. https://mender.example.com", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return "", fmt.Errorf("has a query or fragment (%q); give only the server base URL", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// isHandle reports whether a key value is a TPM handle reference.
func isHandle(v string) bool {
	return strings.HasPrefix(strings.ToLower(v), "handle:")
}

// isPKCS11 reports whether a key value is a pkcs11: URI.
func isPKCS11(v string) bool {
	return strings.HasPrefix(strings.ToLower(strings.TrimSpace(v)), "pkcs11:")
}

// isFile reports whether path exists and is not a directory.
func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

// seconds turns a number of seconds into a Duration, def when it is 0.
func seconds(n int, def time.Duration) time.Duration {
	if n == 0 {
		return def
	}
	return time.Duration(n) * time.Second
}

// orDefault returns v, or def when v is "".
func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
