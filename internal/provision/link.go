package provision

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Link errors.
var (
	// ErrTimeout: the peer did not answer in time (after every retransmission).
	ErrTimeout = errors.New("timed out")
	// ErrReset: the peer does not know this session (it restarted): the
	// dialogue must start again with hello.
	ErrReset = errors.New("the other side restarted and does not know this dialogue")
	// ErrNewSession: (station) a device started a new dialogue while this one
	// was under way; the device restarted.
	ErrNewSession = errors.New("the device started a new dialogue")
	// ErrClosed: the line was closed or failed.
	ErrClosed = errors.New("line closed")
)

// Defaults for LinkOptions.
const (
	DefaultFrameTimeout = time.Second
	DefaultRetries      = 8
	// DefaultProbeInterval is how often a device link that waits for the
	// station repeats the last message it sent (LinkOptions.ProbeInterval).
	DefaultProbeInterval = 3 * time.Second
)

// LinkOptions tune a Link. The zero value uses the defaults.
type LinkOptions struct {
	// FrameTimeout is how long a sent data frame waits for its
	// acknowledgement before it is sent again, on top of the time the frame
	// takes on the wire at Baud. 0 means DefaultFrameTimeout.
	FrameTimeout time.Duration
	// Retries is how often a data frame is sent again before Send gives up.
	// 0 means DefaultRetries.
	Retries int
	// Baud is the line speed, used to add the transmission time of a frame to
	// its deadline; 0 adds nothing (pipes and ptys).
	Baud int
	// Station makes the link follow the device's sessions: a data frame with
	// sequence number 0 from a new session starts a new dialogue, and frames
	// of sessions it does not know are answered with a reset. A device link
	// (false) keeps the session it was given and ignores other frames.
	Station bool
	// ProbeInterval: while a device link waits for the station's next
	// message it sends its own last message again this often. A live
	// station acknowledges the duplicate and delivers nothing; a station
	// that restarted meanwhile does not know the dialogue and answers with
	// a reset, so the device starts again instead of waiting out its step
	// timeout. 0 means DefaultProbeInterval. Station links never probe.
	ProbeInterval time.Duration
}

// Stats count what happened on a link.
type Stats struct {
	FramesIn      int64 // valid frames received
	BadFrames     int64 // zero-delimited runs that were not valid frames
	NoiseBytes    int64 // bytes that belonged to no valid frame
	Retransmits   int64 // data frames sent again
	Duplicates    int64 // data frames received again (their ack was lost)
	BytesIn       int64 // every byte read
	BytesOut      int64 // every byte written
	FramesForeign int64 // valid frames of another session, ignored
	Probes        int64 // last messages repeated while waiting (device links)
}

// Link is a reliable, ordered message channel over a byte stream: the
// stop-and-wait protocol of the package doc, for dialogues that alternate
// (each side sends its next message only after it received the other's, so
// a new message from the peer also acknowledges the one sent). One goroutine reads the stream
// (started by NewLink, ended by Close or a read error); Send, Recv and
// Accept must be called from one goroutine at a time.
type Link struct {
	w    io.Writer
	opts LinkOptions

	frames chan Frame
	done   chan struct{}
	once   sync.Once

	errMu   sync.Mutex
	readErr error

	session          uint32
	sendSeq, recvSeq uint16
	queue            [][]byte
	// next is a data frame with sequence number 0 of a new session, kept for
	// Accept (station links).
	next *Frame
	// last is the last data frame this side sent, which a device link
	// repeats while it waits (LinkOptions.ProbeInterval).
	last *Frame

	noise, bad, framesIn, retrans, dups, bytesIn, bytesOut, foreign, probes atomic.Int64
}

// NewLink starts reading rw. A reader that returns (0, nil) (a serial port
// after its read timeout) is read again; the reading goroutine ends when
// Close is called or the reader fails. Close also closes rw when it is an
// io.Closer only if the caller does so: the link never closes rw.
func NewLink(rw io.ReadWriter, opts LinkOptions) *Link {
	if opts.FrameTimeout <= 0 {
		opts.FrameTimeout = DefaultFrameTimeout
	}
	if opts.Retries <= 0 {
		opts.Retries = DefaultRetries
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	l := &Link{w: rw, opts: opts, frames: make(chan Frame, 16), done: make(chan struct{})}
	go l.readLoop(rw)
	return l
}

func (l *Link) readLoop(r io.Reader) {
	var sc scanner
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			l.bytesIn.Add(int64(n))
			sc.feed(buf[:n], func(f Frame) {
				l.framesIn.Add(1)
				select {
				case l.frames <- f:
				case <-l.done:
				}
			})
			l.noise.Store(sc.noise)
			l.bad.Store(sc.bad)
		}
		if err != nil {
			l.errMu.Lock()
			l.readErr = err
			l.errMu.Unlock()
			l.Close()
			return
		}
		select {
		case <-l.done:
			return
		default:
		}
	}
}

// Close stops the link. It does not close the underlying stream: a reader
// blocked in Read returns when the caller closes the stream (or, for a
// serial port, at its next read timeout).
func (l *Link) Close() { l.once.Do(func() { close(l.done) }) }

// Stats returns the link's counters.
func (l *Link) Stats() Stats {
	return Stats{FramesIn: l.framesIn.Load(), BadFrames: l.bad.Load(), NoiseBytes: l.noise.Load(),
		Retransmits: l.retrans.Load(), Duplicates: l.dups.Load(), BytesIn: l.bytesIn.Load(),
		BytesOut: l.bytesOut.Load(), FramesForeign: l.foreign.Load(), Probes: l.probes.Load()}
}

// closedErr is the error of a closed link: the read error when there was one.
func (l *Link) closedErr() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.readErr != nil && !errors.Is(l.readErr, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, l.readErr)
	}
	return ErrClosed
}

// NewSession starts a fresh session with a random id (device links): frames
// of earlier sessions are ignored from now on.
func (l *Link) NewSession() {
	var b [4]byte
	_, _ = rand.Read(b[:])
	l.session = binary.BigEndian.Uint32(b[:]) | 1 // never 0: 0 is "no session" on a fresh station
	l.sendSeq, l.recvSeq, l.queue = 0, 0, nil
}

// Session returns the current session id.
func (l *Link) Session() uint32 { return l.session }

func (l *Link) write(f Frame) error {
	b, err := AppendFrame(nil, f)
	if err != nil {
		return err
	}
	n, err := l.w.Write(b)
	l.bytesOut.Add(int64(n))
	if err != nil {
		return fmt.Errorf("%w: write: %w", ErrClosed, err)
	}
	return nil
}

// frameDeadline is how long to wait for the answer to a frame of n bytes.
func (l *Link) frameDeadline(n int) time.Duration {
	d := l.opts.FrameTimeout
	if l.opts.Baud > 0 {
		// 10 bits a byte (8N1), there and back for the ack.
		d += time.Duration(int64(n+64) * 10 * int64(time.Second) / int64(l.opts.Baud))
	}
	return d
}

// Send delivers body to the peer: it sends the data frame and waits for its
// acknowledgement, sending it again after each frame deadline, up to
// Retries times. Data frames from the peer that arrive meanwhile are
// acknowledged and queued for Recv.
func (l *Link) Send(ctx context.Context, body []byte) error {
	f := Frame{Type: FrameData, Session: l.session, Seq: l.sendSeq, Body: body}
	l.last = &f
	wait := l.frameDeadline(len(body) + len(body)/254 + headerLen + crcLen + 3)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if attempt > 0 {
			l.retrans.Add(1)
		}
		if err := l.write(f); err != nil {
			return err
		}
		timer.Reset(wait)
	waitAck:
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-l.done:
				return l.closedErr()
			case <-timer.C:
				break waitAck
			case in := <-l.frames:
				if in.Type == FrameAck && in.Session == l.session && in.Seq == f.Seq {
					l.sendSeq++
					return nil
				}
				// The dialogue alternates: the peer's next message means
				// it has ours, even when its acknowledgement was lost.
				next := in.Type == FrameData && in.Session == l.session && l.session != 0 && in.Seq == l.recvSeq
				if err := l.handle(in); err != nil {
					return err
				}
				if next {
					l.sendSeq++
					return nil
				}
			}
		}
		if attempt >= l.opts.Retries {
			return fmt.Errorf("%w: no acknowledgement after %d tries of %v each", ErrTimeout, attempt+1, wait.Round(time.Millisecond))
		}
	}
}

// Recv returns the next message body from the peer, waiting at most wait
// (0: until ctx ends).
func (l *Link) Recv(ctx context.Context, wait time.Duration) ([]byte, error) {
	var timeout, probe <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	if !l.opts.Station && l.last != nil && l.last.Session == l.session {
		p := time.NewTicker(l.opts.ProbeInterval)
		defer p.Stop()
		probe = p.C
	}
	for len(l.queue) == 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-l.done:
			return nil, l.closedErr()
		case <-timeout:
			return nil, fmt.Errorf("%w: no message within %v", ErrTimeout, wait)
		case <-probe:
			l.probes.Add(1)
			if err := l.write(*l.last); err != nil {
				return nil, err
			}
		case in := <-l.frames:
			if err := l.handle(in); err != nil {
				return nil, err
			}
		}
	}
	b := l.queue[0]
	l.queue = l.queue[1:]
	return b, nil
}

// Accept waits for a device to start a dialogue (station links): a data
// frame with sequence number 0 from a session other than the current one.
// It adopts that session and returns the first message body.
func (l *Link) Accept(ctx context.Context) ([]byte, error) {
	for l.next == nil {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-l.done:
			return nil, l.closedErr()
		case in := <-l.frames:
			if err := l.handle(in); err != nil && !errors.Is(err, ErrNewSession) {
				return nil, err
			}
		}
	}
	f := *l.next
	l.next = nil
	l.session, l.sendSeq, l.recvSeq, l.queue = f.Session, 0, 1, nil
	if err := l.write(Frame{Type: FrameAck, Session: f.Session, Seq: 0}); err != nil {
		return nil, err
	}
	return f.Body, nil
}

// Reset tells the peer that this side abandons the session (a station that
// cannot go on); the device then starts again.
func (l *Link) Reset() error {
	return l.write(Frame{Type: FrameReset, Session: l.session})
}

// handle processes a frame that is not the awaited acknowledgement.
func (l *Link) handle(in Frame) error {
	if in.Session != l.session || l.session == 0 {
		if !l.opts.Station {
			l.foreign.Add(1)
			return nil
		}
		switch {
		case in.Type != FrameData:
			l.foreign.Add(1)
			return nil
		case in.Seq == 0:
			l.next = &in
			return ErrNewSession
		}
		// A dialogue this station does not know (it restarted): the device
		// must start again.
		l.foreign.Add(1)
		return l.write(Frame{Type: FrameReset, Session: in.Session})
	}
	switch in.Type {
	case FrameReset:
		return ErrReset
	case FrameAck:
		return nil // a late duplicate acknowledgement
	}
	switch in.Seq {
	case l.recvSeq:
		l.queue = append(l.queue, in.Body)
		l.recvSeq++
		return l.write(Frame{Type: FrameAck, Session: l.session, Seq: in.Seq})
	case l.recvSeq - 1:
		// Our acknowledgement was lost: acknowledge again, deliver once.
		l.dups.Add(1)
		return l.write(Frame{Type: FrameAck, Session: l.session, Seq: in.Seq})
	}
	return nil
}
