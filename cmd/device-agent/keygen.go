package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/config"
	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

const keygenSynopsis = `Create the device key and write a certificate signing request (CSR) signed by it.

--key handle:0x81000100 creates an unrestricted signing key under the TPM's
standard storage root key and persists it at that handle; the private key
never leaves the TPM. The TPM is --tpm-device, else TPM.Device from the
config, else /dev/tpmrm0 (fallback /dev/tpm0). An object at the handle that
device-agent keygen did not create is never replaced.

--key PATH writes a PKCS#8 PEM key file with mode 0600 instead.

The CSR (PEM) carries --cn as its subject common name; have it signed by the
device CA (e.g. simulator pki sign-csr) and install the certificate as
HttpsClient.Certificate.`

// cmdKeygen implements `device-agent keygen`.
func cmdKeygen(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cf commonFlags
	fs := newFlagSet("keygen", keygenSynopsis, stderr)
	cf.register(fs, getenv)
	keyRef := fs.String("key", "", "key to create: `handle:0x81000100` (TPM) or a PEM file path (required)")
	cn := fs.String("cn", "", "subject common `NAME` of the CSR, e.g. the device ID (required)")
	csrPath := fs.String("csr", "", "`FILE` to write the PEM certificate signing request to (required)")
	keyType := fs.String("key-type", string(pki.ECDSAP256), "key `TYPE`: ecdsa-p256 or rsa2048 (files also: ecdsa-p384, ed25519, rsa3072)")
	force := fs.Bool("force", false, "replace an existing key file, or a key at the handle that keygen created (the old key is destroyed)")
	tpmDevice := fs.String("tpm-device", "", "TPM `DEVICE` (path or tcp://HOST:PORT); default: TPM.Device from the config, else /dev/tpmrm0")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, req := range []struct{ name, val string }{{"key", *keyRef}, {"cn", *cn}, {"csr", *csrPath}} {
		if strings.TrimSpace(req.val) == "" {
			fmt.Fprintf(stderr, "device-agent keygen: --%s is required\n", req.name)
			fs.Usage()
			return errUsage
		}
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

	// Check the CSR can be written before a key is created for nothing.
	if fi, err := os.Stat(filepath.Dir(*csrPath)); err != nil || !fi.IsDir() {
		return fmt.Errorf("--csr %s: the directory %s does not exist: create it or choose another path", *csrPath, filepath.Dir(*csrPath))
	}
	isTPM := strings.HasPrefix(strings.ToLower(*keyRef), "handle:")
	device := *tpmDevice
	if isTPM && device == "" {
		if device, err = configTPMDevice(fs, &cf, getenv); err != nil {
			return err
		}
	}

	k, err := keystore.Generate(ctx, *keyRef, keystore.GenerateOptions{KeyType: kt, Force: *force, TPMDevice: device, Logger: log})
	if err != nil {
		return err
	}
	defer k.Close()
	where := *keyRef
	if info, ok := k.TPMKeyInfo(); ok {
		where = fmt.Sprintf("%s in TPM %s", *keyRef, info.Device)
	}
	fmt.Fprintf(stdout, "created %s key %s (%s)\n", kt, where, k.Fingerprint())

	csr, err := createCSR(k, *cn)
	if err != nil {
		return fmt.Errorf("%w (the key %s was created; rerun with --force to replace it)", err, *keyRef)
	}
	if err := atomicfile.Write(*csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), pki.CertFileMode); err != nil {
		return fmt.Errorf("write CSR: %w (the key %s was created; rerun with --force to replace it)", err, *keyRef)
	}
	fmt.Fprintf(stdout, "wrote certificate request %s for CN=%s\n", *csrPath, *cn)
	return nil
}

// configTPMDevice returns TPM.Device from the configuration. A missing
// configuration is fine unless --config was given explicitly.
func configTPMDevice(fs *flag.FlagSet, cf *commonFlags, getenv func(string) string) (string, error) {
	explicit := false
	fs.Visit(func(f *flag.Flag) {
		explicit = explicit || f.Name == "config" || f.Name == "fallback-config" || f.Name == "agent-config"
	})
	cfg, err := config.Load(cf.loadOptions(getenv))
	switch {
	case err == nil:
		return cfg.TPMDevice, nil
	case errors.Is(err, config.ErrNoConfig) && !explicit:
		return "", nil
	}
	return "", fmt.Errorf("read TPM.Device from the configuration (or pass --tpm-device): %w", err)
}

// createCSR makes a CSR for cn signed by k (in the TPM for TPM keys) and
// checks its signature.
func createCSR(k *keystore.Key, cn string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		return nil, fmt.Errorf("create CSR for CN=%s: %w", cn, err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, fmt.Errorf("create CSR for CN=%s: the signature does not verify: %w", cn, err)
	}
	return der, nil
}

// tpmResult is one line `device-agent check` prints about the TPM.
type tpmResult struct {
	// Status is "PASS", "FAIL", "WARN" or "INFO".
	Status string
	// Name is the check name, e.g. "tpm", "tpm key", "tpm selftest".
	Name string
	// Text is the line's message; for FAIL the error.
	Text string
	// Fix says what to do for FAIL and WARN lines; may be empty.
	Fix string
}

// tpmCheck reports the TPM used by the configuration: the device with its
// manufacturer and firmware, each TPM key (handle, type, whether keygen made
// it) and a sign-and-verify self-test per key. It returns nil when neither
// HttpsClient.Key nor Security.AuthPrivateKey is a TPM handle and no
// TPM.Device is configured.
func tpmCheck(ctx context.Context, cfg *config.Config, log *slog.Logger) []tpmResult {
	var refs []string
	for _, r := range []string{cfg.KeyFile, cfg.AuthKeyFile} {
		if strings.HasPrefix(strings.ToLower(r), "handle:") && !containsFold(refs, r) {
			refs = append(refs, r)
		}
	}
	if len(refs) == 0 && cfg.TPMDevice == "" {
		return nil
	}
	tp, err := keystore.OpenTPM(ctx, cfg.TPMDevice, keystore.TPMOptions{Logger: log})
	if err != nil {
		return []tpmResult{{Status: "FAIL", Name: "tpm", Text: err.Error(),
			Fix: "check that the TPM is enabled in the firmware and TPM.Device in mender.conf"}}
	}
	defer tp.Close()
	var res []tpmResult
	info, err := tp.Info(ctx)
	if err != nil {
		return append(res, tpmResult{Status: "FAIL", Name: "tpm", Text: err.Error()})
	}
	rm := "no resource manager"
	if info.ResourceManager {
		rm = "kernel resource manager"
	}
	res = append(res, tpmResult{Status: "PASS", Name: "tpm", Text: fmt.Sprintf("%s: manufacturer %s, %q, firmware %s, %s, persistent objects: %d",
		info.Device, info.Manufacturer, info.Vendor, info.Firmware, rm, len(info.PersistentHandles))})
	if info.TransientObjects > 0 && !info.ResourceManager {
		res = append(res, tpmResult{Status: "WARN", Name: "tpm", Text: fmt.Sprintf("%d transient objects are loaded between commands: a client leaked them and they use up the TPM's few object slots", info.TransientObjects),
			Fix: "restart the TPM (or flush them: tpm2_flushcontext -t)"})
	}
	if len(refs) == 0 {
		res = append(res, tpmResult{Status: "INFO", Name: "tpm key", Text: "TPM.Device is set but no key is a TPM handle (handle:0x...)"})
	}
	for _, ref := range refs {
		res = append(res, checkTPMKey(ctx, tp, ref, cfg, log)...)
	}
	return res
}

func checkTPMKey(ctx context.Context, tp *keystore.TPM, ref string, cfg *config.Config, log *slog.Logger) []tpmResult {
	k, err := keystore.Open(ctx, ref, keystore.Options{TPM: tp, Logger: log})
	if err != nil {
		fix := ""
		if errors.Is(err, keystore.ErrNotFound) {
			fix = "create it: device-agent keygen --key " + ref + " --cn DEVICE-ID --csr device.csr"
		}
		return []tpmResult{{Status: "FAIL", Name: "tpm key", Text: err.Error(), Fix: fix}}
	}
	defer k.Close()
	ki, _ := k.TPMKeyInfo()
	origin := "made by device-agent keygen"
	if !ki.Ours {
		origin = "not made by device-agent keygen"
	}
	res := []tpmResult{{Status: "PASS", Name: "tpm key", Text: fmt.Sprintf("%s in %s: %s, scheme %s, %s, %s",
		ref, ki.Device, ki.KeyType, ki.Scheme, origin, k.Fingerprint())}}

	start := time.Now()
	if err := k.SelfTest(ctx); err != nil {
		return append(res, tpmResult{Status: "FAIL", Name: "tpm selftest", Text: err.Error()})
	}
	text := fmt.Sprintf("%s signed in the TPM and verified in %v", ref, time.Since(start).Round(10*time.Microsecond))
	if ki.PSSSalt != "" {
		text += "; RSA-PSS salt: " + ki.PSSSalt
	}
	res = append(res, tpmResult{Status: "PASS", Name: "tpm selftest", Text: text})
	if !ki.TLS {
		status := "WARN"
		if ref == cfg.KeyFile && cfg.CertFile != "" {
			status = "FAIL"
		}
		res = append(res, tpmResult{Status: status, Name: "tpm key", Text: ref + " cannot sign TLS 1.3 handshakes (Go's TLS needs RSA-PSS with a hash-length salt)",
			Fix: "use an ECDSA P-256 key: device-agent keygen --key-type ecdsa-p256"})
	}
	return res
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}
