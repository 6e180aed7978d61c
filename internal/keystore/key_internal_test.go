package keystore

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// recordingSigner records what Sign receives.
type recordingSigner struct {
	crypto.Signer
	gotDigest []byte
	gotOpts   crypto.SignerOpts
}

func (r *recordingSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	r.gotDigest, r.gotOpts = digest, opts
	return []byte("sig"), nil
}

// messageSigner is a recordingSigner that also signs whole messages, like a
// hardware key that hashes internally.
type messageSigner struct {
	recordingSigner
	gotMsg []byte
}

func (m *messageSigner) SignMessage(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	m.gotMsg, m.gotOpts = msg, opts
	return []byte("message-sig"), nil
}

func TestSignMessage(t *testing.T) {
	inner, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	msg := []byte("auth request body\n")
	sum256 := sha256.Sum256(msg)
	sum384 := sha512.Sum384(msg)

	tests := []struct {
		name       string
		opts       crypto.SignerOpts
		wantDigest []byte
	}{
		{"sha256 hashes first", crypto.SHA256, sum256[:]},
		{"sha384 hashes first", crypto.SHA384, sum384[:]},
		{"no hash signs the message (ed25519)", crypto.Hash(0), msg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingSigner{Signer: inner}
			k := &Key{ref: "test", signer: rec}
			sig, err := k.SignMessage(nil, msg, tt.opts)
			require.NoError(t, err)
			assert.Equal(t, []byte("sig"), sig)
			assert.Equal(t, tt.wantDigest, rec.gotDigest)
			assert.Equal(t, tt.opts, rec.gotOpts, "opts are passed through")
		})
	}

	t.Run("forwards to a MessageSigner", func(t *testing.T) {
		ms := &messageSigner{recordingSigner: recordingSigner{Signer: inner}}
		k := &Key{ref: "test", signer: ms}
		sig, err := crypto.SignMessage(k, nil, msg, crypto.SHA256)
		require.NoError(t, err)
		assert.Equal(t, []byte("message-sig"), sig)
		assert.Equal(t, msg, ms.gotMsg, "the whole message reaches the inner signer")
		assert.Nil(t, ms.gotDigest, "Sign is not used when SignMessage exists")
	})

	t.Run("unavailable hash", func(t *testing.T) {
		k := &Key{ref: "test", signer: &recordingSigner{Signer: inner}}
		_, err := k.SignMessage(nil, msg, crypto.MD4)
		assert.ErrorIs(t, err, ErrUnsupported)
	})

	t.Run("closed", func(t *testing.T) {
		ms := &messageSigner{recordingSigner: recordingSigner{Signer: inner}}
		k := &Key{ref: "test", signer: ms}
		require.NoError(t, k.Close())
		_, err := k.SignMessage(nil, msg, crypto.SHA256)
		assert.ErrorIs(t, err, ErrClosed)
		assert.Nil(t, ms.gotMsg, "nothing is signed after Close")
		_, err = k.TLSCertificate()
		assert.ErrorIs(t, err, ErrClosed)
	})
}

func TestParseRef(t *testing.T) {
	tests := []struct {
		ref     string
		kind    refKind
		wantErr bool
	}{
		{"/var/lib/mender/mender-agent.pem", refFile, false},
		{"relative/key.pem", refFile, false},
		{"/data/odd:name.pem", refFile, false},
		{"pkcs11:token=a;object=b", refPKCS11, false},
		{"PKCS11:object=b", refPKCS11, false},
		{"handle:0x81000100", refTPM, false},
		{"Handle:0x81000100", refTPM, false},
		{"tpm:handle=0x81000001", refTPM, false},
		{"", 0, true},
		{"   ", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			kind, path, err := parseRef(tt.ref)
			if tt.wantErr {
				require.ErrorIs(t, err, ErrNotFound)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.kind, kind)
			assert.Equal(t, tt.ref, path, "references are never rewritten")
		})
	}
}

func TestRedactURI(t *testing.T) {
	assert.Equal(t, "pkcs11:object=a?...", redactURI("pkcs11:object=a?pin-value=1234"))
	assert.Equal(t, "pkcs11:object=a", redactURI("pkcs11:object=a"))
}

// FuzzKeyRef checks that any reference classifies without panicking, that
// file references keep their text, and that "pkcs11:" is never taken for a
// file.
func FuzzKeyRef(f *testing.F) {
	for _, s := range []string{"/var/lib/mender/mender-agent.pem", "pkcs11:object=x?pin-value=1", "handle:0x81000100",
		"tpm:name=device", "", " ", "PkCs11:", "handle:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		kind, path, err := parseRef(ref)
		if err != nil {
			if strings.TrimSpace(ref) != "" {
				t.Fatalf("non-blank reference %q rejected: %v", ref, err)
			}
			return
		}
		if path != ref {
			t.Fatalf("reference %q rewritten to %q", ref, path)
		}
		if kind == refFile && len(ref) >= 7 && strings.EqualFold(ref[:7], "pkcs11:") {
			t.Fatalf("pkcs11 reference %q classified as a file", ref)
		}
	})
}
