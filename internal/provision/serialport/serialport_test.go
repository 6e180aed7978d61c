package serialport

import (
	"os"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ptySlave(t *testing.T) (*os.File, string) {
	m, s, err := pty.Open()
	require.NoError(t, err)
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s.Name()
}

// Bytes of every value cross the line unchanged (raw mode), and a read
// with nothing to read returns after the read timeout instead of blocking.
func TestOpenRawAndReadTimeout(t *testing.T) {
	m, path := ptySlave(t)
	p, err := Open(path, DefaultBaud)
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, path, p.Path())
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	_, err = m.Write(all)
	require.NoError(t, err)
	var got []byte
	buf := make([]byte, 512)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(all) && time.Now().Before(deadline) {
		n, err := p.Read(buf)
		require.NoError(t, err)
		got = append(got, buf[:n]...)
	}
	assert.Equal(t, all, got)

	start := time.Now()
	n, err := p.Read(buf)
	assert.NoError(t, err)
	assert.Zero(t, n)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestOpenErrors(t *testing.T) {
	_, path := ptySlave(t)
	first, err := Open(path, DefaultBaud)
	require.NoError(t, err)
	_, err = Open(path, DefaultBaud)
	require.ErrorContains(t, err, "serial port "+path+" is busy")
	require.NoError(t, first.Close())
	again, err := Open(path, DefaultBaud)
	require.NoError(t, err, "closing releases the lock")
	again.Close()

	_, err = Open("/dev/ttyNOPE9", DefaultBaud)
	require.ErrorContains(t, err, "serial port /dev/ttyNOPE9 does not exist")
	_, err = Open(path, 0)
	require.ErrorContains(t, err, "baud rate 0")
	_, err = Open(os.DevNull, DefaultBaud)
	require.ErrorContains(t, err, "/dev/null is not a serial port")
}
