package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// PortsPerSourceAddr is about how many connections one source address can
// hold open to one server address: the ephemeral port range of a Linux
// host (32768-60999) less a margin for the other processes.
const PortsPerSourceAddr = 28000

// FileReserve is how many descriptors DefaultMaxConns leaves to the
// process itself when it derives the connection cap from the open-file
// limit: standard streams, the report and log files, the credential cache
// read at start, the runtime's network poller and a profile or metrics
// listener. Without the reserve, the last device connection would make
// writing the report fail.
const FileReserve = 256

// DefaultMaxConns is the connection cap Options.MaxConns 0 stands for:
// the open-file soft limit less FileReserve, and at most
// PortsPerSourceAddr per source address (sourceAddrs 0 counts as the one
// default address). It is at least 1.
func DefaultMaxConns(softLimit uint64, sourceAddrs int) int {
	n := int64(PortsPerSourceAddr) * int64(max(sourceAddrs, 1))
	if softLimit > 0 {
		n = min(n, int64(min(softLimit, 1<<40))-FileReserve)
	}
	return int(max(n, 1))
}

// ParseSourceIPs parses the --source-ips value: a comma-separated list of
// IPv4 or IPv6 addresses, ranges within one /24 ("127.0.0.2-127.0.0.65")
// and CIDR prefixes ("127.0.1.0/26", every address of it, at most 65,536).
// Duplicates are an error: each address is one slot of the spread.
func ParseSourceIPs(s string) ([]netip.Addr, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("source addresses %q: %w: "+format, append([]any{s, ErrInvalid}, a...)...)
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) error {
		if seen[a] {
			return bad("%s is given twice", a)
		}
		if len(out) >= 1<<16 {
			return bad("more than 65536 addresses")
		}
		seen[a] = true
		out = append(out, a)
		return nil
	}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		switch {
		case part == "":
			return nil, bad("empty entry: want a comma list of addresses, ranges a.b.c.d-a.b.c.e or prefixes a.b.c.d/n")
		case strings.Contains(part, "/"):
			p, err := netip.ParsePrefix(part)
			if err != nil {
				return nil, bad("%q is not a prefix such as 127.0.1.0/26", part)
			}
			p = p.Masked()
			if p.Addr().BitLen()-p.Bits() > 16 {
				return nil, bad("prefix %s holds more than 65536 addresses: use a longer prefix", p)
			}
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				if err := add(a); err != nil {
					return nil, err
				}
			}
		case strings.Contains(part, "-"):
			lo, hi, _ := strings.Cut(part, "-")
			from, err1 := netip.ParseAddr(strings.TrimSpace(lo))
			to, err2 := netip.ParseAddr(strings.TrimSpace(hi))
			if err1 != nil || err2 != nil || !from.Is4() || !to.Is4() {
				return nil, bad("range %q: want two IPv4 addresses such as 127.0.0.2-127.0.0.65", part)
			}
			f4, t4 := from.As4(), to.As4()
			if f4[0] != t4[0] || f4[1] != t4[1] || f4[2] != t4[2] || f4[3] > t4[3] {
				return nil, bad("range %q: both ends must be in one /24, the first not above the last", part)
			}
			for a := from; ; a = a.Next() {
				if err := add(a); err != nil {
					return nil, err
				}
				if a == to {
					break
				}
			}
		default:
			a, err := netip.ParseAddr(part)
			if err != nil {
				return nil, bad("%q is not an IP address", part)
			}
			if err := add(a.Unmap()); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// CheckSourceIPs returns an error naming the first address of as that
// cannot be a source address towards serverURL: a loopback server is
// reachable only from loopback addresses, any other one not from them,
// and both must be of one IP version. A server given by name other than
// localhost is left to the kernel at dial time.
func CheckSourceIPs(as []netip.Addr, serverURL string) error {
	u, err := url.Parse(serverURL)
	if err != nil || len(as) == 0 {
		return nil // New reports a bad URL on its own
	}
	host := u.Hostname()
	server, err := netip.ParseAddr(host)
	if err != nil {
		if !strings.EqualFold(host, "localhost") {
			return nil
		}
		server = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	for _, a := range as {
		var why string
		switch {
		case !a.IsValid() || a.IsUnspecified() || a.IsMulticast():
			why = "is not a unicast address"
		case server.IsLoopback() && !a.IsLoopback():
			why = fmt.Sprintf("is not a loopback address, but the server %s is: use 127.x.y.z addresses", host)
		case !server.IsLoopback() && a.IsLoopback():
			why = fmt.Sprintf("is a loopback address, but the server %s is not: use addresses of this host's network interfaces", host)
		case server.Unmap().Is4() != a.Is4():
			why = fmt.Sprintf("and the server %s are not of one IP version", host)
		}
		if why != "" {
			return fmt.Errorf("source address %s %s: %w", a, why, ErrInvalid)
		}
	}
	return nil
}

// connPool opens the fleet's connections: from the device's source
// address, within the connection cap, tracked per device so that a step's
// end or a reconnect storm can close them, and counted (open, waiting,
// bytes) for the progress and the report.
type connPool struct {
	f       *Fleet
	dialers []*net.Dialer // one per source address; one default dialer when none is set
	slots   chan struct{} // one token per open connection; nil means no cap
	// idle lists the devices that ended their steps holding kept-alive
	// connections, oldest first; a device waiting for a slot closes the
	// connections of the oldest one. nil without a cap or keep-alive.
	idle chan *device

	open    atomic.Int64
	waiting atomic.Int64
	// waits counts the dials that had to wait for a slot.
	waits atomic.Uint64
}

// dialTimeout and dialKeepAlive are the client's own dialer settings.
const (
	dialTimeout   = 30 * time.Second
	dialKeepAlive = 30 * time.Second
)

func newConnPool(f *Fleet, sources []netip.Addr, maxConns, devices int) *connPool {
	p := &connPool{f: f}
	if maxConns > 0 {
		p.slots = make(chan struct{}, maxConns)
		if f.opts.KeepAlive {
			p.idle = make(chan *device, devices)
		}
	}
	if len(sources) == 0 {
		p.dialers = []*net.Dialer{{Timeout: dialTimeout, KeepAlive: dialKeepAlive}}
	}
	for _, a := range sources {
		p.dialers = append(p.dialers, &net.Dialer{Timeout: dialTimeout, KeepAlive: dialKeepAlive,
			LocalAddr: &net.TCPAddr{IP: a.AsSlice(), Zone: a.Zone()}})
	}
	return p
}

// errCapWait ends a dial that waited for a connection slot until its
// request's deadline or cancellation.
var errCapWait = errors.New("waited for a free connection slot (--max-conns) until the request ended")

// acquire takes a connection slot, waiting while the cap is reached. With
// keep-alive, idle connections give way first: the waiting device closes
// those of the device idle the longest, as a pool evicts its oldest idle
// connection.
func (p *connPool) acquire(ctx context.Context) error {
	if p.slots == nil {
		return nil
	}
	select {
	case p.slots <- struct{}{}:
		return nil
	default:
	}
	p.waits.Add(1)
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	for {
		select {
		case p.slots <- struct{}{}:
			return nil
		case d := <-p.idle:
			d.evict()
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errCapWait, ctx.Err())
		}
	}
}

// park lists d as idle with kept-alive connections (see connPool.idle);
// d.mu is held.
func (p *connPool) park(d *device) {
	if p.idle == nil || d.parked || len(d.conns) == 0 {
		return
	}
	select {
	case p.idle <- d:
		d.parked = true
	default: // cannot happen: the list has room for every device
	}
}

// evict closes the connections of a parked device, unless a step of it
// runs again (it is parked anew when that step ends).
func (d *device) evict() {
	d.mu.Lock()
	d.parked = false
	if d.running > 0 {
		d.mu.Unlock()
		return
	}
	tr, conns := d.detach()
	d.mu.Unlock()
	closeAll(tr, conns)
}

func (p *connPool) release() {
	if p.slots != nil {
		<-p.slots
	}
}

// dial opens one connection of device d.
func (p *connPool) dial(ctx context.Context, d *device, network, addr string) (net.Conn, error) {
	if err := p.acquire(ctx); err != nil {
		return nil, err
	}
	raw, err := p.dialers[d.index%len(p.dialers)].DialContext(ctx, network, addr)
	if err != nil {
		p.release()
		return nil, err
	}
	c := &trackedConn{Conn: raw, pool: p, dev: d}
	p.open.Add(1)
	if !d.addConn(c) {
		// The device was stopped while dialling: no connection survives it.
		_ = c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, context.Canceled)
	}
	return c, nil
}

// trackedConn is one open device connection: it counts its bytes, and
// closing it frees its slot and leaves the device's list.
type trackedConn struct {
	net.Conn
	pool   *connPool
	dev    *device
	closed atomic.Bool
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.pool.f.col.addBytes(uint64(n), 0)
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.pool.f.col.addBytes(0, uint64(n))
	return n, err
}

// Close closes the connection once and frees its slot.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.dev.removeConn(c)
		c.pool.open.Add(-1)
		c.pool.release()
	}
	return err
}

// addConn records c among the device's open connections (d.conns);
// false when the device is stopped and takes no connection any more.
func (d *device) addConn(c *trackedConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return false
	}
	d.conns = append(d.conns, c)
	return true
}

func (d *device) removeConn(c *trackedConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, x := range d.conns {
		if x == c {
			last := len(d.conns) - 1
			d.conns[i] = d.conns[last]
			d.conns[last] = nil
			d.conns = d.conns[:last]
			break
		}
	}
	if len(d.conns) == 0 {
		d.conns = nil // an idle device keeps no backing array
	}
}

// closeConns closes every open connection of the device and returns how
// many there were: requests in flight on them fail as they do when the
// server goes away.
func (d *device) closeConns() int {
	d.mu.Lock()
	conns := append([]*trackedConn(nil), d.conns...)
	d.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	return len(conns)
}

// openConns returns how many connections the device holds.
func (d *device) openConns() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

// formatAddrs writes addresses for a log line, shortening long lists.
func formatAddrs(as []netip.Addr) string {
	if len(as) <= 3 {
		parts := make([]string, len(as))
		for i, a := range as {
			parts[i] = a.String()
		}
		return strings.Join(parts, ",")
	}
	return as[0].String() + ".." + as[len(as)-1].String() + " (" + strconv.Itoa(len(as)) + " addresses)"
}
