package e2e

import (
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision"
)

// serialCable returns the two ends of a null-modem cable made of two pty
// pairs whose masters this test relays into each other: each program opens
// its end by path, as it would /dev/ttyUSB0.
func serialCable(t *testing.T) (a, b string) {
	t.Helper()
	m1, s1, err := pty.Open()
	require.NoError(t, err)
	m2, s2, err := pty.Open()
	require.NoError(t, err)
	go func() { _, _ = io.Copy(m1, m2) }()
	go func() { _, _ = io.Copy(m2, m1) }()
	t.Cleanup(func() { m1.Close(); m2.Close(); s1.Close(); s2.Close() })
	return s1.Name(), s2.Name()
}

// The whole factory flow with a TPM: `device-agent provision` over a serial
// line creates the key in swtpm and stores the certificate that `simulator
// station` signed; the station preauthorizes the device against `simulator
// serve`; then `device-agent daemon` is accepted through `serve --mtls` on
// its first auth request, and no private key was ever written to disk.
func TestProvisionOverSerialWithTPM(t *testing.T) {
	tpm := startSwtpm(t)
	dir := t.TempDir()
	b := startServe(t, dir, "--mtls", "--status-listen", "127.0.0.1:0")
	const mac = "02:00:00:00:0e:07"
	a := newAgent(t, b.url, b.ca, agentConf{mac: mac, update: 1, inv: 60, retry: 1})
	stationPort, devicePort := serialCable(t)

	records := filepath.Join(t.TempDir(), "records.jsonl")
	station := start(t, nil, bins.simulator, "station", "--port", stationPort, "--pki-dir", dir, "--cn-template", "board-{mac}",
		"--records", records, "--name", "e2e-line", "--preauth", b.mgmtURL, "--ca", b.ca, "--user", b.user, "--password", b.pass)

	device := t.TempDir()
	cert := filepath.Join(device, "mender-cert.pem")
	out, errOut, code := runAgent(t, a.env, a.args("provision", "--port", devicePort, "--tpm-device", tpm,
		"--key", "handle:0x81000100", "--cert", cert, "--timeout", "60s")...)
	require.Equal(t, 0, code, "provision:\n%s%s", out, errOut)
	assert.Contains(t, out, "created key handle:0x81000100")
	assert.Contains(t, out, "provisioned by e2e-line")
	assert.Contains(t, out, "new certificate CN=board-"+mac)
	assert.Contains(t, out, "station:     preauthorized")

	require.Eventually(t, station.exited, 20*time.Second, 20*time.Millisecond, "the station did not finish")
	require.NoError(t, station.err, "station: %s", station.stderr)
	assert.Contains(t, station.stdout.String(), "cn=board-"+mac)
	assert.Contains(t, station.stdout.String(), "tpm=true")
	assert.Contains(t, station.stdout.String(), "result=ok; preauthorized")
	simulator(t, "station", "verify-records", records)
	recs, err := provision.ReadRecords(records)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.True(t, recs[1].KeyInTPM)

	devs := b.devices(t)
	require.Len(t, devs, 1)
	assert.Equal(t, menderapi.DevStatusPreauthorized, devs[0].Status, "the station preauthorized the device")

	// check sees the provisioning and the TPM key.
	out, errOut, code = runAgent(t, a.env, a.args("check")...)
	require.Equal(t, 0, code, "check:\n%s%s", out, errOut)
	assert.Contains(t, out, "provisioned")
	assert.Contains(t, out, "by station e2e-line")

	agent := startAgent(t, a.env, a.args("daemon")...)
	waitAcceptedAndPolling(t, b, "board-"+mac)
	assert.Equal(t, 0, agent.stop(t, 2*time.Second))
	st := b.stats(t)
	assert.Zero(t, st.ok("auth", 401), "accepted on its first auth request")

	for _, root := range []string{device, a.dir} {
		require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			assert.False(t, strings.Contains(string(data), "PRIVATE KEY"), "private key material on disk: %s", p)
			return nil
		}))
	}
}

// relayAction is what a tapped cable does with one frame.
type relayAction int

const (
	relayPass relayAction = iota // deliver it now
	relayHold                    // keep it until release
	relayDrop                    // lose it, as a cut cable would
)

// seenFrame is a frame that crossed a relay, and what became of it.
type seenFrame struct {
	frame  provision.Frame
	msg    string // the message type of a data frame, else ""
	action relayAction
}

// relay copies one direction of a tapped cable frame by frame. Its rule
// decides each frame's fate; once a frame is held, every later one is held
// too, so a release delivers them in order.
type relay struct {
	dst  *os.File
	mu   sync.Mutex
	rule func(msg string) relayAction
	seen []seenFrame
	held [][]byte
}

// tappedCable is serialCable with the relay in the test's hands: the tests
// cut a dialogue at an exact message instead of guessing it with timing.
type tappedCable struct {
	stationPort, devicePort string
	stationEnd, deviceEnd   *os.File
	toStation, toDevice     *relay
}

func newTappedCable(t *testing.T) *tappedCable {
	t.Helper()
	mStation, sStation, err := pty.Open()
	require.NoError(t, err)
	mDevice, sDevice, err := pty.Open()
	require.NoError(t, err)
	c := &tappedCable{stationPort: sStation.Name(), devicePort: sDevice.Name(), stationEnd: sStation, deviceEnd: sDevice,
		toStation: &relay{dst: mStation}, toDevice: &relay{dst: mDevice}}
	go c.toStation.run(mDevice)
	go c.toDevice.run(mStation)
	t.Cleanup(func() { mStation.Close(); mDevice.Close(); sStation.Close(); sDevice.Close() })
	return c
}

// run reads src until it is closed, splitting the bytes into frames at
// their zero delimiters. Runs that do not decode pass unchanged.
func (r *relay) run(src io.Reader) {
	buf := make([]byte, 4096)
	var run []byte
	for {
		n, err := src.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				run = append(run, b)
				continue
			}
			if len(run) > 0 {
				r.frame(run)
				run = nil
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *relay) frame(enc []byte) {
	wire := append(append([]byte{0}, enc...), 0)
	f, err := provision.DecodeFrame(enc)
	if err != nil {
		_, _ = r.dst.Write(wire)
		return
	}
	var msg string
	if f.Type == provision.FrameData {
		msg, _, _ = provision.DecodeEnvelope(f.Body)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	act := relayPass
	if r.rule != nil {
		act = r.rule(msg)
	}
	if len(r.held) > 0 && act == relayPass {
		act = relayHold
	}
	switch act {
	case relayPass:
		_, _ = r.dst.Write(wire)
	case relayHold:
		r.held = append(r.held, wire)
	}
	// Recorded after the write: a frame seen has reached the other end.
	r.seen = append(r.seen, seenFrame{frame: f, msg: msg, action: act})
}

// setRule replaces the rule for the frames still to come.
func (r *relay) setRule(rule func(msg string) relayAction) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rule = rule
}

// release delivers the held frames in order and passes all later ones.
func (r *relay) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.held {
		_, _ = r.dst.Write(w)
	}
	r.held, r.rule = nil, nil
}

// from returns a rule that passes frames until the first msg message, then
// applies act to it and to everything after it.
func from(msg string, act relayAction) func(string) relayAction {
	hit := false
	return func(m string) relayAction {
		hit = hit || m == msg
		if hit {
			return act
		}
		return relayPass
	}
}

// waitMessage waits until a data frame carrying msg has crossed r.
func (r *relay) waitMessage(t *testing.T, msg string) {
	t.Helper()
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, s := range r.seen {
			if s.msg == msg {
				return true
			}
		}
		return false
	}, 15*time.Second, 5*time.Millisecond, "no %s message crossed the cable", msg)
}

// unlock clears the exclusive mode a killed program left on its end of
// the cable: the test keeps that end open, so the kernel does not release
// the port as it does at the last close of a real one, and the next
// program could not open it without root.
func unlock(t *testing.T, end *os.File) {
	t.Helper()
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, end.Fd(), syscall.TIOCNXCL, 0); errno != 0 {
		t.Fatalf("TIOCNXCL on %s: %v", end.Name(), errno)
	}
}

// provisionLine is one factory line without a backend: a CA, a records
// file, a station started by startStation and one board's files.
type provisionLine struct {
	cable           *tappedCable
	pkiDir, records string
	agent           *agentSetup
	keyPath, cert   string
}

const lineMAC = "02:00:00:00:0e:14"

func newProvisionLine(t *testing.T) *provisionLine {
	t.Helper()
	l := &provisionLine{cable: newTappedCable(t), pkiDir: t.TempDir()}
	simulator(t, "pki", "init", "--dir", l.pkiDir, "--cn", "Factory CA")
	l.records = filepath.Join(t.TempDir(), "records.jsonl")
	// The board never talks to a server here: provision reads only the
	// configuration it rewrites.
	l.agent = newAgent(t, "https://127.0.0.1:1", "", agentConf{mac: lineMAC, update: 1, inv: 60, retry: 1})
	board := t.TempDir()
	l.keyPath, l.cert = filepath.Join(board, "mender-cert-private.pem"), filepath.Join(board, "mender-cert.pem")
	return l
}

// startStation starts `simulator station --loop` on the cable and waits
// until it has opened its port.
func (l *provisionLine) startStation(t *testing.T) *proc {
	t.Helper()
	st := start(t, nil, bins.simulator, "station", "--port", l.cable.stationPort, "--pki-dir", l.pkiDir, "--cn-template", "board-{mac}",
		"--records", l.records, "--name", "e2e-line", "--loop")
	require.Eventually(t, func() bool { return strings.Contains(st.stderr.String(), "serving") || st.exited() },
		15*time.Second, 5*time.Millisecond, "the station did not open its port")
	require.False(t, st.exited(), "station exited: %s", st.stderr)
	return st
}

// startDevice starts `device-agent provision` on the cable; it runs while
// the test steers the cable.
func (l *provisionLine) startDevice(t *testing.T) *proc {
	t.Helper()
	return startAgent(t, l.agent.env, l.agent.args("provision", "--port", l.cable.devicePort, "--key", l.keyPath, "--cert", l.cert,
		"--timeout", "60s", "--log-level", "debug")...)
}

// finish waits for a device run to end and requires exit 0.
func finish(t *testing.T, dev *proc) {
	t.Helper()
	select {
	case <-dev.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("device-agent provision did not finish within 20s:\n%s%s", dev.stdout, dev.stderr)
	}
	require.NoError(t, dev.err, "device-agent provision:\n%s%s", dev.stdout, dev.stderr)
}

// boardLines returns a station's per-board lines.
func boardLines(st *proc) []string {
	var lines []string
	for l := range strings.Lines(st.stdout.String()) {
		if strings.HasPrefix(l, "port=") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}

// requireOneCertificate checks the end state: the records verify and hold
// exactly one issued and one stored record for the board's key, both for
// the certificate on the board, which belongs to the key; the agent's
// configuration points at it. It returns that certificate's fingerprint.
func (l *provisionLine) requireOneCertificate(t *testing.T) string {
	t.Helper()
	keyPEM, err := os.ReadFile(l.keyPath)
	require.NoError(t, err)
	key, err := pki.ParsePrivateKeyPEM(keyPEM)
	require.NoError(t, err)
	certPEM, err := os.ReadFile(l.cert)
	require.NoError(t, err)
	chain, err := pki.ParseCertsPEM(certPEM)
	require.NoError(t, err)
	require.NotEmpty(t, chain)
	leaf := chain[0]
	assert.Equal(t, menderapi.Fingerprint(key.Public()), menderapi.Fingerprint(leaf.PublicKey), "the certificate is for the board's key")
	assert.Equal(t, "board-"+lineMAC, leaf.Subject.CommonName)
	certFP := pki.CertFingerprint(leaf)

	assert.Contains(t, simulator(t, "station", "verify-records", l.records), "chain intact")
	recs, err := provision.ReadRecords(l.records)
	require.NoError(t, err)
	var issued, stored []provision.Record
	for _, r := range recs {
		require.Equal(t, menderapi.Fingerprint(key.Public()), r.KeyFingerprint, "a record for another key")
		switch r.Kind {
		case provision.KindIssued:
			issued = append(issued, r)
		case provision.KindStored:
			stored = append(stored, r)
		}
	}
	require.Len(t, issued, 1, "one certificate issued for the key: %+v", recs)
	require.Len(t, stored, 1, "one stored record for the key: %+v", recs)
	assert.Equal(t, certFP, issued[0].CertFingerprint, "the board holds the certificate issued")
	assert.Equal(t, certFP, stored[0].CertFingerprint)

	conf, err := os.ReadFile(filepath.Join(l.agent.dir, "device-agent.conf"))
	require.NoError(t, err)
	var c struct {
		HttpsClient struct{ Certificate, Key string }
	}
	require.NoError(t, json.Unmarshal(conf, &c))
	assert.Equal(t, l.cert, c.HttpsClient.Certificate)
	assert.Equal(t, l.keyPath, c.HttpsClient.Key)
	return certFP
}

// The station is killed (SIGKILL) in the middle of a dialogue and a new
// one is started on the same port and records: the board's next message
// is answered with a reset, the board starts again, and it ends with one
// certificate for its key. The cable holds the station's frames from the
// named message on, so the kill lands at that exact point: after the
// station answered hello, and after it issued (and recorded) the
// certificate that the board then stores.
func TestProvisionInterruptedStation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		killAfter string // the station's message held when it is killed
		next      string // the board's answer, which reaches nobody
		how       string // the board's final line
	}{
		{"after hello", provision.TypeDecision, provision.TypeCSR, "new certificate"},
		{"after issuing the certificate", provision.TypeCert, provision.TypeStored, "certificate confirmed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newProvisionLine(t)
			l.cable.toDevice.setRule(from(tc.killAfter, relayHold))
			old := l.startStation(t)
			dev := l.startDevice(t)
			l.cable.toDevice.waitMessage(t, tc.killAfter)
			old.kill()
			unlock(t, l.cable.stationEnd)
			if tc.killAfter == provision.TypeCert {
				recs, err := provision.ReadRecords(l.records)
				require.NoError(t, err)
				require.Len(t, recs, 1, "the killed station recorded the certificate before sending it")
			}
			// The board gets what the dead station sent and answers into
			// a port nobody reads; the new station drops that as stale,
			// so the board's retransmission is what it hears.
			l.cable.toDevice.release()
			l.cable.toStation.waitMessage(t, tc.next)
			st := l.startStation(t)
			finish(t, dev)
			assert.Contains(t, dev.stderr.String(), "the station restarted; starting again")
			assert.Contains(t, dev.stdout.String(), "provisioned by e2e-line")
			assert.Contains(t, dev.stdout.String(), tc.how+" CN=board-"+lineMAC)
			require.Eventually(t, func() bool { return len(boardLines(st)) == 1 }, 5*time.Second, 5*time.Millisecond, "the new station's board line")
			assert.Contains(t, boardLines(st)[0], "result=ok")
			assert.Empty(t, boardLines(old), "the killed station finished no board")
			l.requireOneCertificate(t)
		})
	}
}

// The board is killed (SIGKILL) once the station has sent its certificate
// and provision is run again: the station sends the same certificate or
// confirms the one the board holds, never a second one. The cable decides
// which side of "stored" the kill lands on: either the certificate never
// reaches the board, or the board stores it and its "stored" message never
// reaches the station.
func TestProvisionInterruptedDevice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		msg    string // the first message lost
		stored bool   // the board stored the certificate before it was killed
		how    string
	}{
		{name: "before the certificate arrived", msg: provision.TypeCert, how: "new certificate"},
		{name: "after the board stored it", msg: provision.TypeStored, stored: true, how: "certificate confirmed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newProvisionLine(t)
			cut := l.cable.toDevice
			if tc.stored {
				cut = l.cable.toStation
			}
			cut.setRule(from(tc.msg, relayDrop))
			st := l.startStation(t)
			dev := l.startDevice(t)
			cut.waitMessage(t, tc.msg)
			dev.kill()
			unlock(t, l.cable.deviceEnd)
			t.Logf("board killed %s (the station never heard %q from it)", tc.name, provision.TypeStored)

			recs, err := provision.ReadRecords(l.records)
			require.NoError(t, err)
			require.Len(t, recs, 1, "the certificate is recorded as issued")
			issuedFP := recs[0].CertFingerprint
			_, err = os.Stat(l.cert)
			if tc.stored {
				require.NoError(t, err, "the board stored the certificate before it said so")
			} else {
				require.ErrorIs(t, err, fs.ErrNotExist, "the certificate never reached the board")
			}

			cut.setRule(nil)
			again := l.startDevice(t)
			finish(t, again)
			assert.Contains(t, again.stdout.String(), "using key "+l.keyPath, "the second run keeps the key")
			assert.Contains(t, again.stdout.String(), tc.how+" CN=board-"+lineMAC)
			require.Eventually(t, func() bool { return len(boardLines(st)) == 2 }, 5*time.Second, 5*time.Millisecond, "the station's board lines")
			lines := boardLines(st)
			assert.Contains(t, lines[0], "result=FAILED", "the interrupted dialogue")
			assert.Contains(t, lines[1], "result=ok (certificate issued before, sent again)")
			assert.Equal(t, issuedFP, l.requireOneCertificate(t), "the certificate issued before the kill")
		})
	}
}
