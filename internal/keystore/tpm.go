package keystore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// TPM errors callers branch on with errors.Is.
var (
	// ErrNoTPM means no TPM could be reached: the device does not exist, is
	// not a character device, or nothing answers TPM commands at the
	// configured tcp:// address. The error names every device tried.
	ErrNoTPM = errors.New("no TPM")
	// ErrInvalidHandle means a "handle:" key reference that is empty, not a
	// number, or not a persistent handle (0x81000000-0x81FFFFFF).
	ErrInvalidHandle = errors.New("invalid TPM handle")
	// ErrForeignObject means the persistent handle holds an object that this
	// agent did not create (its public area does not match the template
	// Generate uses). Generate never evicts such an object, even with Force.
	ErrForeignObject = errors.New("the TPM handle holds an object this agent did not create")
	// ErrExists means Generate found a key at the target (file or handle)
	// and GenerateOptions.Force was not set.
	ErrExists = errors.New("key already exists")
)

// TPM device names.
const (
	// DefaultTPMDevice is the kernel's TPM resource manager, tried first when
	// no device is configured.
	DefaultTPMDevice = "/dev/tpmrm0"
	// FallbackTPMDevice is the raw TPM device, tried when DefaultTPMDevice
	// does not exist (kernels before 4.12).
	FallbackTPMDevice = "/dev/tpm0"
	// tcpScheme prefixes the address of a TPM command port, such as swtpm's
	// "socket --server type=tcp" port.
	tcpScheme = "tcp://"
)

const (
	// tpmCommandTimeout bounds one command on a tcp:// TPM. RSA key creation
	// is the slowest command; real chips take seconds, not minutes.
	tpmCommandTimeout = 2 * time.Minute
	// tpmDialTimeout bounds connecting to a tcp:// TPM.
	tpmDialTimeout = 10 * time.Second
	// tpmBusyTimeout is how long opening a TPM without resource manager
	// waits while another process holds it.
	tpmBusyTimeout = 5 * time.Second
	// maxTPMResponse bounds a response read from a socket; TPMs answer with
	// at most a few KiB (TPM_PT_MAX_RESPONSE_SIZE).
	maxTPMResponse = 1 << 16
	// tpmHeaderSize is the size of a TPM response header: tag, size, code.
	tpmHeaderSize = 10
)

// TPMOptions configure OpenTPM. The zero value logs nothing.
type TPMOptions struct {
	// Logger receives debug messages about opening the TPM. Nil discards them.
	Logger *slog.Logger
}

// TPM is an open TPM 2.0. Every command sequence sent through it (one
// signature, or the several commands of Generate) holds its mutex, so all
// use of one TPM is serialised, and the transient objects a sequence loads
// are flushed before the mutex is released. Its methods are safe for
// concurrent use.
//
// A TPM behind the kernel resource manager (/dev/tpmrm*) or given to NewTPM
// keeps its connection open until Close. A TPM without a resource manager
// (/dev/tpm*, or a tcp:// command port such as swtpm's) serves one client at
// a time, so it is connected for each command sequence and disconnected
// after it: the agent, `device-agent check` and `device-agent keygen` can
// then take turns.
type TPM struct {
	name string
	log  *slog.Logger
	// dial connects for one command sequence; nil means conn is held open.
	dial func(ctx context.Context) (transport.TPMCloser, error)
	rm   bool // behind a resource manager

	mu     sync.Mutex // held for every command sequence; guards the fields below
	conn   transport.TPM
	closer io.Closer // closes conn on Close; nil when the caller owns it
	closed bool
}

// NewTPM wraps an open TPM connection, such as a simulator's, under name
// (used in messages). Close does not close conn: the caller owns it. The
// connection is assumed to have no resource manager, so Generate flushes
// everything it loads.
func NewTPM(conn transport.TPM, name string, opts TPMOptions) *TPM {
	return &TPM{name: name, log: loggerOr(opts.Logger), conn: conn}
}

// OpenTPM opens the TPM named by device: "" tries DefaultTPMDevice and then
// FallbackTPMDevice; a path opens that character device; "tcp://HOST:PORT"
// connects to a TPM command port with raw TPM framing (swtpm's
// `--server type=tcp` port; its control port is never used). It sends one
// harmless command to check that a TPM answers, and TPM2_Startup when the
// TPM reports it was never started. The TPM is closed by Close.
func OpenTPM(ctx context.Context, device string, opts TPMOptions) (*TPM, error) {
	log := loggerOr(opts.Logger)
	if device != "" {
		return openTPM(ctx, device, log)
	}
	t, err := openTPM(ctx, DefaultTPMDevice, log)
	if !errors.Is(err, fs.ErrNotExist) {
		return t, err
	}
	t, err = openTPM(ctx, FallbackTPMDevice, log)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: neither %s nor %s exists: enable the kernel TPM driver, or set TPM.Device in mender.conf (e.g. tcp://127.0.0.1:2321 for swtpm)",
			ErrNoTPM, DefaultTPMDevice, FallbackTPMDevice)
	}
	return t, err
}

func openTPM(ctx context.Context, device string, log *slog.Logger) (*TPM, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open TPM %s: %w", device, err)
	}
	t := &TPM{name: device, log: log}
	if addr, ok := strings.CutPrefix(device, tcpScheme); ok {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("open TPM %s: %w: want tcp://HOST:PORT, e.g. tcp://127.0.0.1:2321 (%w)", device, ErrNoTPM, err)
		}
		t.dial = func(ctx context.Context) (transport.TPMCloser, error) { return dialTCPTPM(ctx, addr) }
	} else {
		if !filepath.IsAbs(device) {
			return nil, fmt.Errorf("open TPM %q: %w: want a device path such as %s or tcp://HOST:PORT", device, ErrNoTPM, DefaultTPMDevice)
		}
		fi, err := os.Stat(device)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("open TPM: %w: %s does not exist: check TPM.Device in mender.conf and that the kernel TPM driver is loaded (%w)", ErrNoTPM, device, err)
			}
			return nil, fmt.Errorf("open TPM %s: %w", device, err)
		}
		if fi.Mode()&fs.ModeCharDevice == 0 {
			return nil, fmt.Errorf("open TPM %s: %w: not a character device: point TPM.Device at %s, %s or tcp://HOST:PORT", device, ErrNoTPM, DefaultTPMDevice, FallbackTPMDevice)
		}
		if strings.HasPrefix(filepath.Base(device), "tpmrm") {
			conn, err := linuxtpm.Open(device)
			if err != nil {
				return nil, fmt.Errorf("open TPM %s: %w%s", device, err, permissionHint(err))
			}
			t.conn, t.closer, t.rm = conn, conn, true
		} else {
			t.dial = func(ctx context.Context) (transport.TPMCloser, error) { return openTPMDevice(ctx, device) }
		}
	}
	if err := t.probe(ctx); err != nil {
		_ = t.Close()
		return nil, err
	}
	log.Debug("opened TPM", "tpm", device, "resource_manager", t.rm)
	return t, nil
}

// probe checks that a TPM answers, starting it when it was never started
// (a TPM simulator or swtpm without --flags startup-clear).
func (t *TPM) probe(ctx context.Context) error {
	err := t.do(ctx, func(tp transport.TPM) error {
		_, err := getProperties(tp)
		if errors.Is(err, tpm2.TPMRCInitialize) {
			t.log.Debug("starting TPM (TPM2_Startup)", "tpm", t.name)
			if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(tp); err != nil {
				return fmt.Errorf("TPM2_Startup: %w", err)
			}
			_, err = getProperties(tp)
		}
		return err
	})
	switch {
	case errors.Is(err, ErrNoTPM), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("open TPM %s: %w", t.name, err)
	case err != nil:
		return fmt.Errorf("open TPM %s: %w: it does not answer TPM 2.0 commands: %w", t.name, ErrNoTPM, err)
	}
	return nil
}

// Name returns the device the TPM was opened as, e.g. "/dev/tpmrm0" or
// "tcp://127.0.0.1:2321".
func (t *TPM) Name() string { return t.name }

// Close releases the TPM: later commands fail with ErrClosed. It waits for a
// running command sequence and is idempotent.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.closer != nil {
		if err := t.closer.Close(); err != nil {
			return fmt.Errorf("close TPM %s: %w", t.name, err)
		}
	}
	return nil
}

// do runs one command sequence with the TPM to itself.
func (t *TPM) do(ctx context.Context, fn func(transport.TPM) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("TPM %s: %w", t.name, ErrClosed)
	}
	if t.dial == nil {
		return fn(t.conn)
	}
	conn, err := t.dial(ctx)
	if err != nil {
		return err
	}
	err = fn(conn)
	if cerr := conn.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("disconnect from TPM %s: %w", t.name, cerr)
	}
	return err
}

// explain wraps a TPM error with the operation, the device and, for errors
// with a known cause, what to do.
func (t *TPM) explain(op string, err error) error {
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrNoTPM) {
		return fmt.Errorf("%s: %w", op, err)
	}
	hint := ""
	switch {
	case errors.Is(err, tpm2.TPMRCObjectMemory), errors.Is(err, tpm2.TPMRCSessionMemory):
		hint = ": the TPM has no free object slots; without a resource manager (swtpm, /dev/tpm0) a crashed client may have left objects loaded: restart the TPM or flush them (tpm2_flushcontext -t)"
	case errors.Is(err, tpm2.TPMRCBadAuth), errors.Is(err, tpm2.TPMRCAuthFail):
		hint = ": the owner hierarchy or the key has a password; this agent works only with empty authorization values"
	case errors.Is(err, tpm2.TPMRCLockout):
		hint = ": the TPM is in dictionary-attack lockout: wait for the lockout to expire or reset it (tpm2_dictionarylockout -c)"
	case errors.Is(err, tpm2.TPMRCHierarchy):
		hint = ": the owner hierarchy is disabled: enable it in the firmware setup"
	}
	return fmt.Errorf("%s in TPM %s: %w%s", op, t.name, err, hint)
}

// TPMInfo describes a TPM for diagnostics such as `device-agent check`.
type TPMInfo struct {
	// Device is the device the TPM was opened as.
	Device string
	// ResourceManager is true for /dev/tpmrm* (the kernel flushes what a
	// crashed process left loaded).
	ResourceManager bool
	// Manufacturer is the TCG vendor ID, e.g. "IFX", "STM", "INTC", "IBM".
	Manufacturer string
	// Vendor is the vendor's free-form model string.
	Vendor string
	// Firmware is the firmware version as four dotted numbers.
	Firmware string
	// TransientObjects is the number of transient objects loaded (through a
	// resource manager: this process's only). Non-zero between commands on a
	// TPM without resource manager means some client leaked objects.
	TransientObjects int
	// PersistentHandles are the persistent objects in the TPM.
	PersistentHandles []uint32
}

// Info reads the TPM's manufacturer, firmware version and handle lists.
func (t *TPM) Info(ctx context.Context) (TPMInfo, error) {
	info := TPMInfo{Device: t.name, ResourceManager: t.rm}
	err := t.do(ctx, func(tp transport.TPM) error {
		props, err := getProperties(tp)
		if err != nil {
			return err
		}
		info.Manufacturer = vendorString(props[tpm2.TPMPTManufacturer])
		info.Vendor = vendorString(props[tpm2.TPMPTVendorString1], props[tpm2.TPMPTVendorString2],
			props[tpm2.TPMPTVendorString3], props[tpm2.TPMPTVendorString4])
		fw1, fw2 := props[tpm2.TPMPTFirmwareVersion1], props[tpm2.TPMPTFirmwareVersion2]
		info.Firmware = fmt.Sprintf("%d.%d.%d.%d", fw1>>16, fw1&0xffff, fw2>>16, fw2&0xffff)
		transient, err := listHandles(tp, tpm2.TPMHTTransient)
		if err != nil {
			return err
		}
		info.TransientObjects = len(transient)
		info.PersistentHandles, err = listHandles(tp, tpm2.TPMHTPersistent)
		return err
	})
	if err != nil {
		return TPMInfo{}, t.explain("read TPM properties", err)
	}
	return info, nil
}

// getProperties reads the manufacturer, vendor and firmware properties.
func getProperties(tp transport.TPM) (map[tpm2.TPMPT]uint32, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTManufacturer),
		PropertyCount: uint32(tpm2.TPMPTFirmwareVersion2-tpm2.TPMPTManufacturer) + 1,
	}.Execute(tp)
	if err != nil {
		return nil, err
	}
	list, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return nil, err
	}
	props := make(map[tpm2.TPMPT]uint32, len(list.TPMProperty))
	for _, p := range list.TPMProperty {
		props[p.Property] = p.Value
	}
	return props, nil
}

// listHandles lists the handles of one type (transient or persistent).
func listHandles(tp transport.TPM, ht tpm2.TPMHT) ([]uint32, error) {
	var out []uint32
	next := uint32(ht) << 24
	for range 64 { // a TPM holds far fewer handles; this only bounds a misbehaving one
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: next, PropertyCount: 64}.Execute(tp)
		if err != nil {
			return nil, err
		}
		list, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, err
		}
		for _, h := range list.Handle {
			if uint32(h)>>24 != uint32(ht) {
				return out, nil
			}
			out = append(out, uint32(h))
		}
		if !rsp.MoreData || len(list.Handle) == 0 {
			return out, nil
		}
		next = uint32(list.Handle[len(list.Handle)-1]) + 1
	}
	return out, nil
}

// vendorString decodes TPM properties that hold four ASCII characters each.
func vendorString(words ...uint32) string {
	b := make([]byte, 0, 4*len(words))
	for _, w := range words {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, string(b)))
}

func loggerOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func permissionHint(err error) string {
	if errors.Is(err, fs.ErrPermission) {
		return ": run as root or give this user access to the TPM device (usually the tss group)"
	}
	return ""
}

// openTPMDevice opens a TPM character device without resource manager for
// one command sequence, waiting up to tpmBusyTimeout while another process
// holds it (the kernel allows one open at a time).
func openTPMDevice(ctx context.Context, path string) (transport.TPMCloser, error) {
	deadline := time.Now().Add(tpmBusyTimeout)
	for {
		conn, err := linuxtpm.Open(path)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("open TPM %s: %w%s", path, err, permissionHint(err))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("open TPM %s: busy for %v: another process holds it (use %s, the resource manager, to share the TPM): %w",
				path, tpmBusyTimeout, DefaultTPMDevice, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open TPM %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tcpTPM sends raw TPM commands over one TCP connection for one command
// sequence. Unlike go-tpm's socket transports it reads a response with
// io.ReadFull, so a response split over several reads is not truncated.
type tcpTPM struct {
	ctx  context.Context // of the command sequence; cancelling it aborts I/O
	addr string
	conn net.Conn
}

func dialTCPTPM(ctx context.Context, addr string) (*tcpTPM, error) {
	d := net.Dialer{Timeout: tpmDialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to TPM tcp://%s: %w: %w: start the TPM (swtpm socket --tpm2 --server type=tcp,port=...) or fix TPM.Device", addr, ErrNoTPM, err)
	}
	return &tcpTPM{ctx: ctx, addr: addr, conn: conn}, nil
}

// Send implements transport.TPM.
func (c *tcpTPM) Send(cmd []byte) ([]byte, error) {
	deadline := time.Now().Add(tpmCommandTimeout)
	if d, ok := c.ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("TPM tcp://%s: %w", c.addr, err)
	}
	stop := context.AfterFunc(c.ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rsp, err := c.exchange(cmd)
	if err != nil && c.ctx.Err() != nil {
		return nil, fmt.Errorf("TPM tcp://%s: %w", c.addr, c.ctx.Err())
	}
	return rsp, err
}

func (c *tcpTPM) exchange(cmd []byte) ([]byte, error) {
	if _, err := c.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("send TPM command to tcp://%s: %w", c.addr, err)
	}
	rsp, err := readTPMResponse(c.conn)
	if err != nil {
		return nil, fmt.Errorf("read TPM response from tcp://%s: %w", c.addr, err)
	}
	return rsp, nil
}

// Close implements io.Closer.
func (c *tcpTPM) Close() error { return c.conn.Close() }

// errBadResponse marks a TPM response whose header makes no sense.
var errBadResponse = errors.New("malformed TPM response")

// readTPMResponse reads one TPM response: a 10-byte header (tag, total
// size, response code) and the rest of the announced size.
func readTPMResponse(r io.Reader) ([]byte, error) {
	hdr := make([]byte, tpmHeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	switch tag := binary.BigEndian.Uint16(hdr); tag {
	case uint16(tpm2.TPMSTNoSessions), uint16(tpm2.TPMSTSessions), 0x00c4: // 0x00c4: TPM 1.2 style answer to a bad tag
	default:
		return nil, fmt.Errorf("%w: tag 0x%04x is not a TPM 2.0 response tag (is this a TPM command port?)", errBadResponse, tag)
	}
	size := binary.BigEndian.Uint32(hdr[2:])
	if size < tpmHeaderSize || size > maxTPMResponse {
		return nil, fmt.Errorf("%w: size %d outside %d..%d", errBadResponse, size, tpmHeaderSize, maxTPMResponse)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r, rsp[tpmHeaderSize:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return rsp, nil
}
