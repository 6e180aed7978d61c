package provision

import (
	"context"
	"crypto"
	"crypto/x509"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/pki"
	"github.com/mender-mtls/mtls-agent/internal/provision/cborfx"
)

// memPipe is one direction of an in-memory serial line: writes never
// block (like a UART's buffer), reads wait for data or Close.
type memPipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

func newMemPipe() *memPipe {
	p := &memPipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *memPipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, io.ErrClosedPipe
	}
	p.buf = append(p.buf, b...)
	p.cond.Broadcast()
	return len(b), nil
}

func (p *memPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.closed {
		p.cond.Wait()
	}
	if len(p.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	return n, nil
}

func (p *memPipe) Close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// mangler changes one write (one frame) on its way; nil passes it.
type mangler func(p []byte) []byte

// end is one side of a line: it reads its own pipe and writes, through a
// mangler, into the peer's (which the test may swap, to restart the peer).
type end struct {
	in     *memPipe
	mu     sync.Mutex
	out    *memPipe
	mangle mangler
}

func (e *end) Read(b []byte) (int, error) { return e.in.Read(b) }

func (e *end) Write(b []byte) (int, error) {
	e.mu.Lock()
	out, m := e.out, e.mangle
	e.mu.Unlock()
	data := b
	if m != nil {
		data = m(append([]byte(nil), b...))
	}
	if len(data) > 0 {
		if _, err := out.Write(data); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// line returns the device and station ends of a line; toStation and
// toDevice mangle what each side sends.
func line(t *testing.T, toStation, toDevice mangler) (dev, st *end) {
	dp, sp := newMemPipe(), newMemPipe()
	dev = &end{in: dp, out: sp, mangle: toStation}
	st = &end{in: sp, out: dp, mangle: toDevice}
	t.Cleanup(func() { dp.Close(); sp.Close() })
	return dev, st
}

// noisy returns a mangler that flips bits, drops, duplicates, truncates
// or adds garbage, each with probability p, deterministically from seed.
func noisy(seed uint64, p float64, kinds ...string) mangler {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range kinds {
			if r.Float64() >= p {
				continue
			}
			switch k {
			case "flip":
				i := r.IntN(len(b))
				b[i] ^= 1 << r.IntN(8)
			case "drop":
				return nil
			case "dup":
				b = append(b, b...)
			case "truncate":
				b = b[:r.IntN(len(b))]
			case "garbage":
				g := make([]byte, 1+r.IntN(40))
				for i := range g {
					g[i] = byte(r.Uint32())
				}
				if r.IntN(2) == 0 {
					b = append(g, b...)
				} else {
					b = append(b, g...)
				}
			}
		}
		return b
	}
}

// fastLink are link options for in-memory tests: short frame deadlines and
// many retries, so a noisy line costs milliseconds.
var fastLink = LinkOptions{FrameTimeout: 20 * time.Millisecond, Retries: 40}

type fixture struct {
	ca      *pki.CA
	records *Records
	station *Station
	key     crypto.Signer
	stored  atomic.Int32
	chain   []*x509.Certificate
	mu      sync.Mutex
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ca, err := pki.NewCA("Factory CA", pki.ECDSAP256, 24*time.Hour)
	require.NoError(t, err)
	recs, err := OpenRecords(filepath.Join(t.TempDir(), "records.jsonl"))
	require.NoError(t, err)
	key, err := pki.GenerateKey(pki.ECDSAP256)
	require.NoError(t, err)
	// The production pairing: the device's built-in codec against the
	// station's fxamacker codec.
	return &fixture{ca: ca, records: recs, key: key,
		station: &Station{Name: "station-1", CA: ca, Validity: 10 * time.Hour, Records: recs, StepTimeout: 5 * time.Second,
			Codec: fxCodec(t)}}
}

// fxCodec returns the station's codec.
func fxCodec(t testing.TB) *cborfx.Codec {
	t.Helper()
	c, err := cborfx.New()
	require.NoError(t, err)
	return c
}

func (fx *fixture) device() *Device {
	return &Device{
		Identity:    map[string][]string{"serial": {"0042"}, "mac": {"02:00:00:00:00:42"}},
		Key:         fx.key,
		Link:        fastLink,
		StepTimeout: 5 * time.Second,
		Store: func(_ context.Context, chain []*x509.Certificate, _ *x509.Certificate, _ string) error {
			fx.mu.Lock()
			fx.chain = chain
			fx.mu.Unlock()
			fx.stored.Add(1)
			return nil
		},
	}
}

// serve runs one board on st with a fresh station link; the result arrives
// on the channel.
func (fx *fixture) serve(ctx context.Context, rw io.ReadWriter, opts LinkOptions) (<-chan BoardResult, *Link) {
	opts.Station = true
	l := NewLink(rw, opts)
	ch := make(chan BoardResult, 1)
	go func() { ch <- fx.station.ServeBoard(ctx, l, "pipe0") }()
	return ch, l
}

func kinds(recs []Record) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.Kind)
	}
	return out
}
