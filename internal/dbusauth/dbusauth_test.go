package dbusauth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/client"
	"github.com/mender-mtls/mtls-agent/internal/dbusauth"
	"github.com/mender-mtls/mtls-agent/internal/dbusauth/dbustest"
	"github.com/mender-mtls/mtls-agent/internal/fakemender"
	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

const forwarderURL = "http://127.0.0.1:45678"

// backend is the fake Mender server with one device client.
type backend struct {
	fake   *fakemender.Server
	srv    *httptest.Server
	client *client.Client
}

func newBackend(t *testing.T) *backend {
	t.Helper()
	fake, err := fakemender.New(fakemender.Options{AutoAccept: true})
	require.NoError(t, err)
	t.Cleanup(func() { fake.Close() })
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	c, err := client.New(client.Options{
		Servers: []string{srv.URL},
		AuthKey: key,
		Identity: func(context.Context) (menderapi.Attributes, error) {
			return menderapi.Attributes{"mac": {"00:11:22:33:44:55"}}, nil
		},
		DeviceType: "test",
	})
	require.NoError(t, err)
	return &backend{fake: fake, srv: srv, client: c}
}

func (b *backend) fetch(ctx context.Context) (string, error) {
	if err := b.client.Authenticate(ctx); err != nil {
		return "", err
	}
	tok, _ := b.client.Session()
	return tok, nil
}

func (b *backend) authRequests() int {
	return b.fake.Stats().Requests[fakemender.RouteAuth]
}

// startService runs the service on bus for the test.
func startService(t *testing.T, bus *dbustest.Bus, fetch func(context.Context) (string, error)) *dbusauth.Service {
	t.Helper()
	s, err := dbusauth.Start(dbusauth.Options{
		Address: bus.Address, Fetch: fetch, ServerURL: forwarderURL,
		RetryBase: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// consumer is a process using the API as mender-update does.
type consumer struct {
	conn    *dbus.Conn
	obj     dbus.BusObject
	signals chan *dbus.Signal
}

func newConsumer(t *testing.T, bus *dbustest.Bus) *consumer {
	t.Helper()
	conn, err := dbus.Connect(bus.Address)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.AddMatchSignal(dbus.WithMatchInterface(dbusauth.Interface), dbus.WithMatchMember(dbusauth.Signal)))
	ch := make(chan *dbus.Signal, 64)
	conn.Signal(ch)
	return &consumer{conn: conn, obj: conn.Object(dbusauth.BusName, dbusauth.ObjectPath), signals: ch}
}

func (c *consumer) get(t *testing.T) (token, url string) {
	t.Helper()
	require.NoError(t, c.obj.CallWithContext(t.Context(), dbusauth.Interface+".GetJwtToken", 0).Store(&token, &url))
	return token, url
}

func (c *consumer) fetch(t *testing.T) bool {
	t.Helper()
	var ok bool
	require.NoError(t, c.obj.CallWithContext(t.Context(), dbusauth.Interface+".FetchJwtToken", 0).Store(&ok))
	return ok
}

// signal waits up to 10s for the next JwtTokenStateChange.
func (c *consumer) signal(t *testing.T) (token, url string) {
	t.Helper()
	select {
	case s := <-c.signals:
		require.Equal(t, dbusauth.Interface+"."+dbusauth.Signal, s.Name)
		require.Equal(t, dbus.ObjectPath(dbusauth.ObjectPath), s.Path)
		require.Len(t, s.Body, 2)
		return s.Body[0].(string), s.Body[1].(string)
	case <-time.After(10 * time.Second):
		t.Fatal("no JwtTokenStateChange within 10s")
		return "", ""
	}
}

// noSignal checks that no signal comes within d.
func (c *consumer) noSignal(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case s := <-c.signals:
		t.Fatalf("unexpected signal %v", s.Body)
	case <-time.After(d):
	}
}

// The method and signal contract, as mender-update uses it: empty strings
// before the first fetch, FetchJwtToken answers true at once, the signal
// carries the new token and the forwarder URL, GetJwtToken then returns
// the same pair.
func TestContract(t *testing.T) {
	bus := dbustest.Start(t)
	b := newBackend(t)
	startService(t, bus, b.fetch)
	c := newConsumer(t, bus)

	token, url := c.get(t)
	assert.Empty(t, token, "no token before a fetch")
	assert.Empty(t, url, "no server URL before a fetch")

	assert.True(t, c.fetch(t))
	token, url = c.signal(t)
	want, _ := b.client.Session()
	require.NotEmpty(t, want)
	assert.Equal(t, want, token, "the signal carries the token the server issued")
	assert.Equal(t, forwarderURL, url, "the server URL is the forwarder's")
	gt, gu := c.get(t)
	assert.Equal(t, token, gt)
	assert.Equal(t, url, gu)

	// A second fetch sends a new auth request and a signal, even when the
	// server answers with the same token.
	assert.True(t, c.fetch(t))
	token2, url2 := c.signal(t)
	assert.NotEmpty(t, token2)
	assert.Equal(t, forwarderURL, url2)
	assert.Equal(t, 2, b.authRequests())
}

// Introspection describes the interface as Mender's XML does.
func TestIntrospection(t *testing.T) {
	bus := dbustest.Start(t)
	startService(t, bus, newBackend(t).fetch)
	c := newConsumer(t, bus)
	var data string
	require.NoError(t, c.obj.CallWithContext(t.Context(), "org.freedesktop.DBus.Introspectable.Introspect", 0).Store(&data))

	type arg struct {
		Type      string `xml:"type,attr"`
		Name      string `xml:"name,attr"`
		Direction string `xml:"direction,attr"`
	}
	type member struct {
		Name string `xml:"name,attr"`
		Args []arg  `xml:"arg"`
	}
	var node struct {
		Interfaces []struct {
			Name    string   `xml:"name,attr"`
			Methods []member `xml:"method"`
			Signals []member `xml:"signal"`
		} `xml:"interface"`
	}
	require.NoError(t, xml.Unmarshal([]byte(data), &node))
	var found bool
	for _, i := range node.Interfaces {
		if i.Name != dbusauth.Interface {
			continue
		}
		found = true
		assert.Equal(t, []member{
			{Name: "GetJwtToken", Args: []arg{{"s", "token", "out"}, {"s", "server_url", "out"}}},
			{Name: "FetchJwtToken", Args: []arg{{"b", "success", "out"}}},
		}, i.Methods)
		assert.Equal(t, []member{{Name: "JwtTokenStateChange", Args: []arg{{"s", "token", ""}, {"s", "server_url", ""}}}}, i.Signals)
	}
	assert.True(t, found, "the introspection must describe %s: %s", dbusauth.Interface, data)
}

// Many concurrent FetchJwtToken calls start one authentication: one auth
// request reaches the server, one signal follows, every call answers true.
func TestFetchSingleFlight(t *testing.T) {
	bus := dbustest.Start(t)
	b := newBackend(t)
	b.fake.AddFault(fakemender.Fault{PathPrefix: menderapi.PathAuthRequests, Delay: 500 * time.Millisecond})
	startService(t, bus, b.fetch)
	c := newConsumer(t, bus)

	var wg sync.WaitGroup
	results := make([]bool, 10)
	for i := range results {
		wg.Go(func() {
			var ok bool
			err := c.obj.CallWithContext(t.Context(), dbusauth.Interface+".FetchJwtToken", 0).Store(&ok)
			assert.NoError(t, err)
			results[i] = ok
		})
	}
	wg.Wait()
	for i, ok := range results {
		assert.True(t, ok, "call %d", i)
	}
	token, _ := c.signal(t)
	assert.NotEmpty(t, token)
	c.noSignal(t, 300*time.Millisecond)
	assert.Equal(t, 1, b.authRequests(), "one authentication for all the calls")
}

// A failed authentication clears the token and signals empty strings; the
// service retries with backoff and signals the token once the server is
// back, without anyone calling FetchJwtToken again (mender-connect never
// does).
func TestFetchFailureSignalsEmptyAndRetries(t *testing.T) {
	bus := dbustest.Start(t)
	b := newBackend(t)
	startService(t, bus, b.fetch)
	c := newConsumer(t, bus)
	require.True(t, c.fetch(t))
	first, _ := c.signal(t)
	require.NotEmpty(t, first)

	b.fake.AddFault(fakemender.Fault{PathPrefix: menderapi.PathAuthRequests, Status: http.StatusServiceUnavailable, Count: 2})
	require.True(t, c.fetch(t))
	for i := range 2 {
		token, url := c.signal(t)
		assert.Empty(t, token, "failure %d: empty token", i+1)
		assert.Empty(t, url, "failure %d: empty server URL", i+1)
	}
	token, url := c.signal(t)
	assert.NotEmpty(t, token, "the retry succeeded")
	assert.Equal(t, forwarderURL, url)
	assert.Equal(t, 4, b.authRequests(), "the first fetch, two failures, one success")
}

// While the server is down, GetJwtToken answers empty strings.
func TestServerDown(t *testing.T) {
	bus := dbustest.Start(t)
	b := newBackend(t)
	b.srv.Close()
	startService(t, bus, b.fetch)
	c := newConsumer(t, bus)
	require.True(t, c.fetch(t))
	token, url := c.signal(t)
	assert.Empty(t, token)
	assert.Empty(t, url)
	token, url = c.get(t)
	assert.Empty(t, token)
	assert.Empty(t, url)
}

// Publish signals a token the agent got on its own, once.
func TestPublish(t *testing.T) {
	bus := dbustest.Start(t)
	s := startService(t, bus, newBackend(t).fetch)
	c := newConsumer(t, bus)
	s.Publish("tok-1")
	token, url := c.signal(t)
	assert.Equal(t, "tok-1", token)
	assert.Equal(t, forwarderURL, url)
	s.Publish("tok-1")
	s.Publish("")
	c.noSignal(t, 200*time.Millisecond)
	gt, _ := c.get(t)
	assert.Equal(t, "tok-1", gt)
}

// A second service on the same bus is refused with the owner named; after
// the first one closes, the name is free again.
func TestNameAlreadyOwned(t *testing.T) {
	bus := dbustest.Start(t)
	b := newBackend(t)
	first, err := dbusauth.Start(dbusauth.Options{Address: bus.Address, Fetch: b.fetch, ServerURL: forwarderURL})
	require.NoError(t, err)

	_, err = dbusauth.Start(dbusauth.Options{Address: bus.Address, Fetch: b.fetch, ServerURL: forwarderURL})
	require.Error(t, err)
	assert.ErrorIs(t, err, dbusauth.ErrNameTaken)
	assert.Regexp(t, `already owned by :1\.\d+ \(PID \d+`, err.Error(), "the error names the owner")
	assert.Contains(t, err.Error(), "stop it first")

	require.NoError(t, first.Close())
	require.NoError(t, first.Close(), "Close is idempotent")
	second, err := dbusauth.Start(dbusauth.Options{Address: bus.Address, Fetch: b.fetch, ServerURL: forwarderURL})
	require.NoError(t, err, "the name is free once the owner closed")
	second.Close()
}

// Without a bus the error says so in one line.
func TestNoBus(t *testing.T) {
	_, err := dbusauth.Start(dbusauth.Options{Address: "unix:path=/nonexistent/dbus/socket",
		Fetch: func(context.Context) (string, error) { return "", nil }, ServerURL: forwarderURL})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connect to the D-Bus system bus at unix:path=/nonexistent/dbus/socket")
	assert.NotContains(t, err.Error(), "\n")

	_, err = dbusauth.Start(dbusauth.Options{ServerURL: forwarderURL})
	assert.ErrorContains(t, err, "Fetch is nil")
	_, err = dbusauth.Start(dbusauth.Options{Fetch: func(context.Context) (string, error) { return "", nil }})
	assert.ErrorContains(t, err, "ServerURL is empty")
}

// Probe reports the owner and what GetJwtToken returns (a fingerprint,
// never the token); a free name and a missing bus are told apart.
func TestProbe(t *testing.T) {
	bus := dbustest.Start(t)
	res, err := dbusauth.Probe(t.Context(), bus.Address)
	require.NoError(t, err)
	assert.False(t, res.Owned)

	s := startService(t, bus, newBackend(t).fetch)
	res, err = dbusauth.Probe(t.Context(), bus.Address)
	require.NoError(t, err)
	assert.True(t, res.Owned)
	assert.Regexp(t, `^:1\.\d+ \(PID \d+`, res.Owner)
	assert.Empty(t, res.Token)
	assert.Empty(t, res.ServerURL)

	s.Publish("secret-token")
	res, err = dbusauth.Probe(t.Context(), bus.Address)
	require.NoError(t, err)
	assert.Equal(t, menderapi.TokenFingerprint("secret-token"), res.Token)
	assert.NotContains(t, res.Token, "secret")
	assert.Equal(t, forwarderURL, res.ServerURL)
	assert.NoError(t, res.CallError)

	_, err = dbusauth.Probe(t.Context(), "unix:path=/nonexistent/bus")
	assert.ErrorContains(t, err, "connect to the D-Bus system bus")
}
