//go:build cgo

package keystore_test

import (
	"testing"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/keystore"
	"github.com/mender-mtls/mtls-agent/internal/pki"
)

// newSimulator starts the in-process TPM simulator (Microsoft reference
// TPM, freshly manufactured). Only one exists per process: tests using it
// must not run in parallel.
func newSimulator(tb testing.TB) *simulator.Simulator {
	tb.Helper()
	sim, err := simulator.Get()
	require.NoError(tb, err, "start the TPM simulator")
	tb.Cleanup(func() { _ = sim.Close() })
	return sim
}

// simBackend runs the suite on the simulator; restart is a TPM reset
// (reboot: transient state lost, persistent objects kept).
func simBackend(sim *simulator.Simulator) tpmBackend {
	conn := transport.FromReadWriteCloser(sim)
	open := func(t *testing.T) *keystore.TPM {
		tp := keystore.NewTPM(conn, "simulator", keystore.TPMOptions{})
		t.Cleanup(func() { _ = tp.Close() })
		return tp
	}
	return tpmBackend{
		open: open,
		raw:  func(*testing.T) (transport.TPM, func()) { return conn, func() {} },
		restart: func(t *testing.T) *keystore.TPM {
			require.NoError(t, sim.Reset(), "reset the simulator")
			return open(t)
		},
	}
}

// TestTPMSimulator runs the TPM keystore tests on the go-tpm-tools
// simulator: key creation, signatures verified by menderapi.Verify, CSRs,
// TLS 1.2 and 1.3 handshakes, replacing only our own keys, persistence
// across a TPM reset, and no leaked transient objects.
func TestTPMSimulator(t *testing.T) {
	runTPMSuite(t, simBackend(newSimulator(t)))
}

// BenchmarkTPMSign measures an auth-request signature with a key in the
// in-process simulator, for comparison with BenchmarkFileKeySign.
func BenchmarkTPMSign(b *testing.B) {
	sim := newSimulator(b)
	tp := keystore.NewTPM(transport.FromReadWriteCloser(sim), "simulator", keystore.TPMOptions{})
	defer tp.Close()
	for _, kt := range []pki.KeyType{pki.ECDSAP256, pki.RSA2048} {
		b.Run(string(kt), func(b *testing.B) { benchmarkTPMSign(b, tp, kt, hECDSA) })
	}
}
