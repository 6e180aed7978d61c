//go:build linux

package keystore_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// swtpm is one swtpm process serving TPM commands on a loopback port, with
// its state in its own directory.
type swtpm struct {
	tb       testing.TB
	stateDir string
	addr     string // host:port of the command port
	cmd      *exec.Cmd
	waitDone chan struct{} // closed when cmd has exited
	flags    string        // swtpm --flags
}

// requireSwtpm skips the test when swtpm is not installed.
func requireSwtpm(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		tb.Skip("SKIPPING swtpm TPM tests: swtpm is not installed; run `make deps` (installs swtpm and swtpm-tools) to run them")
	}
}

// startSwtpm starts swtpm with a fresh state directory, ready for commands
// (--flags not-need-init,startup-clear); it is stopped at cleanup.
func startSwtpm(tb testing.TB) *swtpm {
	return startSwtpmFlags(tb, "not-need-init,startup-clear")
}

func startSwtpmFlags(tb testing.TB, flags string) *swtpm {
	tb.Helper()
	requireSwtpm(tb)
	s := &swtpm{tb: tb, stateDir: tb.TempDir(), flags: flags}
	s.start()
	tb.Cleanup(func() {
		s.stop()
		if tb.Failed() {
			if log, err := os.ReadFile(filepath.Join(s.stateDir, "swtpm.log")); err == nil {
				tb.Logf("swtpm log:\n%s", log)
			}
		}
	})
	return s
}

// start runs swtpm on a free loopback port. swtpm has no resource manager
// and serves one connection at a time; the control channel is a unix socket
// in the state directory (it is never used: --flags not-need-init makes
// swtpm accept commands without it).
func (s *swtpm) start() {
	tb := s.tb
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(tb, ln.Close())
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)

	out, err := os.OpenFile(filepath.Join(s.stateDir, "swtpm.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(tb, err)
	defer out.Close()
	s.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", "type=unixio,path="+filepath.Join(s.stateDir, "ctrl.sock"),
		"--flags", s.flags,
		"--tpmstate", "dir="+s.stateDir,
		"--log", "file="+filepath.Join(s.stateDir, "swtpm.log"))
	// Output goes to a file, not the test's stderr (go test would wait for
	// an orphan holding it), and the kernel kills swtpm if the test dies.
	s.cmd.Stdout, s.cmd.Stderr = out, out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(tb, s.cmd.Start(), "start swtpm")
	exited := make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(exited)
	}()
	ready := func() bool {
		select {
		case <-exited:
			return true // stop polling; checked below
		default:
		}
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	require.Eventually(tb, ready, 10*time.Second, 20*time.Millisecond, "swtpm listens on %s", s.addr)
	select {
	case <-exited:
		log, _ := os.ReadFile(filepath.Join(s.stateDir, "swtpm.out"))
		tb.Fatalf("swtpm exited at start: %s", log)
	default:
	}
	s.waitDone = exited
}

// stop terminates swtpm (it saves its state) and waits for it.
func (s *swtpm) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.waitDone:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.waitDone
	}
	s.cmd = nil
}

// device is the TPM.Device value for this swtpm.
func (s *swtpm) device() string { return "tcp://" + s.addr }

func (s *swtpm) open(t *testing.T) *keystore.TPM {
	t.Helper()
	tp, err := keystore.OpenTPM(t.Context(), s.device(), keystore.TPMOptions{})
	require.NoError(t, err, "open swtpm at %s", s.device())
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

func (s *swtpm) backend() tpmBackend {
	return tpmBackend{
		open: s.open,
		raw: func(t *testing.T) (transport.TPM, func()) {
			c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
			require.NoError(t, err)
			require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
			return transport.FromReadWriteCloser(c), func() { _ = c.Close() }
		},
		restart: func(t *testing.T) *keystore.TPM {
			s.stop()
			s.start()
			return s.open(t)
		},
	}
}

// TestTPMSwtpm runs the TPM keystore tests against a real swtpm process
// through the tcp:// transport: key creation, signatures, CSRs, mTLS,
// replacing only our own keys, and the key surviving an swtpm restart on
// the same state directory.
func TestTPMSwtpm(t *testing.T) {
	s := startSwtpm(t)
	runTPMSuite(t, s.backend())
}

// TestSwtpmOneClientAtATime checks that two TPM handles on one swtpm (which
// serves one connection at a time) take turns instead of blocking each
// other: the agent and `device-agent check` can run together.
func TestSwtpmOneClientAtATime(t *testing.T) {
	s := startSwtpm(t)
	a, b := s.open(t), s.open(t)
	ka, err := keystore.Generate(t.Context(), handleRef(hECDSA), keystore.GenerateOptions{TPM: a})
	require.NoError(t, err)
	defer ka.Close()
	kb, err := keystore.Open(t.Context(), handleRef(hECDSA), keystore.Options{TPM: b})
	require.NoError(t, err, "a second client opens the key while the first still has it open")
	defer kb.Close()
	for i := range 5 {
		body := []byte{byte(i)}
		for _, k := range []*keystore.Key{ka, kb} {
			sig, err := menderapi.Sign(k, body)
			require.NoError(t, err)
			assert.NoError(t, menderapi.Verify(ka.Public(), body, sig))
		}
	}
	assertNoTransients(t, a)
}

// TestOpenTPMDevice opens swtpm the way the agent does, from a device string
// through Options.TPMDevice, and checks the TPM's identity.
func TestOpenTPMDevice(t *testing.T) {
	s := startSwtpm(t)
	_, err := keystore.Generate(t.Context(), handleRef(hRSA), keystore.GenerateOptions{TPMDevice: s.device(), KeyType: pki.RSA2048})
	require.NoError(t, err)

	k, err := keystore.Open(t.Context(), handleRef(hRSA), keystore.Options{TPMDevice: s.device()})
	require.NoError(t, err)
	info, ok := k.TPMKeyInfo()
	require.True(t, ok)
	assert.Equal(t, s.device(), info.Device)
	assert.Equal(t, pki.RSA2048, info.KeyType)
	assert.Equal(t, "hash length", info.PSSSalt, "libtpms makes hash-length PSS salts, as crypto/tls needs")
	assert.True(t, info.TLS)
	require.NoError(t, k.Close(), "Close releases the TPM the key opened")
	_, err = menderapi.Sign(k, []byte("x"))
	assert.ErrorIs(t, err, keystore.ErrClosed)

	tp := s.open(t)
	ti, err := tp.Info(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "IBM", ti.Manufacturer, "swtpm (libtpms) reports IBM")
	assert.False(t, ti.ResourceManager)
	assert.Contains(t, ti.PersistentHandles, uint32(hRSA))
	assert.Zero(t, ti.TransientObjects)

	s.stop()
	_, err = keystore.Open(t.Context(), handleRef(hRSA), keystore.Options{TPMDevice: s.device()})
	require.ErrorIs(t, err, keystore.ErrNoTPM, "a stopped swtpm is no TPM")
	assert.Contains(t, err.Error(), s.addr, "the error names the address tried")
}

// TestOpenTPMStartsTPM opens a TPM that was powered on but never started
// (as a bare swtpm or simulator is): OpenTPM sends TPM2_Startup itself.
func TestOpenTPMStartsTPM(t *testing.T) {
	s := startSwtpmFlags(t, "not-need-init")
	tp := s.open(t)
	k, err := keystore.Generate(t.Context(), handleRef(hECDSA), keystore.GenerateOptions{TPM: tp})
	require.NoError(t, err, "the started TPM creates keys")
	defer k.Close()
	tp2 := s.open(t)
	_, err = tp2.Info(t.Context())
	assert.NoError(t, err, "a second open does not start the TPM twice")
}

// BenchmarkTPMSignSwtpm measures an auth-request signature with a key in
// swtpm over the tcp:// transport (one connection per signature).
func BenchmarkTPMSignSwtpm(b *testing.B) {
	s := startSwtpm(b)
	tp, err := keystore.OpenTPM(context.Background(), s.device(), keystore.TPMOptions{})
	require.NoError(b, err)
	defer tp.Close()
	for _, kt := range []pki.KeyType{pki.ECDSAP256, pki.RSA2048} {
		b.Run(string(kt), func(b *testing.B) { benchmarkTPMSign(b, tp, kt, hECDSA) })
	}
}
