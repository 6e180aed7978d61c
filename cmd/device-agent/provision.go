package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/identity"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision"
	"github.com/mender-mtls/mtls-agent/internal/provision/serialport"
)

const provisionSynopsis = `Provision this device over a serial line, from a factory station (simulator station).

The device key is created where it stays: in the TPM (--key handle:0x81000100)
or in a 0600 PEM file; an existing key is used again. The device sends its
identity and a CSR signed by the key, checks the certificate the station
returns (it belongs to the key, carries the common name the station asked
for, is valid now and chains to the station's CA), writes it atomically and
sets HttpsClient.Certificate, HttpsClient.Key and Security.AuthPrivateKey in
the agent-only file (--agent-config, default device-agent.conf beside
--config; with --agent-config "" in --config itself), and TPM.Device when
--tpm-device is given: Mender's own tools read mender.conf and cannot load
a key in a TPM. A run that was
interrupted is finished by running it again; the station never issues a
second certificate for one key.

--key defaults to HttpsClient.Key from the configuration files, else handle:0x81000100 when
a TPM answers, else /data/mender/mender-cert-private.pem. --cert defaults to
HttpsClient.Certificate, else mender-cert.pem next to a key file, else
/data/mender/mender-cert.pem.`

// defaultTPMHandle is where provision creates the key in a TPM.
const defaultTPMHandle = "handle:0x81000100"

// cmdProvision implements `device-agent provision`.
func cmdProvision(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("provision", provisionSynopsis, stderr)
	cf.register(fs, getenv)
	port := fs.String("port", "", "serial `PORT` to the station, e.g. /dev/ttyS0, /dev/ttyAMA0, /dev/ttyUSB0 (required)")
	baud := fs.Int("baud", serialport.DefaultBaud, "line speed in `BAUD` (8N1); the station must use the same")
	keyRef := fs.String("key", "", "device key: `handle:0x81000100` (TPM) or a PEM file path (created when missing)")
	certPath := fs.String("cert", "", "certificate `FILE` to write")
	keyType := fs.String("key-type", string(pki.ECDSAP256), "key `TYPE` of a new key: ecdsa-p256 or rsa2048")
	tpmDevice := fs.String("tpm-device", "", "TPM `DEVICE` (path or tcp://HOST:PORT); default: TPM.Device from the config, else /dev/tpmrm0")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this `DURATION`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if strings.TrimSpace(*port) == "" {
		fmt.Fprintf(stderr, "device-agent provision: --port is required (e.g. --port /dev/ttyS0)\n")
		return errUsage
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration such as 5m", *timeout)
	}
	kt, err := pki.ParseKeyType(*keyType)
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	ls, err := cf.logSetup(stderr, getenv, "")
	if err != nil {
		return err
	}
	log := newLogger(stderr, ls)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// Settings are read from the agent-only file over --config and
	// written to the agent-only file.
	target := cf.overlayPath()
	if target == "" {
		target = cf.config
	}
	conf, err := readConfObject(cf.config)
	if err != nil {
		return err
	}
	over := &confObject{}
	if target != cf.config {
		if over, err = readConfObject(target); err != nil {
			return err
		}
	}
	setting := func(section, key string) string {
		if v := over.str(section, key); v != "" {
			return v
		}
		return conf.str(section, key)
	}
	// The port first: a missing or busy one fails before a key is made.
	p, err := serialport.Open(*port, *baud)
	if err != nil {
		return err
	}
	defer p.Close()
	device := *tpmDevice
	if device == "" {
		device = setting("TPM", "Device")
	}
	ref := *keyRef
	if ref == "" {
		ref = setting("HttpsClient", "Key")
	}
	if ref == "" {
		ref = filepath.Join(config.DefaultMTLSDir, config.MTLSKeyFileName)
		if tp, err := keystore.OpenTPM(ctx, device, keystore.TPMOptions{Logger: log}); err == nil {
			_ = tp.Close()
			ref = defaultTPMHandle
		}
	}
	inTPM := strings.HasPrefix(strings.ToLower(ref), "handle:")
	cert := *certPath
	if cert == "" {
		cert = setting("HttpsClient", "Certificate")
	}
	if cert == "" {
		dir := config.DefaultMTLSDir
		if !inTPM {
			dir = filepath.Dir(ref)
		}
		cert = filepath.Join(dir, config.MTLSCertFileName)
	}
	// Absolute paths in mender.conf: the agent resolves relative ones
	// against the file's directory, not the directory provision ran in.
	if cert, err = filepath.Abs(cert); err != nil {
		return err
	}
	if !inTPM {
		if ref, err = filepath.Abs(ref); err != nil {
			return err
		}
	}
	if fi, err := os.Stat(filepath.Dir(cert)); err != nil || !fi.IsDir() {
		if err := os.MkdirAll(filepath.Dir(cert), 0o755); err != nil {
			return fmt.Errorf("--cert %s: cannot create its directory: %w", cert, err)
		}
	}

	k, created, err := openOrCreateKey(ctx, ref, kt, device, log)
	if err != nil {
		return err
	}
	defer k.Close()
	verb := "using"
	if created {
		verb = "created"
	}
	fmt.Fprintf(stdout, "%s key %s (%s)\n", verb, ref, k.Fingerprint())

	ident, err := identity.Collect(ctx, identity.Options{DataDir: getenv("MENDER_DATA_DIR"), Logger: log})
	if err != nil {
		return err
	}
	var current []*x509.Certificate
	if data, err := os.ReadFile(cert); err == nil {
		current, _ = pki.ParseCertsPEM(data) // an unreadable old file is replaced
	}

	datastore := cf.data
	if datastore == "" {
		datastore = config.DefaultDatastoreDir
	}
	var stationName string
	dev := &provision.Device{
		Identity: ident,
		Key:      k,
		KeyInTPM: inTPM,
		Current:  current,
		Link:     provision.LinkOptions{Baud: *baud},
		Log:      log,
		Store: func(_ context.Context, chain []*x509.Certificate, _ *x509.Certificate, station string) error {
			stationName = station
			return storeProvisioned(cert, ref, target, *tpmDevice, chain)
		},
	}
	start := time.Now()
	res, err := dev.Run(ctx, p)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("provision over %s: no result within --timeout %v", *port, *timeout)
		}
		return fmt.Errorf("provision over %s: %w", *port, err)
	}
	marker := provision.Marker{Time: time.Now().UTC().Truncate(time.Second), Station: stationName, Port: *port, CN: res.CN,
		Serial: res.Serial, Fingerprint: res.Fingerprint, NotAfter: res.NotAfter.UTC(), CertFile: cert, Key: ref, KeyInTPM: inTPM, Config: target}
	if err := os.MkdirAll(datastore, 0o755); err == nil {
		if err := provision.WriteMarker(filepath.Join(datastore, provision.MarkerName), marker); err != nil {
			log.Warn("could not record the provisioning for device-agent check", "error", err)
		}
	}
	how := "new certificate"
	if res.Reused {
		how = "certificate confirmed"
	}
	fmt.Fprintf(stdout, "provisioned by %s in %v: %s CN=%s, serial %s, valid until %s\n  certificate: %s\n  key:         %s\n  config:      %s\n",
		res.Station, time.Since(start).Round(time.Millisecond), how, res.CN, res.Serial, res.NotAfter.UTC().Format(time.DateOnly), cert, ref, target)
	if res.Note != "" {
		fmt.Fprintf(stdout, "  station:     %s\n", res.Note)
	}
	return nil
}

// openOrCreateKey opens the key at ref, creating it when there is none.
func openOrCreateKey(ctx context.Context, ref string, kt pki.KeyType, device string, log interface {
	Info(string, ...any)
}) (*keystore.Key, bool, error) {
	k, err := keystore.Open(ctx, ref, keystore.Options{TPMDevice: device})
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, keystore.ErrNotFound) {
		return nil, false, err
	}
	k, err = keystore.Generate(ctx, ref, keystore.GenerateOptions{KeyType: kt, TPMDevice: device})
	if err != nil {
		return nil, false, err
	}
	log.Info("created the device key", "key", ref, "fingerprint", k.Fingerprint())
	return k, true, nil
}

// storeProvisioned writes the certificate chain, then points the
// configuration at it; each file is replaced atomically.
func storeProvisioned(certPath, keyRef, confPath, tpmDevice string, chain []*x509.Certificate) error {
	if err := atomicfile.Write(certPath, pki.EncodeCertsPEM(chain...), pki.CertFileMode); err != nil {
		return storageError(certPath, err)
	}
	conf, err := readConfObject(confPath)
	if err != nil {
		return err
	}
	conf.set("HttpsClient", "Certificate", certPath)
	conf.set("HttpsClient", "Key", keyRef)
	conf.set("Security", "AuthPrivateKey", keyRef)
	if tpmDevice != "" {
		conf.set("TPM", "Device", tpmDevice)
	}
	data, err := json.MarshalIndent(conf.m, "", "  ")
	if err != nil {
		return err
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(confPath); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(confPath), 0o755); err != nil {
		return storageError(confPath, err)
	}
	if err := atomicfile.Write(confPath, append(data, '\n'), mode); err != nil {
		return storageError(confPath, err)
	}
	return nil
}

func storageError(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("no space left on device writing %s: free space on its file system and run provision again (nothing was changed)", path)
	}
	if errors.Is(err, syscall.EROFS) {
		return fmt.Errorf("%s is on a read-only file system: write the certificate to a writable partition such as /data (--cert)", path)
	}
	return err
}

// confObject is mender.conf as a JSON object whose unknown keys are kept.
type confObject struct {
	path string
	m    map[string]json.RawMessage
}

// readConfObject reads path; a missing file is an empty object.
func readConfObject(path string) (*confObject, error) {
	c := &confObject{path: path, m: map[string]json.RawMessage{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	if err := json.Unmarshal(data, &c.m); err != nil {
		return nil, fmt.Errorf("--config %s: not a JSON object (%v): fix the file first, provision rewrites it", path, err)
	}
	if c.m == nil {
		c.m = map[string]json.RawMessage{}
	}
	return c, nil
}

// str returns section.key when it is a string, else "".
func (c *confObject) str(section, key string) string {
	var sec map[string]json.RawMessage
	if json.Unmarshal(c.m[section], &sec) != nil {
		return ""
	}
	var s string
	if json.Unmarshal(sec[key], &s) != nil {
		return ""
	}
	return s
}

// set sets section.key to the string v, keeping the section's other keys.
func (c *confObject) set(section, key, v string) {
	sec := map[string]json.RawMessage{}
	_ = json.Unmarshal(c.m[section], &sec)
	if sec == nil {
		sec = map[string]json.RawMessage{}
	}
	sec[key], _ = json.Marshal(v)
	c.m[section], _ = json.Marshal(sec)
}

// provisioned adds the "provisioned" line of check when the device was
// provisioned over a serial line, and a warning when the configured
// certificate is no longer the one provisioned.
func (c *checker) provisioned(cfg *config.Config) {
	path := filepath.Join(cfg.DatastoreDir, provision.MarkerName)
	m, err := provision.ReadMarker(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		c.warn("provisioned", err.Error())
		return
	}
	where := "in a key file"
	if m.KeyInTPM {
		where = "in the TPM"
	}
	c.pass("provisioned", "by station %s on %s at %s: CN=%s, serial %s, valid until %s, key %s %s",
		m.Station, m.Port, m.Time.UTC().Format(time.RFC3339), m.CN, m.Serial, m.NotAfter.UTC().Format(time.DateOnly), m.Key, where)
	if cfg.CertFile != m.CertFile {
		c.warn("provisioned", fmt.Sprintf("HttpsClient.Certificate is %s, not the provisioned %s", cfg.CertFile, m.CertFile))
		return
	}
	data, err := os.ReadFile(m.CertFile)
	if err != nil {
		return // the certificate check reports it
	}
	if chain, err := pki.ParseCertsPEM(data); err == nil && len(chain) > 0 && pki.CertFingerprint(chain[0]) != m.Fingerprint {
		c.warn("provisioned", fmt.Sprintf("%s was replaced since it was provisioned (%s then, %s now)", m.CertFile, m.Fingerprint, pki.CertFingerprint(chain[0])))
	}
}
