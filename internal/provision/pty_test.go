package provision

import (
	"context"
	"crypto/x509"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision/serialport"
)

// uart paces writes to a baud rate (10 bits a byte, 8N1), as a real UART
// does; a pty alone moves bytes at memory speed whatever the baud rate.
type uart struct {
	io.ReadWriter
	baud int
}

func (u uart) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(int64(len(p)) * 10 * int64(time.Second) / int64(u.baud)))
	return u.ReadWriter.Write(p)
}

// ptyStation starts a station on a pty master paced at baud, serving
// boards until the test ends; it returns the slave's path.
func ptyStation(tb testing.TB, st *Station, baud int) string {
	m, s, err := pty.Open()
	require.NoError(tb, err)
	ctx, cancel := context.WithCancel(context.Background())
	link := NewLink(uart{m, baud}, LinkOptions{Station: true, Baud: baud})
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			st.ServeBoard(ctx, link, "pty")
		}
	})
	tb.Cleanup(func() {
		cancel()
		link.Close()
		m.Close()
		s.Close()
		wg.Wait()
	})
	return s.Name()
}

func ptyBoard(tb testing.TB, path string, baud int, serial string) DeviceResult {
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(tb, err)
	p, err := serialport.Open(path, baud)
	require.NoError(tb, err)
	defer p.Close()
	d := &Device{Identity: map[string][]string{"serial": {serial}}, Key: key, Link: LinkOptions{Baud: baud},
		Store: func(context.Context, []*x509.Certificate, *x509.Certificate, string) error { return nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := d.Run(ctx, uart{p, baud})
	require.NoError(tb, err)
	return res
}

// Several ports at once, each through go.bug.st/serial on the board's side,
// one station with one records file.
func TestPTYParallelPorts(t *testing.T) {
	ca, err := pki.NewCA("Factory CA", pki.ECDSAP256, time.Hour)
	require.NoError(t, err)
	recs, err := OpenRecords(filepath.Join(t.TempDir(), "records.jsonl"))
	require.NoError(t, err)
	st := &Station{Name: "s", CA: ca, Validity: time.Hour, Records: recs}
	var wg sync.WaitGroup
	for i := range 4 {
		path := ptyStation(t, st, 1_000_000)
		wg.Go(func() {
			res := ptyBoard(t, path, 1_000_000, string(rune('A'+i)))
			require.Equal(t, "dev-"+string(rune('A'+i)), res.CN)
		})
	}
	wg.Wait()
	require.Len(t, recs.All(), 8)
	_, err = ReadRecords(recs.Path())
	require.NoError(t, err)
}

// BenchmarkProvisionPTY115200 is the station's throughput: whole
// dialogues (hello, decision, CSR, certificate, stored, done; new ECDSA
// P-256 key in software, records fsynced) over a pty paced at 115200
// baud. boards/hour/port is what one port provisions an hour.
func BenchmarkProvisionPTY115200(b *testing.B) {
	const baud = 115200
	ca, err := pki.NewCA("Factory CA", pki.ECDSAP256, time.Hour)
	require.NoError(b, err)
	recs, err := OpenRecords(filepath.Join(b.TempDir(), "records.jsonl"))
	require.NoError(b, err)
	path := ptyStation(b, &Station{Name: "bench", CA: ca, Validity: time.Hour, Records: recs}, baud)
	var bytesOut int64
	b.ResetTimer()
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		res := ptyBoard(b, path, baud, "B"+time.Now().Format("150405.000000000"))
		bytesOut += res.Stats.BytesOut + res.Stats.BytesIn
	}
	per := time.Since(start).Seconds() / float64(b.N)
	b.ReportMetric(3600/per, "boards/hour/port")
	b.ReportMetric(float64(bytesOut)/float64(b.N), "line-bytes/board")
}
