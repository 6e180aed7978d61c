package forwarder

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// watchdog cancels a request that makes no progress: first when the
// answer's headers do not come within the header timeout, then whenever no
// body byte moves for the idle timeout.
type watchdog struct {
	idle   time.Duration
	cancel func()

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
	phase   string // what is awaited now, for the error message
	why     string // set when it fired
}

func newWatchdog(header, idle time.Duration, cancel func()) *watchdog {
	w := &watchdog{idle: idle, cancel: cancel,
		phase: fmt.Sprintf("the server sent no answer within %v", header)}
	w.mu.Lock()
	w.t = time.AfterFunc(header, w.fire)
	w.mu.Unlock()
	return w
}

func (w *watchdog) fire() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	w.stopped = true
	w.why = w.phase
	w.mu.Unlock()
	w.cancel()
}

// kick records progress: the transfer may now stall for the idle timeout.
func (w *watchdog) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.phase = fmt.Sprintf("the transfer stalled for %v", w.idle)
	w.t.Reset(w.idle)
}

// stop disarms the watchdog for good.
func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}

func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.why != ""
}

func (w *watchdog) reason() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.why
}

// progressBody kicks the watchdog at every read that moves bytes.
type progressBody struct {
	io.ReadCloser
	dog *watchdog
}

func (b *progressBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.dog.kick()
	}
	return n, err
}
