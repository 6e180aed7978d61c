package fakemender

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// deviceconnect: the websocket the device's mender-connect keeps open, and
// the management websocket a user (mender-cli terminal) opens to reach it.
// The server relays msgpack ProtoMsg frames between the two as Mender's
// deviceconnect service does (mender-stack.md §5.2): every user frame gets
// the session id and the user id stamped in before it goes to the device;
// device frames are routed to the user by session id, and frames of an
// unknown session are dropped. State is in memory only: a connection does
// not outlive the process.

// RouteDeviceConnect is the Stats route key of the device's deviceconnect
// websocket. A websocket request is counted when it ends, with status 101.
const RouteDeviceConnect = "deviceconnect"

// Deviceconnect paths.
const (
	pathDeviceConnect     = "/api/devices/v1/deviceconnect/connect"
	pathMgmtDeviceConnect = "/api/management/v1/deviceconnect/devices/"
)

// Device statuses of the deviceconnect management API.
const (
	DeviceConnectConnected    = "connected"
	DeviceConnectDisconnected = "disconnected"
)

// DefaultDeviceConnectPingInterval is how often the server pings a
// deviceconnect websocket, as Mender's server does (half its 60 s pong
// wait).
const DefaultDeviceConnectPingInterval = 30 * time.Second

const (
	// deviceConnectSubprotocol is offered on both websockets; clients need
	// not ask for it.
	deviceConnectSubprotocol = "protomsg/msgpack"
	// deviceConnectReadLimit bounds one websocket message.
	deviceConnectReadLimit = 8 << 20
	// deviceConnectWriteTimeout bounds writing one relayed frame; a peer
	// that does not read within it is disconnected.
	deviceConnectWriteTimeout = 10 * time.Second
)

// Protocol numbers of ProtoHdr.Proto.
const (
	ProtoShell        uint16 = 1
	ProtoFileTransfer uint16 = 2
	ProtoPortForward  uint16 = 3
	ProtoMenderClient uint16 = 4
	ProtoControl      uint16 = 0xFFFF
)

// Shell message types (ProtoHdr.MsgType with ProtoShell).
const (
	ShellNew    = "new"
	ShellData   = "shell"
	ShellResize = "resize"
	ShellStop   = "stop"
	ShellPing   = "ping"
	ShellPong   = "pong"
)

// Values of the shell "status" property.
const (
	ShellStatusNormal  = 1
	ShellStatusError   = 2
	ShellStatusControl = 3
)

// ProtoHdr is the header of a deviceconnect message.
type ProtoHdr struct {
	// Proto is the protocol: ProtoShell, ProtoFileTransfer, ... .
	Proto uint16 `msgpack:"proto"`
	// MsgType is the message type within the protocol, e.g. ShellNew.
	MsgType string `msgpack:"typ,omitempty"`
	// SessionID is the session the server made for a user connection.
	SessionID string `msgpack:"sid,omitempty"`
	// Properties are the message's properties, e.g. "user_id",
	// "status", "terminal_width".
	Properties map[string]any `msgpack:"props,omitempty"`
}

// ProtoMsg is one deviceconnect message: one binary websocket frame holding
// its msgpack encoding.
type ProtoMsg struct {
	Header ProtoHdr `msgpack:"hdr"`
	Body   []byte   `msgpack:"body,omitempty"`
}

// DeviceConnectState is the answer of GET
// /api/management/v1/deviceconnect/devices/{id}.
type DeviceConnectState struct {
	DeviceID string `json:"device_id"`
	// Status is DeviceConnectConnected or DeviceConnectDisconnected.
	Status string `json:"status"`
	// CreatedTS is when the device first connected.
	CreatedTS time.Time `json:"created_ts"`
	// UpdatedTS is when the device last connected or disconnected.
	UpdatedTS time.Time `json:"updated_ts"`
}

// deviceConnect is the relay's state. Its zero value is ready to use.
type deviceConnect struct {
	mu       sync.Mutex
	devices  map[string]*dcDevice  // by device id; never removed
	sessions map[string]*dcSession // by session id
}

// dcDevice is one device's deviceconnect record and its current websocket.
type dcDevice struct {
	state DeviceConnectState
	conn  *websocket.Conn // nil while disconnected
}

// dcSession is one user websocket relayed to one device websocket.
type dcSession struct {
	id, userID, deviceID string
	user                 *websocket.Conn
	device               *websocket.Conn // the device connection the session was opened on
	shell                bool            // a shell was started and not yet stopped
}

// DeviceConnectState returns a device's deviceconnect status; ErrNotFound
// when the device never connected.
func (s *Server) DeviceConnectState(deviceID string) (DeviceConnectState, error) {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	d, ok := s.dc.devices[deviceID]
	if !ok {
		return DeviceConnectState{}, ErrNotFound
	}
	return d.state, nil
}

// pingInterval is the server's websocket ping interval.
func (s *Server) pingInterval() time.Duration {
	if s.opts.DeviceConnectPingInterval > 0 {
		return s.opts.DeviceConnectPingInterval
	}
	return DefaultDeviceConnectPingInterval
}

// acceptWebsocket upgrades the request, offering the msgpack subprotocol to
// any origin (devices and mender-cli send none that matters), and sets the
// read limit. On error the answer has been written.
func acceptWebsocket(w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       []string{deviceConnectSubprotocol},
		InsecureSkipVerify: true,
	})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(deviceConnectReadLimit)
	return conn, nil
}

// keepAlive pings conn every interval until ctx ends; a ping that gets no
// pong within the interval closes the connection, which ends its reader.
// The pong is read by the connection's read loop.
func keepAlive(ctx context.Context, conn *websocket.Conn, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := conn.Ping(pctx)
		cancel()
		if err != nil {
			_ = conn.CloseNow()
			return
		}
	}
}

// handleDeviceConnect is the device's GET /api/devices/v1/deviceconnect/connect
// (device JWT checked by ServeHTTP). It marks the device connected, relays
// its frames to the user sessions until the websocket ends, then marks it
// disconnected. A second connection of the same device replaces the first.
func (s *Server) handleDeviceConnect(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	conn, err := acceptWebsocket(w, r)
	if err != nil {
		s.log.Debug("deviceconnect upgrade refused", "device_id", rc.devID, "err", err, "request_id", rc.id)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer func() { _ = conn.CloseNow() }()

	old, ended := s.attachDevice(rc.devID, conn)
	s.log.Info("deviceconnect: device connected", "device_id", rc.devID, "request_id", rc.id)
	if old != nil {
		_ = old.Close(websocket.StatusGoingAway, "replaced by a new connection of the device")
	}
	closeSessions(ended, "device reconnected")
	wg.Go(func() { keepAlive(ctx, conn, s.pingInterval()) })

	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			break
		}
		var m ProtoMsg
		if err := msgpack.Unmarshal(data, &m); err != nil {
			s.log.Info("deviceconnect: malformed message from device, closing", "device_id", rc.devID, "err", err)
			_ = conn.Close(websocket.StatusUnsupportedData, "malformed message")
			break
		}
		sess := s.deviceSession(conn, m)
		if sess == nil {
			s.log.Debug("deviceconnect: message for no session dropped", "device_id", rc.devID,
				"proto", m.Header.Proto, "typ", m.Header.MsgType, "sid", m.Header.SessionID)
			continue
		}
		if err := writeFrame(ctx, sess.user, data); err != nil {
			s.log.Info("deviceconnect: user does not read, closing its session", "session_id", sess.id, "err", err)
			_ = sess.user.CloseNow()
		}
	}
	ended = s.detachDevice(rc.devID, conn)
	closeSessions(ended, "device disconnected")
	s.log.Info("deviceconnect: device disconnected", "device_id", rc.devID, "request_id", rc.id)
}

// attachDevice records conn as the device's connection and returns the one
// it replaces and the sessions opened on that one.
func (s *Server) attachDevice(devID string, conn *websocket.Conn) (*websocket.Conn, []*dcSession) {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	if s.dc.devices == nil {
		s.dc.devices = map[string]*dcDevice{}
	}
	now := s.now().UTC()
	d := s.dc.devices[devID]
	if d == nil {
		d = &dcDevice{state: DeviceConnectState{DeviceID: devID, CreatedTS: now}}
		s.dc.devices[devID] = d
	}
	old := d.conn
	d.conn = conn
	d.state.Status, d.state.UpdatedTS = DeviceConnectConnected, now
	return old, s.takeSessionsLocked(old)
}

// detachDevice marks the device disconnected when conn is still its
// connection, and returns the sessions opened on conn.
func (s *Server) detachDevice(devID string, conn *websocket.Conn) []*dcSession {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	if d := s.dc.devices[devID]; d != nil && d.conn == conn {
		d.conn = nil
		d.state.Status, d.state.UpdatedTS = DeviceConnectDisconnected, s.now().UTC()
	}
	return s.takeSessionsLocked(conn)
}

// takeSessionsLocked removes and returns the sessions relayed to device
// connection conn. Called with s.dc.mu held.
func (s *Server) takeSessionsLocked(conn *websocket.Conn) []*dcSession {
	if conn == nil {
		return nil
	}
	var out []*dcSession
	for id, sess := range s.dc.sessions {
		if sess.device == conn {
			out = append(out, sess)
			delete(s.dc.sessions, id)
		}
	}
	return out
}

// closeSessions closes the users' websockets of sessions whose device went
// away.
func closeSessions(sessions []*dcSession, reason string) {
	for _, sess := range sessions {
		go func() { _ = sess.user.Close(websocket.StatusGoingAway, reason) }()
	}
}

// deviceSession returns the session a device message belongs to, nil when
// its sid names no session of this device connection. A shell stop from the
// device ends the session's shell.
func (s *Server) deviceSession(conn *websocket.Conn, m ProtoMsg) *dcSession {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	sess := s.dc.sessions[m.Header.SessionID]
	if sess == nil || sess.device != conn {
		return nil
	}
	if m.Header.Proto == ProtoShell && m.Header.MsgType == ShellStop {
		sess.shell = false
	}
	return sess
}

// writeFrame writes one binary frame within deviceConnectWriteTimeout.
func writeFrame(ctx context.Context, conn *websocket.Conn, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, deviceConnectWriteTimeout)
	defer cancel()
	return conn.Write(ctx, websocket.MessageBinary, data)
}

// handleDeviceConnectStatus is GET /api/management/v1/deviceconnect/devices/{id}.
func (s *Server) handleDeviceConnectStatus(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	st, err := s.DeviceConnectState(rc.params["id"])
	if err != nil {
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handleMgmtDeviceConnect is the user's GET
// /api/management/v1/deviceconnect/devices/{id}/connect (management JWT
// checked by ServeHTTP): 404 unless the device is connected, else a
// websocket relayed to the device under a new session id.
func (s *Server) handleMgmtDeviceConnect(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	devID := rc.params["id"]
	userID := s.mgmtSubject(r)
	s.dc.mu.Lock()
	d := s.dc.devices[devID]
	connected := d != nil && d.conn != nil
	s.dc.mu.Unlock()
	if !connected {
		menderapi.WriteError(w, http.StatusNotFound, "device not connected", rc.id)
		return
	}
	conn, err := acceptWebsocket(w, r)
	if err != nil {
		s.log.Debug("deviceconnect management upgrade refused", "device_id", devID, "err", err, "request_id", rc.id)
		return
	}
	defer func() { _ = conn.CloseNow() }()
	sess := s.openSession(devID, userID, conn)
	if sess == nil {
		_ = conn.Close(websocket.StatusGoingAway, "device disconnected")
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	s.log.Info("deviceconnect: session opened", "device_id", devID, "session_id", sess.id, "user_id", userID, "request_id", rc.id)
	wg.Go(func() { keepAlive(ctx, conn, s.pingInterval()) })

	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			break
		}
		var m ProtoMsg
		if err := msgpack.Unmarshal(data, &m); err != nil {
			s.log.Info("deviceconnect: malformed message from user, closing", "session_id", sess.id, "err", err)
			_ = conn.Close(websocket.StatusUnsupportedData, "malformed message")
			break
		}
		out, err := s.stampUserMessage(sess, m)
		if err != nil {
			s.log.Error("deviceconnect: encode message", "session_id", sess.id, "err", err)
			break
		}
		if err := writeFrame(ctx, sess.device, out); err != nil {
			s.log.Info("deviceconnect: device does not read, closing the session", "session_id", sess.id, "err", err)
			break
		}
	}
	shell := s.closeSession(sess)
	if shell {
		s.stopShell(sess)
	}
	s.log.Info("deviceconnect: session closed", "device_id", devID, "session_id", sess.id, "request_id", rc.id)
}

// openSession registers a new session of user conn on the device's current
// connection; nil when the device disconnected meanwhile.
func (s *Server) openSession(devID, userID string, conn *websocket.Conn) *dcSession {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	d := s.dc.devices[devID]
	if d == nil || d.conn == nil {
		return nil
	}
	if s.dc.sessions == nil {
		s.dc.sessions = map[string]*dcSession{}
	}
	sess := &dcSession{id: newUUID(), userID: userID, deviceID: devID, user: conn, device: d.conn}
	s.dc.sessions[sess.id] = sess
	return sess
}

// closeSession removes the session and reports whether a shell was still
// running in it.
func (s *Server) closeSession(sess *dcSession) bool {
	s.dc.mu.Lock()
	defer s.dc.mu.Unlock()
	if s.dc.sessions[sess.id] != sess {
		return false // the device went away first
	}
	delete(s.dc.sessions, sess.id)
	return sess.shell
}

// stampUserMessage sets the session id and the user id of a user message,
// notes shell starts and stops, and encodes it for the device.
func (s *Server) stampUserMessage(sess *dcSession, m ProtoMsg) ([]byte, error) {
	m.Header.SessionID = sess.id
	if m.Header.Properties == nil {
		m.Header.Properties = map[string]any{}
	}
	m.Header.Properties["user_id"] = sess.userID
	if m.Header.Proto == ProtoShell {
		s.dc.mu.Lock()
		switch m.Header.MsgType {
		case ShellNew:
			sess.shell = true
		case ShellStop:
			sess.shell = false
		}
		s.dc.mu.Unlock()
	}
	return msgpack.Marshal(&m)
}

// stopShell tells the device that the user of a session with a running
// shell went away, as Mender's server does.
func (s *Server) stopShell(sess *dcSession) {
	data, err := msgpack.Marshal(&ProtoMsg{
		Header: ProtoHdr{Proto: ProtoShell, MsgType: ShellStop, SessionID: sess.id,
			Properties: map[string]any{"status": ShellStatusError, "user_id": sess.userID}},
		Body: []byte("user disconnected"),
	})
	if err != nil {
		s.log.Error("deviceconnect: encode shell stop", "session_id", sess.id, "err", err)
		return
	}
	// The request's context is done once the user went away; the write is
	// bounded by writeFrame's own timeout.
	if err := writeFrame(context.Background(), sess.device, data); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Debug("deviceconnect: shell stop not delivered", "session_id", sess.id, "err", err)
	}
}

// mgmtSubject returns the user id (sub) of the request's management token,
// which ServeHTTP has verified; "" if it does not parse.
func (s *Server) mgmtSubject(r *http.Request) string {
	tok, err := bearer(r)
	if err != nil {
		return ""
	}
	c, err := s.key.verify(tok)
	if err != nil {
		return ""
	}
	return c.Subject
}
