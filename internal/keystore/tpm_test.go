package keystore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

func TestParseHandleRef(t *testing.T) {
	tests := []struct {
		ref      string
		want     tpm2.TPMHandle
		sentinel error
		contains string
	}{
		{"handle:0x81000100", 0x81000100, nil, ""},
		{"HANDLE:0x81000001", 0x81000001, nil, ""},
		{"handle: 0x81ffffff ", 0x81ffffff, nil, ""},
		{"handle:2164260864", 0x81000000, nil, ""},
		{"handle:", 0, ErrInvalidHandle, "names no handle"},
		{"handle:   ", 0, ErrInvalidHandle, "names no handle"},
		{"handle:0xzz", 0, ErrInvalidHandle, "not a number"},
		{"handle:0x1ffffffff", 0, ErrInvalidHandle, "not a number"},
		{"handle:0x80000001", 0, ErrInvalidHandle, "not a persistent handle"},
		{"handle:0x01000001", 0, ErrInvalidHandle, "0x81000000-0x81FFFFFF"},
		{"tpm:handle=0x81000001", 0, ErrUnsupported, "handle:0x81000100"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			h, err := parseHandleRef(tt.ref)
			if tt.sentinel != nil {
				require.ErrorIs(t, err, tt.sentinel)
				assert.Contains(t, err.Error(), tt.contains)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, h)
		})
	}
}

// FuzzTPMHandleRef checks that any handle reference parses without
// panicking and that accepted ones are persistent handles.
func FuzzTPMHandleRef(f *testing.F) {
	for _, s := range []string{"handle:0x81000100", "handle:", "handle:0x80000000", "tpm:handle=1", "handle:-1", "handle:0b1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		h, err := parseHandleRef(ref)
		if err == nil && (h < persistentFirst || h > persistentLast) {
			t.Fatalf("%q accepted as non-persistent handle 0x%08x", ref, uint32(h))
		}
	})
}

// response builds a TPM response frame with the given tag and payload.
func response(tag uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, tag)
	b = binary.BigEndian.AppendUint32(b, uint32(tpmHeaderSize+len(payload)))
	b = binary.BigEndian.AppendUint32(b, 0) // TPM_RC_SUCCESS
	return append(b, payload...)
}

func TestReadTPMResponse(t *testing.T) {
	ok := response(0x8001, []byte{1, 2, 3, 4})
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr error
	}{
		{"complete", ok, ok, nil},
		{"trailing bytes stay unread", append(append([]byte{}, ok...), 9, 9), ok, nil},
		{"header only", response(0x8002, nil), response(0x8002, nil), nil},
		{"empty", nil, nil, io.EOF},
		{"short header", ok[:5], nil, io.ErrUnexpectedEOF},
		{"short body", ok[:12], nil, io.ErrUnexpectedEOF},
		{"not a TPM tag", []byte("HTTP/1.1 400 Bad"), nil, errBadResponse},
		{"size below header", func() []byte { b := response(0x8001, nil); b[5] = 9; return b }(), nil, errBadResponse},
		{"size too large", func() []byte { b := response(0x8001, nil); b[2] = 1; return b }(), nil, errBadResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readTPMResponse(bytes.NewReader(tt.in))
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			got, err = readTPMResponse(iotest.OneByteReader(bytes.NewReader(tt.in)))
			require.NoError(t, err, "a response arriving one byte per read is read whole")
			assert.Equal(t, tt.want, got)
		})
	}
}

// FuzzTPMResponse feeds arbitrary bytes (what a socket peer may send) to the
// response reader: it must not panic, must return exactly the announced
// frame, and must not depend on how the bytes are split into reads.
func FuzzTPMResponse(f *testing.F) {
	f.Add(response(0x8001, []byte{1, 2, 3}))
	f.Add(response(0x00c4, nil))
	f.Add([]byte{0x80, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := readTPMResponse(bytes.NewReader(data))
		got2, err2 := readTPMResponse(iotest.HalfReader(bytes.NewReader(data)))
		if (err == nil) != (err2 == nil) || !bytes.Equal(got, got2) {
			t.Fatalf("result depends on read sizes: %v / %v", err, err2)
		}
		if err != nil {
			return
		}
		size := binary.BigEndian.Uint32(data[2:6])
		if len(got) != int(size) || !bytes.Equal(got, data[:size]) || size > maxTPMResponse {
			t.Fatalf("returned %d bytes for announced size %d", len(got), size)
		}
	})
}

// fakeTPMServer accepts one connection on 127.0.0.1 and runs serve on it.
func fakeTPMServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		serve(c)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func TestTCPTransport(t *testing.T) {
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7b, 0, 8} // TPM2_GetRandom(8)
	rsp := response(0x8001, []byte{0, 8, 1, 2, 3, 4, 5, 6, 7, 8})

	t.Run("response in small pieces", func(t *testing.T) {
		addr := fakeTPMServer(t, func(c net.Conn) {
			got := make([]byte, len(cmd))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, cmd) {
				return
			}
			for i := 0; i < len(rsp); i += 3 {
				if _, err := c.Write(rsp[i:min(i+3, len(rsp))]); err != nil { // NoDelay: separate segments
					return
				}
			}
		})
		conn, err := dialTCPTPM(t.Context(), addr)
		require.NoError(t, err)
		defer conn.Close()
		got, err := conn.Send(cmd)
		require.NoError(t, err, "a response split over many reads is reassembled")
		assert.Equal(t, rsp, got)
	})

	t.Run("peer closes mid-response", func(t *testing.T) {
		addr := fakeTPMServer(t, func(c net.Conn) {
			_, _ = io.ReadFull(c, make([]byte, len(cmd)))
			_, _ = c.Write(rsp[:14])
		})
		conn, err := dialTCPTPM(t.Context(), addr)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Send(cmd)
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
		assert.ErrorContains(t, err, addr)
	})

	t.Run("cancel aborts a command the TPM never answers", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		addr := fakeTPMServer(t, func(c net.Conn) {
			_, _ = io.ReadFull(c, make([]byte, len(cmd)))
			<-release
		})
		ctx, cancel := context.WithCancel(t.Context())
		conn, err := dialTCPTPM(ctx, addr)
		require.NoError(t, err)
		defer conn.Close()
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Send(cmd)
			errc <- err
		}()
		cancel()
		select {
		case err := <-errc:
			assert.ErrorIs(t, err, context.Canceled)
		case <-time.After(10 * time.Second):
			t.Fatal("Send did not return after the context was cancelled")
		}
	})
}

func TestOpenTPMErrors(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "tpm0")
	require.NoError(t, os.WriteFile(regular, nil, 0o600))
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())
		return addr
	}()
	notTPM := fakeTPMServer(t, func(c net.Conn) {
		_, _ = c.Read(make([]byte, 64))
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	})

	tests := []struct {
		name     string
		device   string
		contains []string
	}{
		{"missing device", filepath.Join(dir, "tpmrm9"), []string{filepath.Join(dir, "tpmrm9"), "does not exist"}},
		{"regular file", regular, []string{regular, "not a character device"}},
		{"relative path", "tpm0", []string{"device path"}},
		{"character device that is not a TPM", "/dev/null", []string{"/dev/null", "does not answer TPM 2.0 commands"}},
		{"tcp without port", "tcp://127.0.0.1", []string{"tcp://HOST:PORT"}},
		{"nothing listening", "tcp://" + closedPort, []string{closedPort, "swtpm"}},
		{"not a TPM on the port", "tcp://" + notTPM, []string{notTPM, "not a TPM 2.0 response tag"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, err := OpenTPM(t.Context(), tt.device, TPMOptions{})
			require.ErrorIs(t, err, ErrNoTPM)
			assert.Nil(t, tp)
			for _, s := range tt.contains {
				assert.Contains(t, err.Error(), s)
			}
		})
	}

	t.Run("key reference names the device", func(t *testing.T) {
		dev := filepath.Join(dir, "tpmrm7")
		k, err := Open(t.Context(), "handle:0x81000100", Options{TPMDevice: dev})
		require.ErrorIs(t, err, ErrNoTPM)
		assert.ErrorIs(t, err, fs.ErrNotExist)
		assert.Nil(t, k)
		assert.Contains(t, err.Error(), dev)
		assert.Contains(t, err.Error(), "handle:0x81000100")
	})

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := OpenTPM(ctx, "tcp://"+closedPort, TPMOptions{})
		assert.ErrorIs(t, err, context.Canceled)
	})
}

func TestClassifyPSS(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	d := sha256.Sum256([]byte("tls transcript"))
	sign := func(salt int) []byte {
		sig, err := rsa.SignPSS(rand.Reader, key, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: salt})
		require.NoError(t, err)
		return sig
	}
	tests := []struct {
		name    string
		sig     []byte
		want    pssRule
		wantErr bool
	}{
		{"hash length salt (simulator, libtpms)", sign(rsa.PSSSaltLengthEqualsHash), pssEqualsHash, false},
		{"maximum salt (older TPM firmware)", sign(rsa.PSSSaltLengthAuto), pssMax, false},
		{"other salt", sign(20), pssUnknown, false},
		{"not a signature", make([]byte, 256), pssUnknown, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := classifyPSS(&key.PublicKey, crypto.SHA256, d[:], tt.sig)
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestSchemeFor covers how a Sign call maps to a TPM signature scheme,
// including the refusals that keep a TLS handshake from failing obscurely.
func TestSchemeFor(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ek := genECDSA(t)
	d256 := make([]byte, 32)
	d384 := make([]byte, 48)
	pssEq := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	pssAuto := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: crypto.SHA256}
	pss32 := &rsa.PSSOptions{SaltLength: 32, Hash: crypto.SHA256}
	pssMaxLen := &rsa.PSSOptions{SaltLength: maxPSSSalt(&rk.PublicKey, crypto.SHA256), Hash: crypto.SHA256}

	tests := []struct {
		name     string
		s        tpmSigner
		digest   []byte
		opts     crypto.SignerOpts
		alg      tpm2.TPMAlgID
		hash     tpm2.TPMAlgID
		contains string // non-empty: an ErrUnsupported error containing this
	}{
		{"ecdsa sha256", tpmSigner{pub: &ek.PublicKey, scheme: tpm2.TPMAlgECDSA}, d256, crypto.SHA256, tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA256, ""},
		{"ecdsa fixed scheme refuses sha384", tpmSigner{pub: &ek.PublicKey, scheme: tpm2.TPMAlgECDSA}, d384, crypto.SHA384, 0, 0, "fixed to SHA-256"},
		{"ecdsa null scheme sha384", tpmSigner{pub: &ek.PublicKey, scheme: tpm2.TPMAlgNull}, d384, crypto.SHA384, tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA384, ""},
		{"wrong digest length", tpmSigner{pub: &ek.PublicKey}, d384, crypto.SHA256, 0, 0, "48 bytes"},
		{"no hash (ed25519 style)", tpmSigner{pub: &ek.PublicKey}, d256, crypto.Hash(0), 0, 0, "SHA-256, SHA-384 or SHA-512"},
		{"rsa pkcs1", tpmSigner{pub: &rk.PublicKey}, d256, crypto.SHA256, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, ""},
		{"rsa pss equals hash", tpmSigner{pub: &rk.PublicKey, pss: pssEqualsHash}, d256, pssEq, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, ""},
		{"rsa pss explicit 32", tpmSigner{pub: &rk.PublicKey, pss: pssEqualsHash}, d256, pss32, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, ""},
		{"rsa pss auto on a max-salt TPM", tpmSigner{pub: &rk.PublicKey, pss: pssMax}, d256, pssAuto, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, ""},
		{"rsa pss max on a max-salt TPM", tpmSigner{pub: &rk.PublicKey, pss: pssMax}, d256, pssMaxLen, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, ""},
		{"tls on a max-salt TPM is refused", tpmSigner{pub: &rk.PublicKey, pss: pssMax}, d256, pssEq, 0, 0, "ecdsa-p256"},
		{"tls with unknown salt is refused", tpmSigner{pub: &rk.PublicKey, pss: pssUnknown}, d256, pssEq, 0, 0, "salt of unknown"},
		{"pss on an rsassa key", tpmSigner{pub: &rk.PublicKey, scheme: tpm2.TPMAlgRSASSA}, d256, pssEq, 0, 0, "fixed to RSA PKCS#1 v1.5"},
		{"pkcs1 on an rsapss key", tpmSigner{pub: &rk.PublicKey, scheme: tpm2.TPMAlgRSAPSS, pss: pssEqualsHash}, d256, crypto.SHA256, 0, 0, "fixed to RSA-PSS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.s.scheme == 0 {
				tt.s.scheme = tpm2.TPMAlgNull
			}
			alg, hash, err := tt.s.schemeFor(tt.digest, tt.opts)
			if tt.contains != "" {
				require.ErrorIs(t, err, ErrUnsupported)
				assert.Contains(t, err.Error(), tt.contains)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.alg, alg)
			assert.Equal(t, tt.hash, hash)
		})
	}
}

func genECDSA(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

// publicFor fills a template's unique field with a software key, as a TPM
// would with its own.
func publicFor(t *testing.T, tmpl tpm2.TPMTPublic, pub crypto.PublicKey) tpm2.TPMTPublic {
	t.Helper()
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		require.NoError(t, err)
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: b[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: b[33:]}})
	case *rsa.PublicKey:
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	}
	return tmpl
}

// TestPublicAreas checks which TPM objects the agent signs with and which it
// calls its own (and so may evict).
func TestPublicAreas(t *testing.T) {
	ek := genECDSA(t)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	rk1024, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	eccT, err := tpmTemplate(pki.ECDSAP256)
	require.NoError(t, err)
	rsaT, err := tpmTemplate(pki.RSA2048)
	require.NoError(t, err)

	modify := func(base tpm2.TPMTPublic, f func(*tpm2.TPMTPublic)) tpm2.TPMTPublic {
		f(&base)
		return base
	}
	withECCParams := func(f func(*tpm2.TPMSECCParms)) func(*tpm2.TPMTPublic) {
		return func(p *tpm2.TPMTPublic) {
			d, err := p.Parameters.ECCDetail()
			require.NoError(t, err)
			c := *d
			f(&c)
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
		}
	}
	withRSAParams := func(f func(*tpm2.TPMSRSAParms)) func(*tpm2.TPMTPublic) {
		return func(p *tpm2.TPMTPublic) {
			d, err := p.Parameters.RSADetail()
			require.NoError(t, err)
			c := *d
			f(&c)
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &c)
		}
	}
	ecc := publicFor(t, eccT, &ek.PublicKey)
	rsaPub := publicFor(t, rsaT, &rk.PublicKey)

	tests := []struct {
		name     string
		pub      tpm2.TPMTPublic
		ours     bool
		sentinel error // nil: usable for signing
		kt       pki.KeyType
		scheme   tpm2.TPMAlgID
	}{
		{"keygen ecdsa", ecc, true, nil, pki.ECDSAP256, tpm2.TPMAlgECDSA},
		{"keygen rsa", rsaPub, true, nil, pki.RSA2048, tpm2.TPMAlgNull},
		{"ecdsa also decrypting (tpm2_create default)", modify(ecc, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }), false, nil, pki.ECDSAP256, tpm2.TPMAlgECDSA},
		{"ecdsa with a policy", modify(ecc, func(p *tpm2.TPMTPublic) { p.AuthPolicy.Buffer = make([]byte, 32) }), false, nil, pki.ECDSAP256, tpm2.TPMAlgECDSA},
		{"ecdsa null scheme", modify(ecc, withECCParams(func(c *tpm2.TPMSECCParms) { c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull} })), false, nil, pki.ECDSAP256, tpm2.TPMAlgNull},
		{"rsa with rsassa scheme", modify(rsaPub, withRSAParams(func(c *tpm2.TPMSRSAParms) {
			c.Scheme = tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})}
		})), false, nil, pki.RSA2048, tpm2.TPMAlgRSASSA},
		{"ecdsa sha384 scheme", modify(ecc, withECCParams(func(c *tpm2.TPMSECCParms) {
			c.Scheme.Details = tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA384})
		})), false, ErrUnsupported, "", 0},
		{"ecdaa scheme", modify(ecc, withECCParams(func(c *tpm2.TPMSECCParms) {
			c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDAA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDAA, &tpm2.TPMSSchemeECDAA{HashAlg: tpm2.TPMAlgSHA256})}
		})), false, ErrUnsupported, "", 0},
		{"p384 curve", modify(ecc, withECCParams(func(c *tpm2.TPMSECCParms) { c.CurveID = tpm2.TPMECCNistP384 })), false, ErrUnsupported, "", 0},
		{"restricted (attestation key)", modify(ecc, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = true }), false, ErrUnsupported, "", 0},
		{"not a signing key", modify(ecc, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false }), false, ErrUnsupported, "", 0},
		{"policy-only key", modify(ecc, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = false }), false, ErrUnsupported, "", 0},
		{"point not on the curve", modify(ecc, func(p *tpm2.TPMTPublic) {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: big.NewInt(1).FillBytes(make([]byte, 32))},
				Y: tpm2.TPM2BECCParameter{Buffer: big.NewInt(1).FillBytes(make([]byte, 32))}})
		}), true, ErrUnsupported, "", 0},
		{"rsa 1024", publicFor(t, modify(rsaT, withRSAParams(func(c *tpm2.TPMSRSAParms) { c.KeyBits = 1024 })), &rk1024.PublicKey), false, ErrWeakKey, "", 0},
		{"srk", publicFor(t, tpm2.ECCSRKTemplate, &ek.PublicKey), false, ErrUnsupported, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.ours, isOurs(&tt.pub), "isOurs")
			var s tpmSigner
			err := s.setPublic(&tt.pub)
			if tt.sentinel != nil {
				assert.ErrorIs(t, err, tt.sentinel)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.kt, s.kt)
			assert.Equal(t, tt.scheme, s.scheme)
		})
	}
}

func TestGenerateFile(t *testing.T) {
	for _, kt := range []pki.KeyType{"", pki.ECDSAP256, pki.Ed25519, pki.RSA2048} {
		t.Run("type "+string(kt), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sub", "device.key")
			k, err := Generate(t.Context(), path, GenerateOptions{KeyType: kt})
			require.NoError(t, err)
			fi, err := os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the key file is private")
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Contains(t, string(data), "-----BEGIN PRIVATE KEY-----", "PKCS#8")
			onDisk, err := pki.ParsePrivateKeyPEM(data)
			require.NoError(t, err)
			assert.True(t, onDisk.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()), "the returned key is the file's")
			if kt == "" {
				assert.IsType(t, &ecdsa.PublicKey{}, k.Public(), "ECDSA P-256 by default")
			}
			assert.NoError(t, k.SelfTest(t.Context()))
			_, isTPM := k.TPMKeyInfo()
			assert.False(t, isTPM)
		})
	}

	t.Run("existing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "device.key")
		first, err := Generate(t.Context(), path, GenerateOptions{})
		require.NoError(t, err)
		_, err = Generate(t.Context(), path, GenerateOptions{})
		require.ErrorIs(t, err, ErrExists)
		assert.Contains(t, err.Error(), "--force")
		second, err := Generate(t.Context(), path, GenerateOptions{Force: true})
		require.NoError(t, err)
		assert.False(t, second.Public().(*ecdsa.PublicKey).Equal(first.Public()), "Force replaces the key")
	})

	errs := []struct {
		name, ref string
		kt        pki.KeyType
		sentinel  error
	}{
		{"unknown file key type", filepath.Join(t.TempDir(), "k"), "dsa", ErrUnsupported},
		{"tpm ed25519", "handle:0x81000100", pki.Ed25519, ErrUnsupported},
		{"tpm platform handle", "handle:0x81800000", "", ErrInvalidHandle},
		{"pkcs11", "pkcs11:object=k?pin-value=1", "", ErrPKCS11},
		{"empty", "", "", ErrNotFound},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(t.Context(), tt.ref, GenerateOptions{KeyType: tt.kt, TPMDevice: filepath.Join(t.TempDir(), "none")})
			require.ErrorIs(t, err, tt.sentinel)
			assert.NotContains(t, err.Error(), "pin-value=1")
		})
	}
}

// BenchmarkFileKeySign measures an auth-request signature with a file key,
// the baseline for BenchmarkTPMSign and BenchmarkTPMSignSwtpm.
func BenchmarkFileKeySign(b *testing.B) {
	for _, kt := range []pki.KeyType{pki.ECDSAP256, pki.RSA2048} {
		b.Run(string(kt), func(b *testing.B) {
			k, err := Generate(context.Background(), filepath.Join(b.TempDir(), "k.pem"), GenerateOptions{KeyType: kt})
			require.NoError(b, err)
			body, err := menderapi.BuildAuthRequest(`{"mac":"52:54:00:ab:cd:ef"}`, k.Public(), "")
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := menderapi.Sign(k, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
