package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// notifyListener is a systemd stand-in: a unixgram socket that collects
// sd_notify datagrams.
type notifyListener struct {
	conn *net.UnixConn
	name string
}

// listenNotify listens on an abstract name (abstract) or a socket file in
// a short temporary directory (socket paths are limited to 108 bytes).
func listenNotify(t *testing.T, abstract bool) *notifyListener {
	t.Helper()
	name := fmt.Sprintf("@device-agent-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if !abstract {
		dir, err := os.MkdirTemp("", "sdn")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &notifyListener{conn: conn, name: name}
}

// next returns the next datagram, failing the test after timeout.
func (l *notifyListener) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	require.NoError(t, l.conn.SetReadDeadline(time.Now().Add(timeout)))
	n, err := l.conn.Read(buf)
	require.NoError(t, err, "no sd_notify message within %v", timeout)
	return string(buf[:n])
}

// waitFor returns the first datagram holding line, skipping others.
func (l *notifyListener) waitFor(t *testing.T, line string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	for time.Now().Before(deadline) {
		msg := l.next(t, time.Until(deadline))
		if hasLine(msg, line) {
			return msg
		}
		seen = append(seen, msg)
	}
	require.FailNow(t, "no sd_notify "+line, "seen: %q", seen)
	return ""
}

func hasLine(msg, line string) bool {
	for l := range strings.Lines(msg) {
		if strings.TrimSuffix(l, "\n") == line {
			return true
		}
	}
	return false
}

func TestNotifier(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			l := listenNotify(t, abstract)
			n, err := newNotifier(l.name)
			require.NoError(t, err)
			require.NoError(t, n.send("READY=1", notifyStatus("authenticated with\nhttps://x")))
			assert.Equal(t, "READY=1\nSTATUS=authenticated with https://x\n", l.next(t, 5*time.Second))
			require.NoError(t, n.send(notifyReloading()...))
			msg := l.next(t, 5*time.Second)
			assert.True(t, strings.HasPrefix(msg, "RELOADING=1\nMONOTONIC_USEC="), "%q", msg)
			us, ok := monotonicMicros()
			require.True(t, ok)
			var got uint64
			_, err = fmt.Sscanf(strings.Split(msg, "\n")[1], "MONOTONIC_USEC=%d", &got)
			require.NoError(t, err)
			assert.InDelta(t, float64(us), float64(got), 5e6, "CLOCK_MONOTONIC in µs")
		})
	}
}

func TestNewNotifier(t *testing.T) {
	n, err := newNotifier("")
	require.NoError(t, err)
	assert.Nil(t, n)
	assert.NoError(t, n.send("READY=1"), "a nil notifier sends nothing")
	for _, bad := range []string{"relative/path", "@", "vsock:2:1234"} {
		_, err := newNotifier(bad)
		assert.ErrorContains(t, err, "NOTIFY_SOCKET", bad)
	}
	n, err = newNotifier(filepath.Join(t.TempDir(), "nobody-listens"))
	require.NoError(t, err)
	assert.Error(t, n.send("READY=1"), "a missing listener is an error for the caller to log")
}

func TestNotifyStatusOneShortLine(t *testing.T) {
	assert.Equal(t, "STATUS=a b", notifyStatus("a\n  b"))
	long := notifyStatus(strings.Repeat("x", 500))
	assert.Len(t, long, len("STATUS=")+200)
	assert.True(t, strings.HasSuffix(long, "..."))
}
