package ambassador

import (
	"sync"
	"time"
)

// handshakeLogInterval is how often a handshake failure of one reason is
// logged at most; the failures in between are counted and reported with
// the next line as "suppressed". Metrics count every failure.
const handshakeLogInterval = 10 * time.Second

// logLimiter lets the first line of a key through at once and then at most
// one line per interval, which carries the number of lines of that key
// suppressed since the previous one. A burst followed by silence is
// reported with the next line of its key. Its zero value is ready to use.
type logLimiter struct {
	mu   sync.Mutex
	keys map[string]*logWindow
}

type logWindow struct {
	last       time.Time // when the last line of the key was let through
	suppressed int
}

// maxLogKeys bounds the limiter's memory; keys are reasons, a fixed set in
// practice.
const maxLogKeys = 256

// allow reports whether a line of key may be logged at now and, if so, how
// many lines of key were suppressed since the previous one.
func (l *logLimiter) allow(key string, now time.Time, interval time.Duration) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.keys[key]
	if w == nil {
		if l.keys == nil || len(l.keys) >= maxLogKeys {
			l.keys = make(map[string]*logWindow)
		}
		l.keys[key] = &logWindow{last: now}
		return true, 0
	}
	if now.Sub(w.last) < interval && !now.Before(w.last) {
		w.suppressed++
		return false, 0
	}
	suppressed = w.suppressed
	*w = logWindow{last: now}
	return true, suppressed
}

// logLimited logs msg with logf unless a line of key was let through less
// than handshakeLogInterval ago (by a.now); a line after suppressed ones
// carries their number as "suppressed".
func (a *Ambassador) logLimited(logf func(msg string, args ...any), key, msg string, args ...any) {
	ok, suppressed := a.handshakeLog.allow(key, a.now(), handshakeLogInterval)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	logf(msg, args...)
}
