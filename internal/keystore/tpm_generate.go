package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// GenerateOptions configure Generate. The zero value creates an ECDSA P-256
// key, refuses to replace an existing one, uses the default TPM device for
// "handle:" references and logs nothing.
type GenerateOptions struct {
	// KeyType is the key to create; "" means pki.ECDSAP256. TPM keys can be
	// pki.ECDSAP256 or pki.RSA2048; file keys any of pki.KeyTypes().
	KeyType pki.KeyType
	// Force replaces an existing key file, or a key at the handle that this
	// agent created (see Generate). A foreign object at the handle is never
	// replaced.
	Force bool
	// TPMDevice and TPM select the TPM as in Options.
	TPMDevice string
	TPM       *TPM
	// Logger receives one info message about the created key. Nil discards it.
	Logger *slog.Logger
}

// Generate creates a new private key at ref and returns it opened (without
// a certificate), ready to sign a CSR.
//
// For a path it writes a PKCS#8 PEM file with mode 0600 atomically,
// creating missing parent directories with mode 0700; an existing file
// gives ErrExists unless opts.Force is set.
//
// For "handle:0x81000100" it creates an unrestricted signing key (see
// tpmTemplate) as a child of the TCG standard ECC P-256 storage root key in
// the owner hierarchy (the SRK is created from its template, which yields
// the same key every time, and flushed again; it is never persisted), and
// persists it at the handle with TPM2_EvictControl. The handle must be in
// the owner range 0x81000000-0x817FFFFF. When the handle is taken, the
// object there counts as "ours" only when its public area matches one of
// Generate's templates exactly (type, name algorithm, attributes, empty
// policy, curve or key size, scheme); then it is replaced with opts.Force
// and otherwise ErrExists is returned. Any other object gives
// ErrForeignObject and is left alone. Every transient object is flushed
// before Generate returns. Empty owner and key authorization values are
// assumed.
func Generate(ctx context.Context, ref string, opts GenerateOptions) (*Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("generate key %q: %w", ref, err)
	}
	kt := opts.KeyType
	if kt == "" {
		kt = pki.ECDSAP256
	}
	kind, path, err := parseRef(ref)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	switch kind {
	case refPKCS11:
		return nil, fmt.Errorf("generate key %q: %w", redactURI(ref), ErrPKCS11)
	case refTPM:
		return generateTPM(ctx, ref, kt, opts)
	}
	return generateFile(ctx, path, kt, opts)
}

func generateFile(ctx context.Context, path string, kt pki.KeyType, opts GenerateOptions) (*Key, error) {
	if _, err := pki.ParseKeyType(string(kt)); err != nil {
		return nil, fmt.Errorf("generate key %s: %w: %w", path, ErrUnsupported, err)
	}
	if !opts.Force {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("generate key: %w: %s exists: use --force to replace it (the old key is lost)", ErrExists, path)
		}
	}
	signer, err := pki.GenerateKey(kt)
	if err != nil {
		return nil, fmt.Errorf("generate key %s: %w", path, err)
	}
	pemKey, err := pki.MarshalPrivateKeyPEM(signer)
	if err != nil {
		return nil, fmt.Errorf("generate key %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("generate key %s: create directory: %w", path, err)
	}
	write := atomicfile.WriteNew
	if opts.Force {
		write = atomicfile.Write
	}
	if err := write(path, pemKey, pki.KeyFileMode); err != nil {
		if errors.Is(err, atomicfile.ErrExists) {
			return nil, fmt.Errorf("generate key: %w: %s exists: use --force to replace it (the old key is lost): %w", ErrExists, path, err)
		}
		return nil, fmt.Errorf("generate key: %w", err)
	}
	k, err := Open(ctx, path, Options{Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	k.log.Info("generated key", "key_file", path, "key_type", string(kt), "fingerprint", menderapi.Fingerprint(signer.Public()))
	return k, nil
}

func generateTPM(ctx context.Context, ref string, kt pki.KeyType, opts GenerateOptions) (*Key, error) {
	tmpl, err := tpmTemplate(kt)
	if err != nil {
		return nil, fmt.Errorf("generate key %s: %w", ref, err)
	}
	h, err := parseHandleRef(ref)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if h > persistentOwnerLast {
		return nil, fmt.Errorf("generate key %s: %w: 0x%08x is in the platform range; the owner can persist keys at 0x81000000-0x817FFFFF, e.g. %s",
			ref, ErrInvalidHandle, uint32(h), exampleHandleRef)
	}
	t, owned := opts.TPM, false
	if t == nil {
		if t, err = OpenTPM(ctx, opts.TPMDevice, TPMOptions{Logger: opts.Logger}); err != nil {
			return nil, fmt.Errorf("generate key %s: %w", ref, err)
		}
		owned = true
	}
	closeTPM := func() {
		if owned {
			_ = t.Close()
		}
	}
	log := loggerOr(opts.Logger)
	if h == conventionalSRKIndex {
		log.Warn("0x81000001 is where platforms conventionally persist the storage root key; prefer another handle such as 0x81000100", "handle", "0x81000001")
	}
	replaced := false
	err = t.do(ctx, func(tp transport.TPM) error {
		var err error
		replaced, err = createAndPersist(tp, t.name, h, tmpl, opts.Force)
		return err
	})
	if err != nil {
		closeTPM()
		if errors.Is(err, ErrExists) || errors.Is(err, ErrForeignObject) {
			return nil, fmt.Errorf("generate key %s: %w", ref, err)
		}
		return nil, fmt.Errorf("generate key %s: %w", ref, t.explain("create key", err))
	}
	k, err := Open(ctx, ref, Options{TPM: t, Logger: opts.Logger})
	if err != nil {
		closeTPM()
		return nil, err
	}
	if owned {
		k.closer = t
	}
	log.Info("created TPM key", "tpm", t.name, "handle", fmt.Sprintf("0x%08x", uint32(h)), "key_type", string(kt),
		"replaced", replaced, "fingerprint", k.Fingerprint())
	return k, nil
}

// createAndPersist runs the TPM commands of Generate with the TPM held:
// check the handle, create the SRK and the key, evict our old key when
// forced, persist the new one. It reports whether an old key was replaced.
// Transient objects are flushed on every path.
func createAndPersist(tp transport.TPM, tpmName string, h tpm2.TPMHandle, tmpl tpm2.TPMTPublic, force bool) (replaced bool, err error) {
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

	var old *tpm2.ReadPublicResponse
	switch rp, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(tp); {
	case err == nil:
		pub, perr := rp.OutPublic.Contents()
		if perr != nil || !isOurs(pub) {
			return false, fmt.Errorf("%w: 0x%08x in TPM %s is not a key made by device-agent keygen (its public template differs), so it is never evicted: choose another handle, or remove the object yourself (tpm2_evictcontrol -C o -c 0x%08x)",
				ErrForeignObject, uint32(h), tpmName, uint32(h))
		}
		if !force {
			return false, fmt.Errorf("%w: handle 0x%08x in TPM %s already holds a key made by device-agent keygen: use it, or pass --force to replace it (the old key is destroyed)",
				ErrExists, uint32(h), tpmName)
		}
		old = rp
	case !errors.Is(err, tpm2.TPMRCHandle):
		return false, fmt.Errorf("read handle 0x%08x: %w", uint32(h), err)
	}

	srk, err := tpm2.CreatePrimary{
		PrimaryHandle: owner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tp)
	if err != nil {
		return false, fmt.Errorf("create the storage root key (TCG ECC P-256 template): %w", err)
	}
	defer flush(tp, srk.ObjectHandle, &err)
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}

	created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		return false, fmt.Errorf("create the signing key: %w", err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(tp)
	if err != nil {
		return false, fmt.Errorf("load the signing key: %w", err)
	}
	defer flush(tp, loaded.ObjectHandle, &err)

	if old != nil {
		if _, err := (tpm2.EvictControl{
			Auth:             owner,
			ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: old.Name},
			PersistentHandle: h,
		}).Execute(tp); err != nil {
			return false, fmt.Errorf("evict the old key at 0x%08x: %w", uint32(h), err)
		}
	}
	if _, err := (tpm2.EvictControl{
		Auth:             owner,
		ObjectHandle:     tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
		PersistentHandle: h,
	}).Execute(tp); err != nil {
		if errors.Is(err, tpm2.TPMRCNVSpace) {
			return false, fmt.Errorf("persist the key at 0x%08x: %w: the TPM has no room for another persistent object: remove one (tpm2_evictcontrol)", uint32(h), err)
		}
		return false, fmt.Errorf("persist the key at 0x%08x: %w", uint32(h), err)
	}
	return old != nil, nil
}

// flush flushes a transient object, adding a failure to *errp.
func flush(tp transport.TPM, h tpm2.TPMHandle, errp *error) {
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tp); err != nil {
		*errp = errors.Join(*errp, fmt.Errorf("flush transient object 0x%08x: %w", uint32(h), err))
	}
}
