package fleet

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// DefaultHandshakesPerCPU times GOMAXPROCS is the zero value of
// Options.MaxHandshakes.
//
// Every virtual device shares the simulator's few cores, which a real
// fleet does not: when 100,000 devices start their TLS handshakes at once,
// each one gets so little CPU that it takes longer than its 10 s handshake
// timeout, the server holds its handshake slots waiting for devices that
// are busy elsewhere, and the run collapses into retries (measured with
// 100,000 devices at once on 2 cores: 784 accepted after 100 s, the
// simulator at 5.3 GB). A device that would start a connection therefore
// waits, without a goroutine, until fewer than MaxHandshakes devices are
// between the start of a step and the end of their TLS handshake; the
// herd still reaches the server as fast as this machine can make
// handshakes.
const DefaultHandshakesPerCPU = 64

// queuedStep is a device step waiting for admission.
type queuedStep struct {
	d   *device
	job client.Job
}

// admission bounds the devices that are starting a step (and its first
// connection's handshake) at once. Waiting steps are queued in order and
// hold no goroutine.
type admission struct {
	f     *Fleet
	slots int // the bound
	mu    sync.Mutex
	free  int
	queue []queuedStep // FIFO; queue[head:] are waiting
	head  int
	// queued counts the waiting steps, for Progress.
	queued atomic.Int64
}

func newAdmission(f *Fleet, slots int) *admission {
	if slots <= 0 {
		slots = DefaultHandshakesPerCPU * runtime.GOMAXPROCS(0)
	}
	return &admission{f: f, slots: slots, free: slots}
}

// enter takes a slot for d's step of job and reports true, or queues the
// step and reports false; a queued step is run by release when a slot
// frees.
func (a *admission) enter(d *device, job client.Job) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.free > 0 {
		a.free--
		d.admitted.Add(1)
		return true
	}
	a.queue = append(a.queue, queuedStep{d: d, job: job})
	a.queued.Add(1)
	return false
}

// release gives a slot back: to the first queued step, which is started
// on a goroutine of its own, or to the pool. It is called from within a
// running step (counted in f.inflight), so the new goroutine is counted
// before the run can stop waiting.
func (a *admission) release() {
	a.mu.Lock()
	if a.head == len(a.queue) || a.f.runCtx.Err() != nil {
		a.free++
		a.mu.Unlock()
		return
	}
	next := a.queue[a.head]
	a.queue[a.head] = queuedStep{}
	a.head++
	if a.head == len(a.queue) { // empty: reuse the array from the start
		a.queue, a.head = a.queue[:0], 0
	} else if a.head > 1024 && a.head*2 > len(a.queue) { // mostly consumed: compact
		a.queue = append(a.queue[:0], a.queue[a.head:]...)
		a.head = 0
	}
	a.queued.Add(-1)
	a.mu.Unlock()
	next.d.admitted.Add(1)
	a.f.inflight.Add(1)
	go func() {
		defer a.f.inflight.Done()
		next.d.run(next.job)
	}()
}

// leaveAdmission gives back one of d's slots if it holds any: after a
// handshake, or at the end of a step that made no new connection. Only
// slots taken are given back, whatever the order of a device's steps.
func (d *device) leaveAdmission() {
	for {
		n := d.admitted.Load()
		if n <= 0 {
			return
		}
		if d.admitted.CompareAndSwap(n, n-1) {
			d.f.adm.release()
			return
		}
	}
}
