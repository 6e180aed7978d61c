package fakemender_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/mender-mtls/mtls-agent/internal/fakemender"
)

const (
	pathDeviceConnect = "/api/devices/v1/deviceconnect/connect"
	pathMgmtDC        = "/api/management/v1/deviceconnect/devices/"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// dcEnv is a fake backend on loopback with one accepted device.
type dcEnv struct {
	s        *fakemender.Server
	srv      *httpServer
	devID    string
	devToken string
	mgmt     string
}

func newDCEnv(t *testing.T, opts fakemender.Options) *dcEnv {
	t.Helper()
	s := newServer(t, opts)
	_, id, tok := acceptedDevice(t, s, "02:00:00:00:dc:01")
	return &dcEnv{s: s, srv: newHTTPServer(t, s), devID: id, devToken: tok, mgmt: login(t, s)}
}

// dial opens a websocket to path with a Bearer token; the connection is
// closed at cleanup.
func (e *dcEnv) dial(t *testing.T, path, token string, subprotocols ...string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + path
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPHeader:   http.Header{"Authorization": {"Bearer " + token}},
		Subprotocols: subprotocols,
	})
	if c != nil {
		c.SetReadLimit(16 << 20)
		t.Cleanup(func() { _ = c.CloseNow() })
	}
	return c, resp, err
}

func (e *dcEnv) connectDevice(t *testing.T) *websocket.Conn {
	t.Helper()
	c, _, err := e.dial(t, pathDeviceConnect, e.devToken, "protomsg/msgpack")
	require.NoError(t, err, "device websocket")
	require.Eventually(t, func() bool {
		st, err := e.s.DeviceConnectState(e.devID)
		return err == nil && st.Status == fakemender.DeviceConnectConnected
	}, 5*time.Second, 5*time.Millisecond, "the device never showed connected")
	return c
}

func (e *dcEnv) connectUser(t *testing.T) *websocket.Conn {
	t.Helper()
	c, _, err := e.dial(t, pathMgmtDC+e.devID+"/connect", e.mgmt)
	require.NoError(t, err, "user websocket")
	return c
}

// status GETs the management status of the device.
func (e *dcEnv) status(t *testing.T) (int, fakemender.DeviceConnectState) {
	t.Helper()
	code, body := e.srv.send(t, req{method: "GET", path: pathMgmtDC + e.devID, hdr: bearerHdr(e.mgmt)})
	var st fakemender.DeviceConnectState
	if code == http.StatusOK {
		require.NoError(t, json.Unmarshal([]byte(body), &st), body)
	}
	return code, st
}

func send(t *testing.T, c *websocket.Conn, m fakemender.ProtoMsg) {
	t.Helper()
	data, err := msgpack.Marshal(&m)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, data))
}

func recv(t *testing.T, c *websocket.Conn) fakemender.ProtoMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	typ, data, err := c.Read(ctx)
	require.NoError(t, err, "read a relayed frame")
	assert.Equal(t, websocket.MessageBinary, typ)
	var m fakemender.ProtoMsg
	require.NoError(t, msgpack.Unmarshal(data, &m))
	return m
}

// readErr reads until the connection ends and returns the error.
func readErr(t *testing.T, c *websocket.Conn, within time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		if _, _, err := c.Read(ctx); err != nil {
			require.NoError(t, ctx.Err(), "the connection was not closed within %s", within)
			return err
		}
	}
}

func shell(typ, sid string, props map[string]any, body string) fakemender.ProtoMsg {
	m := fakemender.ProtoMsg{Header: fakemender.ProtoHdr{Proto: fakemender.ProtoShell, MsgType: typ, SessionID: sid, Properties: props}}
	if body != "" {
		m.Body = []byte(body)
	}
	return m
}

// propInt reads an integer property whatever width msgpack chose.
func propInt(t *testing.T, props map[string]any, key string) int64 {
	t.Helper()
	switch v := props[key].(type) {
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case uint8:
		return int64(v)
	case uint16:
		return int64(v)
	case uint32:
		return int64(v)
	case uint64:
		return int64(v)
	}
	t.Fatalf("property %q is %T %v, not an integer", key, props[key], props[key])
	return 0
}

// A fake device and a fake user run a terminal session through the relay,
// as mender-cli and mender-connect do: the server stamps its own session id
// and the user id into every user frame, routes device frames back by
// session id and drops those of unknown sessions; when a user goes away
// with a shell running, the device gets a shell stop.
func TestDeviceConnectRelaysShellSession(t *testing.T) {
	e := newDCEnv(t, fakemender.Options{})
	_, claims := decodeJWT(t, e.mgmt)
	userID := claims["sub"].(string)

	dev := e.connectDevice(t)
	assert.Equal(t, "protomsg/msgpack", dev.Subprotocol(), "the server offers the msgpack subprotocol")
	code, st := e.status(t)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, e.devID, st.DeviceID)
	assert.Equal(t, fakemender.DeviceConnectConnected, st.Status)
	assert.False(t, st.CreatedTS.IsZero())
	assert.False(t, st.UpdatedTS.Before(st.CreatedTS))

	user := e.connectUser(t)
	send(t, user, shell(fakemender.ShellNew, "chosen-by-user", map[string]any{"terminal_width": 80, "terminal_height": 40}, ""))
	got := recv(t, dev)
	assert.Equal(t, fakemender.ProtoShell, got.Header.Proto)
	assert.Equal(t, fakemender.ShellNew, got.Header.MsgType)
	sid := got.Header.SessionID
	assert.Regexp(t, uuidRE, sid, "the server replaces the sid with its own session UUID")
	assert.Equal(t, userID, got.Header.Properties["user_id"], "the server adds the user id")
	assert.Equal(t, int64(80), propInt(t, got.Header.Properties, "terminal_width"), "other properties pass unchanged")
	assert.Equal(t, int64(40), propInt(t, got.Header.Properties, "terminal_height"))

	send(t, dev, shell(fakemender.ShellNew, sid, map[string]any{"status": fakemender.ShellStatusNormal}, "Shell started"))
	got = recv(t, user)
	assert.Equal(t, fakemender.ShellNew, got.Header.MsgType)
	assert.Equal(t, sid, got.Header.SessionID)
	assert.Equal(t, "Shell started", string(got.Body))

	send(t, user, shell(fakemender.ShellData, "", nil, "echo hi\n"))
	got = recv(t, dev)
	assert.Equal(t, fakemender.ShellData, got.Header.MsgType)
	assert.Equal(t, sid, got.Header.SessionID)
	assert.Equal(t, "echo hi\n", string(got.Body))
	assert.Equal(t, userID, got.Header.Properties["user_id"], "props are made for a frame that had none")

	// A frame of a session the server does not know never reaches the user:
	// the next frame the user reads is the one after it.
	send(t, dev, shell(fakemender.ShellData, "00000000-0000-4000-8000-000000000000", nil, "not yours\n"))
	send(t, dev, shell(fakemender.ShellData, "", nil, "no sid\n"))
	send(t, dev, shell(fakemender.ShellData, sid, nil, "hi\n"))
	got = recv(t, user)
	assert.Equal(t, "hi\n", string(got.Body), "frames of unknown sessions are dropped")

	send(t, user, shell(fakemender.ShellStop, "", nil, ""))
	got = recv(t, dev)
	assert.Equal(t, fakemender.ShellStop, got.Header.MsgType)
	assert.Equal(t, sid, got.Header.SessionID)
	// The shell was stopped by the user: leaving now sends nothing more.
	require.NoError(t, user.Close(websocket.StatusNormalClosure, ""))

	// A second user starts a shell and leaves without stopping it: the
	// device is told to stop it, with status error and the reason.
	user2 := e.connectUser(t)
	send(t, user2, shell(fakemender.ShellNew, "", nil, ""))
	got = recv(t, dev)
	sid2 := got.Header.SessionID
	assert.NotEqual(t, sid, sid2, "every user connection is a new session")
	require.NoError(t, user2.Close(websocket.StatusNormalClosure, ""))
	got = recv(t, dev)
	assert.Equal(t, fakemender.ShellStop, got.Header.MsgType, "the next frame the device sees is the stop of the second shell, not one of the first")
	assert.Equal(t, sid2, got.Header.SessionID)
	assert.Equal(t, int64(fakemender.ShellStatusError), propInt(t, got.Header.Properties, "status"))
	assert.Equal(t, userID, got.Header.Properties["user_id"])
	assert.Equal(t, "user disconnected", string(got.Body))

	// The session is gone: the device's frames for it are dropped (the
	// relay is still up: a new session works).
	send(t, dev, shell(fakemender.ShellData, sid2, nil, "late\n"))
	user3 := e.connectUser(t)
	send(t, user3, shell(fakemender.ShellNew, "", nil, ""))
	sid3 := recv(t, dev).Header.SessionID
	send(t, dev, shell(fakemender.ShellData, sid3, nil, "third\n"))
	assert.Equal(t, "third\n", string(recv(t, user3).Body))
}

// The device endpoint needs a device token and the user endpoints a
// management token; a device that is not connected cannot be reached (404),
// and one that never connected is unknown (404).
func TestDeviceConnectAuthAndNotConnected(t *testing.T) {
	e := newDCEnv(t, fakemender.Options{})

	for _, tc := range []struct {
		name, path, token string
	}{
		{"device endpoint with a garbage token", pathDeviceConnect, "not-a-jwt"},
		{"device endpoint with a management token", pathDeviceConnect, e.mgmt},
		{"user endpoint with a device token", pathMgmtDC + e.devID + "/connect", e.devToken},
		{"status with a device token", pathMgmtDC + e.devID, e.devToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := e.dial(t, tc.path, tc.token)
			require.Error(t, err, "the upgrade must be refused")
			assert.Nil(t, c)
			require.NotNil(t, resp)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		})
	}

	code, _ := e.status(t)
	assert.Equal(t, http.StatusNotFound, code, "a device that never connected is unknown to deviceconnect")
	_, resp, err := e.dial(t, pathMgmtDC+e.devID+"/connect", e.mgmt)
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode, "no terminal to a device that is not connected")
	_, err = e.s.DeviceConnectState(e.devID)
	assert.ErrorIs(t, err, fakemender.ErrNotFound)

	// Connected, then gone: disconnected with a newer timestamp, and 404
	// again for users.
	dev := e.connectDevice(t)
	_, before := e.status(t)
	user := e.connectUser(t)
	require.NoError(t, dev.Close(websocket.StatusNormalClosure, "bye"))
	var st fakemender.DeviceConnectState
	require.Eventually(t, func() bool {
		_, st = e.status(t)
		return st.Status == fakemender.DeviceConnectDisconnected
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, before.CreatedTS, st.CreatedTS)
	assert.False(t, st.UpdatedTS.Before(before.UpdatedTS))
	assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(readErr(t, user, 5*time.Second)),
		"the user's session ends with its device")
	_, resp, err = e.dial(t, pathMgmtDC+e.devID+"/connect", e.mgmt)
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	// A websocket request is counted when its handler returns, just after
	// the device shows disconnected.
	require.Eventually(t, func() bool {
		return e.s.Stats().ByRouteStatus[fakemender.RouteDeviceConnect][http.StatusSwitchingProtocols] == 1
	}, 5*time.Second, 5*time.Millisecond, "the finished device websocket is counted as 101")
	assert.Equal(t, 2, e.s.Stats().ByRouteStatus[fakemender.RouteDeviceConnect][http.StatusUnauthorized])
}

// A second connection of the same device replaces the first, whose
// sessions end; a malformed user frame closes that user's websocket; an
// oversized frame closes the connection.
func TestDeviceConnectReplaceMalformedAndLimit(t *testing.T) {
	e := newDCEnv(t, fakemender.Options{})
	first := e.connectDevice(t)
	user := e.connectUser(t)
	// The user's session is opened by the server after the upgrade: wait
	// until a frame of it reaches the first connection, so the session is
	// known to belong to that one before the second connection replaces it.
	send(t, user, shell(fakemender.ShellNew, "", map[string]any{"terminal_width": 80, "terminal_height": 40}, ""))
	assert.Equal(t, fakemender.ShellNew, recv(t, first).Header.MsgType)
	second, _, err := e.dial(t, pathDeviceConnect, e.devToken) // no subprotocol asked: still accepted
	require.NoError(t, err)
	assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(readErr(t, first, 5*time.Second)), "the old device connection is closed")
	assert.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(readErr(t, user, 5*time.Second)), "its sessions end")
	_, st := e.status(t)
	assert.Equal(t, fakemender.DeviceConnectConnected, st.Status, "the new connection keeps the device connected")

	user = e.connectUser(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.NoError(t, user.Write(ctx, websocket.MessageBinary, []byte{0xc1})) // 0xc1 is never valid msgpack
	assert.Equal(t, websocket.StatusUnsupportedData, websocket.CloseStatus(readErr(t, user, 5*time.Second)))

	require.NoError(t, second.Write(ctx, websocket.MessageBinary, make([]byte, 8<<20+1)))
	assert.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(readErr(t, second, 5*time.Second)),
		"a frame over 8 MiB closes the device connection")
	require.Eventually(t, func() bool {
		_, st = e.status(t)
		return st.Status == fakemender.DeviceConnectDisconnected
	}, 5*time.Second, 5*time.Millisecond)
}

// The server pings: a device that answers stays connected over many
// intervals, one that stops reading (so never answers) is disconnected
// within about two intervals.
func TestDeviceConnectPings(t *testing.T) {
	const interval = 50 * time.Millisecond
	e := newDCEnv(t, fakemender.Options{DeviceConnectPingInterval: interval})

	var pings atomic.Int32
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + pathDeviceConnect
	live, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPHeader:     http.Header{"Authorization": {"Bearer " + e.devToken}},
		OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = live.CloseNow() })
	readCtx := live.CloseRead(t.Context()) // answers pings
	require.Eventually(t, func() bool { return pings.Load() >= 5 }, 5*time.Second, interval/5, "the server pings at its interval")
	require.NoError(t, readCtx.Err(), "an answering device stays connected")
	_, st := e.status(t)
	assert.Equal(t, fakemender.DeviceConnectConnected, st.Status)
	require.NoError(t, live.Close(websocket.StatusNormalClosure, ""))

	// This client never reads, so it never answers a ping.
	_, _, err = e.dial(t, pathDeviceConnect, e.devToken)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, st = e.status(t)
		return st.Status == fakemender.DeviceConnectConnected
	}, 5*time.Second, 5*time.Millisecond)
	start := time.Now()
	require.Eventually(t, func() bool {
		_, st = e.status(t)
		return st.Status == fakemender.DeviceConnectDisconnected
	}, 5*time.Second, 5*time.Millisecond, "a device that never answers pings is disconnected")
	assert.Less(t, time.Since(start), 20*interval)
}

func TestDeviceConnectPingIntervalOption(t *testing.T) {
	_, err := fakemender.New(fakemender.Options{DeviceConnectPingInterval: -time.Second})
	require.Error(t, err)
	assert.True(t, errors.Is(err, fakemender.ErrInvalid))
	assert.Contains(t, err.Error(), "DeviceConnectPingInterval")
}
