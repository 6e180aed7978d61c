// Package pki holds the X.509 mechanics shared by the factory, the test
// ambassador, the fleet simulator and the tests: key generation, PEM encoding
// and parsing of keys and certificates, a small certificate authority that
// issues server, client and intermediate certificates and signs CSRs, and
// [EnsureServerPKI], which keeps a CA and a server certificate in a directory.
//
// Every file is written through internal/atomicfile: private keys with mode
// 0600, certificates with mode 0644. Errors name the file they concern.
// The package imports only the standard library and internal/atomicfile.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Errors callers branch on with errors.Is.
var (
	// ErrEncryptedKey means a private key PEM block is passphrase-protected.
	// Decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`.
	ErrEncryptedKey = errors.New("encrypted private keys are not supported")
	// ErrNoPEM means the data holds no PEM block of the wanted kind.
	ErrNoPEM = errors.New("no PEM data found")
	// ErrUnsupportedKey means a PEM block type or key algorithm that this
	// package cannot use as a signing key.
	ErrUnsupportedKey = errors.New("unsupported key")
	// ErrUnknownKeyType means a key type name that ParseKeyType does not know.
	ErrUnknownKeyType = errors.New("unknown key type")
	// ErrInvalidCSR means a certificate request that does not verify or lacks
	// a field the CA needs.
	ErrInvalidCSR = errors.New("invalid certificate request")
)

// KeyType names a key algorithm and size that GenerateKey can create.
type KeyType string

// Key types GenerateKey supports.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	Ed25519   KeyType = "ed25519"
	RSA2048   KeyType = "rsa2048"
	RSA3072   KeyType = "rsa3072"
)

// KeyTypes returns every supported key type, in a stable order (for help
// texts and tests).
func KeyTypes() []KeyType {
	return []KeyType{ECDSAP256, ECDSAP384, Ed25519, RSA2048, RSA3072}
}

// ParseKeyType parses a key type name such as "ecdsa-p256" (case-insensitive,
// surrounding spaces ignored). An unknown name gives an error wrapping
// ErrUnknownKeyType that lists the valid names.
func ParseKeyType(s string) (KeyType, error) {
	want := KeyType(strings.ToLower(strings.TrimSpace(s)))
	names := make([]string, 0, len(KeyTypes()))
	for _, t := range KeyTypes() {
		if t == want {
			return t, nil
		}
		names = append(names, string(t))
	}
	return "", fmt.Errorf("%w %q: use one of %s", ErrUnknownKeyType, s, strings.Join(names, ", "))
}

// GenerateKey creates a new private key of type t. The result is an
// *ecdsa.PrivateKey, an ed25519.PrivateKey or an *rsa.PrivateKey.
func GenerateKey(t KeyType) (crypto.Signer, error) {
	var (
		k   crypto.Signer
		err error
	)
	switch t {
	case ECDSAP256, ECDSAP384:
		curve := elliptic.P256()
		if t == ECDSAP384 {
			curve = elliptic.P384()
		}
		var ek *ecdsa.PrivateKey
		if ek, err = ecdsa.GenerateKey(curve, rand.Reader); err == nil {
			k = ek
		}
	case Ed25519:
		var ek ed25519.PrivateKey
		if _, ek, err = ed25519.GenerateKey(rand.Reader); err == nil {
			k = ek
		}
	case RSA2048, RSA3072:
		bits := 2048
		if t == RSA3072 {
			bits = 3072
		}
		var rk *rsa.PrivateKey
		if rk, err = rsa.GenerateKey(rand.Reader, bits); err == nil {
			k = rk
		}
	default:
		_, err := ParseKeyType(string(t))
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", t, err)
	}
	return k, nil
}

// MarshalPrivateKeyPEM encodes k as a PKCS#8 "PRIVATE KEY" PEM block. k must
// be an RSA, ECDSA or Ed25519 private key held in memory; opaque signers
// (TPM keys, wrappers) give an error wrapping ErrUnsupportedKey.
func MarshalPrivateKeyPEM(k crypto.Signer) ([]byte, error) {
	if p, ok := k.(*ed25519.PrivateKey); ok && p != nil {
		k = *p
	}
	switch k.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
	default:
		return nil, fmt.Errorf("marshal private key: %w: %T cannot be exported as PKCS#8", ErrUnsupportedKey, k)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM parses the first private key PEM block in data. It
// accepts PKCS#1 "RSA PRIVATE KEY", PKCS#8 "PRIVATE KEY" and SEC1 "EC PRIVATE
// KEY" blocks, skipping "EC PARAMETERS" blocks before the key (as
// `openssl ecparam -genkey` writes one). A passphrase-protected block gives
// ErrEncryptedKey; any other block type, or a key that cannot sign (such as
// X25519), gives an error wrapping ErrUnsupportedKey that names the type.
// Data without a PEM block gives ErrNoPEM.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("%w: expected a private key PEM block", ErrNoPEM)
		}
		if blk.Type == "EC PARAMETERS" {
			continue
		}
		if blk.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(blk.Headers["Proc-Type"], "ENCRYPTED") {
			return nil, fmt.Errorf("%w (PEM type %q): decrypt it first, e.g. openssl pkey -in KEY -out KEY.plain", ErrEncryptedKey, blk.Type)
		}
		var (
			key any
			err error
		)
		switch blk.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		default:
			return nil, fmt.Errorf("%w: PEM type %q is not a private key (want \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")", ErrUnsupportedKey, blk.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %q PEM block: %w", blk.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("%w: %q PEM block holds a %T, which cannot sign", ErrUnsupportedKey, blk.Type, key)
	}
}

// publicKeysEqual reports whether a and b are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}
