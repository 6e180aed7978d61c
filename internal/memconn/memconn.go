// Package memconn connects two parts of one process with in-memory
// net.Conn pairs, so that an HTTP client and server in the same process
// talk without sockets, system calls or TLS.
//
// [Listen] returns a [Listener]; its [Listener.DialContext] has the shape
// of http.Transport.DialContext and hands the other end of each new pair to
// [Listener.Accept]. Unlike net.Pipe, each direction of a pair is buffered
// (up to [BufferSize] bytes): a write returns as soon as its bytes are
// buffered, without waiting for the reader, which saves a goroutine
// hand-off per write. Deadlines, Close (which unblocks reads and writes in
// progress) and CloseWrite (a half-close: the peer reads io.EOF once the
// buffer is drained) behave as on a TCP connection.
package memconn

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// BufferSize is the most bytes one direction of a connection holds before
// a write waits for the reader.
const BufferSize = 64 << 10

// Network is the network name of every address in this package.
const Network = "memconn"

// ErrListenerClosed is returned by DialContext once the listener is
// closed: nothing accepts connections any more.
var ErrListenerClosed = errors.New("memconn: listener closed")

// Addr is the pseudo address of a listener or of a dialing end: the
// listener's name, or that name with "-client:N" for the Nth connection
// dialed, so that it splits like a host:port.
type Addr string

// Network returns "memconn".
func (Addr) Network() string { return Network }

func (a Addr) String() string { return string(a) }

// Listener is an in-memory net.Listener. Create it with [Listen]; its
// methods are safe for concurrent use.
type Listener struct {
	addr      Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	dialed    atomic.Uint64
}

// Listen returns a listener named name ("backend.internal", say); the name
// is its Addr and appears in the addresses of its connections.
func Listen(name string) *Listener {
	return &Listener{addr: Addr(name), conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept waits for the next connection dialed with DialContext. After
// Close it returns net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the listener: Accept and DialContext return errors from now
// on. Connections already accepted stay open. It may be called more than
// once.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr returns the listener's name as an [Addr].
func (l *Listener) Addr() net.Addr { return l.addr }

// DialContext returns a new connection whose other end is handed to
// Accept. It waits for an Accept until ctx is done, and fails with
// ErrListenerClosed once the listener is closed. network and addr are
// ignored (every dial reaches this listener), so that the method can be
// an http.Transport's DialContext.
func (l *Listener) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	select { // a closed listener fails even when an Accept is waiting
	case <-l.done:
		return nil, ErrListenerClosed
	default:
	}
	client := Addr(string(l.addr) + "-client:" + strconv.FormatUint(l.dialed.Add(1), 10))
	c, s := newPair(client, l.addr)
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, ErrListenerClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Pipe returns the two ends of a new buffered in-memory connection, with
// the addresses "pipe-a" and "pipe-b".
func Pipe() (net.Conn, net.Conn) {
	a, b := newPair("pipe-a", "pipe-b")
	return a, b
}

func newPair(addrA, addrB Addr) (*Conn, *Conn) {
	ab, ba := newBuffer(), newBuffer()
	a := &Conn{local: addrA, remote: addrB, rx: ba, tx: ab, done: make(chan struct{})}
	b := &Conn{local: addrB, remote: addrA, rx: ab, tx: ba, done: make(chan struct{})}
	a.rd.init()
	a.wd.init()
	b.rd.init()
	b.wd.init()
	return a, b
}

// Conn is one end of an in-memory connection. Its methods are safe for
// concurrent use; concurrent Reads (or Writes) are served in no particular
// order, as on a socket.
type Conn struct {
	local, remote Addr
	rx, tx        *buffer // rx: the peer writes, this end reads; tx: the reverse
	rd, wd        deadline
	done          chan struct{} // closed by Close
	closeOnce     sync.Once
}

var _ net.Conn = (*Conn)(nil)

// Read reads buffered bytes. It waits for data while the buffer is empty;
// it returns io.EOF once the peer has closed (or half-closed) and the
// buffer is drained, os.ErrDeadlineExceeded after the read deadline and
// net.ErrClosed after Close.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if isClosed(c.done) {
			return 0, net.ErrClosed
		}
		dl := c.rd.wait()
		if isClosed(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		n, eof := c.rx.read(p)
		if n > 0 || len(p) == 0 {
			return n, nil
		}
		if eof {
			return 0, io.EOF
		}
		select {
		case <-c.rx.readable:
		case <-dl:
		case <-c.done:
		}
	}
}

// Write buffers p, waiting while the buffer is full. It returns
// io.ErrClosedPipe when the peer has closed, net.ErrClosed after Close or
// CloseWrite, and os.ErrDeadlineExceeded after the write deadline, each
// with the number of bytes buffered before.
func (c *Conn) Write(p []byte) (int, error) {
	total := 0
	for {
		if isClosed(c.done) {
			return total, net.ErrClosed
		}
		dl := c.wd.wait()
		if isClosed(dl) {
			return total, os.ErrDeadlineExceeded
		}
		n, err := c.tx.write(p[total:])
		total += n
		if err != nil || total == len(p) {
			return total, err
		}
		if n > 0 {
			continue // a read may have made room meanwhile; the next try tells
		}
		select {
		case <-c.tx.writable:
		case <-dl:
		case <-c.done:
		}
	}
}

// CloseWrite ends this end's writing: the peer reads io.EOF after the
// bytes already buffered, this end may still read.
func (c *Conn) CloseWrite() error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.tx.closeWriter()
	return nil
}

// Close closes both directions: reads and writes in progress on this end
// return net.ErrClosed, the peer reads io.EOF after the buffered bytes and
// its writes fail with io.ErrClosedPipe. It may be called more than once.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.tx.closeWriter()
		c.rx.closeReader()
		c.rd.stop()
		c.wd.stop()
	})
	return nil
}

// LocalAddr returns this end's address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and the write deadline; the zero time clears
// them.
func (c *Conn) SetDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline sets the read deadline; a Read waiting then returns
// os.ErrDeadlineExceeded. The zero time clears it.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.rd.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline; a Write waiting then returns
// os.ErrDeadlineExceeded. The zero time clears it.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if isClosed(c.done) {
		return net.ErrClosed
	}
	c.wd.set(t)
	return nil
}

// buffer is one direction of a connection: bytes written by one end and
// not yet read by the other.
type buffer struct {
	mu           sync.Mutex
	data         []byte // unread bytes are data[off:]
	off          int
	writerClosed bool // no more bytes will come: the reader gets io.EOF once drained
	readerClosed bool // nobody reads: writes fail

	// readable and writable hold a token when the state changed for the
	// reader or the writer; a waiter takes it and looks again, so no wakeup
	// is lost between looking and waiting.
	readable, writable chan struct{}
}

func newBuffer() *buffer {
	return &buffer{readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

// read copies buffered bytes into p; eof reports that none are left and
// none will come.
func (b *buffer) read(p []byte) (n int, eof bool) {
	b.mu.Lock()
	n = copy(p, b.data[b.off:])
	b.off += n
	if b.off == len(b.data) {
		b.data, b.off = b.data[:0], 0
	}
	left := len(b.data) - b.off
	eof = n == 0 && b.writerClosed
	b.mu.Unlock()
	if n > 0 {
		signal(b.writable)
		if left > 0 {
			signal(b.readable) // for another reader waiting
		}
	}
	return n, eof
}

// write buffers as much of p as fits.
func (b *buffer) write(p []byte) (int, error) {
	b.mu.Lock()
	switch {
	case b.writerClosed:
		b.mu.Unlock()
		return 0, net.ErrClosed
	case b.readerClosed:
		b.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	if b.off > 0 && len(b.data)+len(p) > cap(b.data) { // reuse the space read already
		b.data = b.data[:copy(b.data, b.data[b.off:])]
		b.off = 0
	}
	n := min(len(p), BufferSize-(len(b.data)-b.off))
	b.data = append(b.data, p[:n]...)
	room := len(b.data)-b.off < BufferSize
	b.mu.Unlock()
	if n > 0 {
		signal(b.readable)
		if room {
			signal(b.writable) // for another writer waiting
		}
	}
	return n, nil
}

func (b *buffer) closeWriter() {
	b.mu.Lock()
	b.writerClosed = true
	b.mu.Unlock()
	signal(b.readable)
	signal(b.writable)
}

func (b *buffer) closeReader() {
	b.mu.Lock()
	b.readerClosed = true
	b.data, b.off = nil, 0 // nobody will read them
	b.mu.Unlock()
	signal(b.writable)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// deadline is a read or write deadline: a channel that is closed when it
// passes, so that a waiting Read or Write can select on it. Setting a new
// deadline keeps the channel unless it is already closed.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	c     chan struct{}
}

func (d *deadline) init() { d.c = make(chan struct{}) }

// set arms the deadline at t; the zero time clears it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.c // the timer fired: wait for it to have closed the channel
	}
	d.timer = nil
	if isClosed(d.c) {
		d.c = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.c)
		return
	}
	c := d.c
	d.timer = time.AfterFunc(dur, func() { close(c) })
}

// wait returns the channel closed when the deadline passes.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.c
}

// stop releases the timer of a closed connection.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && d.timer.Stop() {
		d.timer = nil // a stopped timer that never fired must not be waited for by set
	}
}
