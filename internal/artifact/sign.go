package artifact

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
)

// ParsePublicKeyPEM parses a verification key as mender-artifact takes it
// (-k): a PEM "PUBLIC KEY" (PKIX) or "RSA PUBLIC KEY" (PKCS#1) block with
// an RSA or ECDSA P-256 key.
func ParsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block (want a PUBLIC KEY)")
	}
	var pub crypto.PublicKey
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: want a PUBLIC KEY (a private key does not belong here)", block.Type)
	}
	if err != nil {
		return nil, err
	}
	if err := checkKey(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// checkKey accepts RSA and ECDSA P-256 public keys, as mender-artifact does.
func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("ECDSA curve %s: Mender artifacts are signed with P-256 only", k.Curve.Params().Name)
		}
		return nil
	}
	return fmt.Errorf("key type %T: Mender artifacts are signed with RSA or ECDSA P-256 keys", pub)
}

// verify checks sig over the manifest bytes. ECDSA signatures are the
// 64-byte r‖s mender-artifact writes, or ASN.1 DER (PKCS#11 signers).
func verify(pub crypto.PublicKey, manifest, sig []byte) error {
	if err := checkKey(pub); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	digest := sha256.Sum256(manifest)
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig); err != nil {
			return fmt.Errorf("%w: does not verify with the given RSA key", ErrSignature)
		}
	case *ecdsa.PublicKey:
		ok := false
		if len(sig) == 64 {
			r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			ok = ecdsa.Verify(k, digest[:], r, s)
		} else {
			ok = ecdsa.VerifyASN1(k, digest[:], sig)
		}
		if !ok {
			return fmt.Errorf("%w: does not verify with the given ECDSA key", ErrSignature)
		}
	}
	return nil
}

// sign signs the manifest bytes with signer as mender-artifact does.
func sign(signer crypto.Signer, manifest []byte) ([]byte, error) {
	if err := checkKey(signer.Public()); err != nil {
		return nil, err
	}
	digest := sha256.Sum256(manifest)
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	if _, isEC := signer.Public().(*ecdsa.PublicKey); !isEC {
		return sig, nil
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("ECDSA signer returned a signature that is not ASN.1: %v", err)
	}
	out := make([]byte, 64)
	rs.R.FillBytes(out[:32])
	rs.S.FillBytes(out[32:])
	return out, nil
}
