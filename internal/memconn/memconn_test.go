package memconn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waitShort bounds every wait of a test on this package: an in-memory
// operation either happens at once or not at all.
const waitShort = 5 * time.Second

// pair dials l and accepts the other end.
func pair(t *testing.T, l *Listener) (client, server net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		assert.NoError(t, err)
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(t.Context(), waitShort)
	defer cancel()
	c, err := l.DialContext(ctx, "tcp", "ignored:80")
	require.NoError(t, err)
	s := <-accepted
	require.NotNil(t, s)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// result runs f in a goroutine and returns a channel with its error.
func result(f func() error) <-chan error {
	c := make(chan error, 1)
	go func() { c <- f() }()
	return c
}

func waitErr(t *testing.T, c <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(waitShort):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

func TestDataBothWaysAndAddresses(t *testing.T) {
	l := Listen("backend.internal")
	defer l.Close()
	assert.Equal(t, "memconn", l.Addr().Network())
	assert.Equal(t, "backend.internal", l.Addr().String())
	c, s := pair(t, l)
	assert.Equal(t, "backend.internal", s.LocalAddr().String())
	assert.Equal(t, c.LocalAddr(), s.RemoteAddr())
	assert.Equal(t, s.LocalAddr(), c.RemoteAddr())
	host, port, err := net.SplitHostPort(s.RemoteAddr().String())
	require.NoError(t, err, "a connection's address splits like host:port, as HTTP servers expect of RemoteAddr")
	assert.Equal(t, "backend.internal-client", host)
	assert.Equal(t, "1", port)
	c2, _ := pair(t, l)
	assert.NotEqual(t, c.LocalAddr(), c2.LocalAddr(), "each dialed connection has its own address")

	// More than BufferSize each way, both at once: neither side may wait
	// for the other to read first forever.
	big := make([]byte, 3*BufferSize+123)
	_, _ = rand.Read(big)
	for _, dir := range []struct {
		name     string
		from, to net.Conn
	}{{"client to server", c, s}, {"server to client", s, c}} {
		t.Run(dir.name, func(t *testing.T) {
			wrote := result(func() error { _, err := dir.from.Write(big); return err })
			got := make([]byte, len(big))
			_, err := io.ReadFull(dir.to, got)
			require.NoError(t, err)
			require.NoError(t, waitErr(t, wrote, "Write"))
			assert.True(t, bytes.Equal(big, got), "bytes arrive unchanged and in order")
		})
	}
}

// A write returns once its bytes are buffered: the point of the package
// against net.Pipe, whose Write waits for a Read.
func TestWriteDoesNotWaitForReader(t *testing.T) {
	a, b := Pipe()
	defer a.Close()
	defer b.Close()
	require.NoError(t, a.SetWriteDeadline(time.Now().Add(waitShort)))
	n, err := a.Write(make([]byte, BufferSize))
	require.NoError(t, err, "a write that fits the buffer needs no reader")
	assert.Equal(t, BufferSize, n)
}

// The deadline and close tests run in synctest bubbles: time is fake and
// synctest.Wait tells when a Read or Write is waiting.
func TestDeadlines(t *testing.T) {
	t.Run("read deadline ends a waiting read and can be cleared", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer a.Close()
			defer b.Close()
			require.NoError(t, a.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
			_, err := a.Read(make([]byte, 1))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout(), "a deadline error is a timeout, as net/http expects")

			require.NoError(t, a.SetReadDeadline(time.Time{}))
			_, err = b.Write([]byte("x"))
			require.NoError(t, err)
			buf := make([]byte, 1)
			n, err := a.Read(buf)
			require.NoError(t, err, "a cleared deadline lets reads wait again")
			assert.Equal(t, "x", string(buf[:n]))
		})
	})
	t.Run("a deadline in the past unblocks a read already waiting", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer a.Close()
			defer b.Close()
			read := result(func() error { _, err := a.Read(make([]byte, 1)); return err })
			synctest.Wait() // the read waits
			require.NoError(t, a.SetReadDeadline(time.Unix(1, 0)))
			assert.ErrorIs(t, waitErr(t, read, "Read"), os.ErrDeadlineExceeded)
		})
	})
	t.Run("a later deadline postpones one set before", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer a.Close()
			defer b.Close()
			require.NoError(t, a.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
			require.NoError(t, a.SetReadDeadline(time.Now().Add(waitShort)))
			read := result(func() error { _, err := a.Read(make([]byte, 1)); return err })
			time.Sleep(50 * time.Millisecond) // past the first deadline (fake time)
			_, err := b.Write([]byte("y"))
			require.NoError(t, err)
			assert.NoError(t, waitErr(t, read, "Read"))
		})
	})
	t.Run("write deadline ends a write waiting for room", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer a.Close()
			defer b.Close()
			require.NoError(t, a.SetDeadline(time.Now().Add(20*time.Millisecond)))
			n, err := a.Write(make([]byte, BufferSize+10))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			assert.Equal(t, BufferSize, n, "what fitted was buffered and counted")
			_, err = a.Read(make([]byte, 1))
			assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "SetDeadline sets the read deadline too")
		})
	})
}

func TestClose(t *testing.T) {
	t.Run("close unblocks this end's reads and writes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer b.Close()
			read := result(func() error { _, err := a.Read(make([]byte, 1)); return err })
			_, err := a.Write(make([]byte, BufferSize)) // fill the buffer
			require.NoError(t, err)
			write := result(func() error { _, err := a.Write([]byte("more")); return err })
			synctest.Wait() // both wait
			require.NoError(t, a.Close())
			assert.ErrorIs(t, waitErr(t, read, "Read"), net.ErrClosed)
			assert.ErrorIs(t, waitErr(t, write, "Write"), net.ErrClosed)
			assert.NoError(t, a.Close(), "a second Close is harmless")
			assert.ErrorIs(t, a.SetDeadline(time.Now()), net.ErrClosed)
		})
	})
	t.Run("the peer reads what was written, then EOF; its writes fail", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer b.Close()
			read := result(func() error {
				got, err := io.ReadAll(b)
				if err == nil && string(got) != "last words" {
					err = errors.New("read " + string(got))
				}
				return err
			})
			_, err := a.Write([]byte("last words"))
			require.NoError(t, err)
			require.NoError(t, a.Close())
			assert.NoError(t, waitErr(t, read, "ReadAll"), "buffered bytes survive the writer's Close")
			_, err = b.Write([]byte("anyone?"))
			assert.ErrorIs(t, err, io.ErrClosedPipe)
		})
	})
	t.Run("a peer waiting to write is told when this end closes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer b.Close()
			write := result(func() error { _, err := b.Write(make([]byte, BufferSize+1)); return err })
			synctest.Wait() // the write waits for room
			require.NoError(t, a.Close())
			assert.ErrorIs(t, waitErr(t, write, "Write"), io.ErrClosedPipe)
		})
	})
	t.Run("CloseWrite half-closes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, b := Pipe()
			defer a.Close()
			defer b.Close()
			_, err := a.Write([]byte("request"))
			require.NoError(t, err)
			require.NoError(t, a.(interface{ CloseWrite() error }).CloseWrite())
			got, err := io.ReadAll(b)
			require.NoError(t, err)
			assert.Equal(t, "request", string(got))
			_, err = a.Write([]byte("x"))
			assert.ErrorIs(t, err, net.ErrClosed)
			_, err = b.Write([]byte("reply"))
			require.NoError(t, err, "the other direction stays open")
			buf := make([]byte, 5)
			_, err = io.ReadFull(a, buf)
			require.NoError(t, err)
			assert.Equal(t, "reply", string(buf))
		})
	})
}

func TestListenerClose(t *testing.T) {
	l := Listen("x")
	c, s := pair(t, l)
	accept := result(func() error { _, err := l.Accept(); return err })
	require.NoError(t, l.Close())
	assert.ErrorIs(t, waitErr(t, accept, "Accept"), net.ErrClosed, "Close ends a waiting Accept")
	_, err := l.DialContext(t.Context(), "tcp", "x:80")
	assert.ErrorIs(t, err, ErrListenerClosed)
	assert.NoError(t, l.Close(), "a second Close is harmless")

	_, err = c.Write([]byte("still"))
	require.NoError(t, err, "connections accepted before stay open")
	buf := make([]byte, 5)
	_, err = io.ReadFull(s, buf)
	require.NoError(t, err)
}

func TestDialWaitsForAcceptUntilContextEnds(t *testing.T) {
	l := Listen("nobody-accepts")
	defer l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := l.DialContext(ctx, "tcp", "")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// Many connections at once, each echoing its own data: nothing is mixed
// up or lost (run with -race).
func TestManyConcurrentConns(t *testing.T) {
	l := Listen("echo")
	defer l.Close()
	var servers sync.WaitGroup
	servers.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			servers.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	const conns = 200
	var clients sync.WaitGroup
	for i := range conns {
		clients.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), waitShort)
			defer cancel()
			c, err := l.DialContext(ctx, "tcp", "")
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(waitShort))
			msg := bytes.Repeat([]byte{byte(i)}, 1000+i*97)
			go func() {
				_, _ = c.Write(msg)
				_ = c.(interface{ CloseWrite() error }).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			assert.NoError(t, err)
			assert.True(t, bytes.Equal(msg, got), "connection %d echoed its own bytes", i)
		})
	}
	clients.Wait()
	l.Close()
	servers.Wait()
}

// An http.Server on a Listener and an http.Transport dialing it: what the
// package is for.
func TestHTTPOverListener(t *testing.T) {
	l := Listen("backend.internal")
	srv := &http.Server{ReadHeaderTimeout: waitShort, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, r.Method+" "+r.Host+r.URL.Path+" "+string(body)+" from "+r.RemoteAddr)
	})}
	served := result(func() error { return srv.Serve(l) })
	tr := &http.Transport{DialContext: l.DialContext, MaxConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: waitShort}
	for i := range 20 {
		resp, err := client.Post("http://backend.internal/api/x", "text/plain", strings.NewReader(strings.Repeat("b", i*1000)))
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Regexp(t, `^POST backend.internal/api/x b* from backend.internal-client:\d+$`, string(got))
		assert.Len(t, got, len("POST backend.internal/api/x  from backend.internal-client:1")+i*1000)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitShort)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))
	assert.ErrorIs(t, waitErr(t, served, "Serve"), http.ErrServerClosed)
}

// The choice against net.Pipe: one HTTP request and response at a time
// over a kept-alive connection, as the ambassador's upstream link carries
// them. Run with -bench Pipe.
func BenchmarkHTTPRoundTrip(b *testing.B) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(bytes.Repeat([]byte("r"), 600))
	})
	body := bytes.Repeat([]byte("q"), 900)
	for _, bc := range []struct {
		name string
		ln   func() (net.Listener, func(context.Context, string, string) (net.Conn, error))
	}{
		{"memconn", func() (net.Listener, func(context.Context, string, string) (net.Conn, error)) {
			l := Listen("bench")
			return l, l.DialContext
		}},
		{"net.Pipe", func() (net.Listener, func(context.Context, string, string) (net.Conn, error)) {
			l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
			return l, l.dial
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, dial := bc.ln()
			srv := &http.Server{Handler: handler, ReadHeaderTimeout: time.Minute}
			go func() { _ = srv.Serve(l) }()
			defer srv.Close()
			tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodPost, "http://bench/x", bytes.NewReader(body))
					resp, err := tr.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// pipeListener hands out net.Pipe pairs, for the benchmark's comparison.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return Addr("pipe") }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
