package fleet

import (
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/client"
)

// StormReport is what a reconnect storm (Options.ReconnectStorm) showed:
// how many accepted devices lost their connections and how long they took
// to poll successfully again.
type StormReport struct {
	// AtS is when the storm hit, in seconds since the start of the run.
	AtS float64 `json:"at_s"`
	// Devices were accepted at that time; every one of them polls at once.
	Devices int `json:"devices"`
	// ConnectionsClosed is how many device connections the storm cut.
	ConnectionsClosed int `json:"connections_closed"`
	// Recovered devices completed a successful update poll after the storm.
	Recovered int `json:"recovered"`
	// RecoveryS is the time from the storm until the last of the Devices
	// recovered, in seconds; nil (omitted) when not all of them did.
	RecoveryS *float64 `json:"recovery_s,omitempty"`
	// ConnectionErrorsAfter counts the failed exchanges of the whole fleet
	// from the storm until every device recovered (or the run ended).
	ConnectionErrorsAfter uint64 `json:"connection_errors_after"`
}

// stormState is the progress of the reconnect storm of a run.
type stormState struct {
	fired     atomic.Bool
	at        atomic.Int64 // time of the storm since the start of the run, ns
	devices   atomic.Int64
	closed    atomic.Int64
	recovered atomic.Int64
	// over is set when every device recovered; recoveredAt is then the
	// time of the last recovery since the start of the run, ns.
	over        atomic.Bool
	recoveredAt atomic.Int64
	errors      atomic.Uint64
}

// reconnectStorm cuts every device connection at once, as a restart of
// the proxy in front of the fleet does, and has every accepted device
// poll for an update at once (after its first-contact jitter, under one
// second, as a device that finds its connection gone starts over). Requests
// in flight fail as they would; their jobs retry on their own schedule.
func (f *Fleet) reconnectStorm() {
	st := &f.storm
	st.at.Store(int64(f.opts.Now().Sub(f.col.start)))
	var n int64
	for _, d := range f.devices {
		for {
			old := d.state.Load()
			if old&stAccepted == 0 {
				break
			}
			if d.state.CompareAndSwap(old, old|stStorm) {
				n++
				break
			}
		}
	}
	st.devices.Store(n)
	st.fired.Store(true)
	if n == 0 {
		st.recoveredAt.Store(st.at.Load())
		st.over.Store(true)
	}
	var closed int
	for _, d := range f.devices {
		closed += d.closeConns()
	}
	st.closed.Store(int64(closed))
	f.Mark("reconnect-storm", fmt.Sprintf("%d connections cut, %d accepted devices poll at once", closed, n))
	f.log.Info("reconnect storm", "connections_closed", closed, "devices", n)
	for _, d := range f.devices {
		if d.state.Load()&stStorm != 0 {
			d.rearm(client.JobUpdate, d.c.FirstContactDelay())
		}
	}
}

// stormRecovered counts one device back after the storm.
func (f *Fleet) stormRecovered() {
	st := &f.storm
	if st.recovered.Add(1) == st.devices.Load() {
		st.recoveredAt.Store(int64(f.opts.Now().Sub(f.col.start)))
		st.over.Store(true)
	}
}

// stormFailure counts a failed exchange during the recovery.
func (f *Fleet) stormFailure() {
	if f.storm.fired.Load() && !f.storm.over.Load() {
		f.storm.errors.Add(1)
	}
}

// stormReport returns the storm's report; nil when no storm hit.
func (f *Fleet) stormReport() *StormReport {
	st := &f.storm
	if !st.fired.Load() {
		return nil
	}
	r := &StormReport{
		AtS:                   roundS(time.Duration(st.at.Load())),
		Devices:               int(st.devices.Load()),
		ConnectionsClosed:     int(st.closed.Load()),
		Recovered:             int(st.recovered.Load()),
		ConnectionErrorsAfter: st.errors.Load(),
	}
	if st.over.Load() {
		s := roundS(time.Duration(st.recoveredAt.Load() - st.at.Load()))
		r.RecoveryS = &s
	}
	return r
}

// roundS returns d in seconds, to the millisecond.
func roundS(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
