// Package serialport opens a serial line for provisioning through
// go.bug.st/serial: raw 8N1 at a given baud rate, with a read timeout so
// that a reader can stop, and an exclusive lock of our own.
package serialport

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"go.bug.st/serial"
)

// DefaultBaud is the line speed both sides use unless told otherwise.
const DefaultBaud = 115200

// portReadTimeout is how long one Read on a port waits; the link then reads
// again, or stops when it was closed.
const portReadTimeout = 200 * time.Millisecond

// Port is a serial line opened for provisioning: raw 8N1 at the baud rate
// given, with an exclusive lock of our own (root ignores the kernel's
// TIOCEXCL, so two provisioning programs on one port would otherwise both
// open it).
type Port struct {
	serial.Port
	path string
	lock *os.File
}

// Open opens the serial port at path. Errors are one line naming the
// port and the fix.
func Open(path string, baud int) (*Port, error) {
	if baud <= 0 {
		return nil, fmt.Errorf("baud rate %d: want a positive number such as %d", baud, DefaultBaud)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("serial port %s does not exist: check the port name (e.g. /dev/ttyS0, /dev/ttyAMA0, /dev/ttyUSB0) and that the adapter is plugged in", path)
	}
	lock, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, portError(path, baud, err)
	}
	ok, err := tryLockFD(lock)
	if err != nil || !ok {
		lock.Close()
		if err == nil {
			return nil, fmt.Errorf("serial port %s is busy: another provisioning program has it open (find it with: fuser %s)", path, path)
		}
		return nil, fmt.Errorf("serial port %s: lock: %w", path, err)
	}
	p, err := serial.Open(path, &serial.Mode{BaudRate: baud, DataBits: 8, Parity: serial.NoParity, StopBits: serial.OneStopBit})
	if err != nil {
		lock.Close()
		return nil, portError(path, baud, err)
	}
	if err := p.SetReadTimeout(portReadTimeout); err != nil {
		p.Close()
		lock.Close()
		return nil, fmt.Errorf("serial port %s: set read timeout: %w", path, err)
	}
	_ = p.ResetInputBuffer() // what an earlier program left unread is stale
	return &Port{Port: p, path: path, lock: lock}, nil
}

// Path returns the port's path.
func (p *Port) Path() string { return p.path }

// Close closes the port and releases the lock.
func (p *Port) Close() error {
	err := p.Port.Close()
	_ = p.lock.Close()
	return err
}

func portError(path string, baud int, err error) error {
	var pe *serial.PortError
	if errors.As(err, &pe) {
		switch pe.Code() {
		case serial.PortBusy:
			return fmt.Errorf("serial port %s is busy: another program has it open (find it with: fuser %s)", path, path)
		case serial.PortNotFound:
			return fmt.Errorf("serial port %s does not exist: check the port name and that the adapter is plugged in", path)
		case serial.PermissionDenied:
			return fmt.Errorf("no permission to open serial port %s: run as root or add the user to the dialout group", path)
		case serial.InvalidSpeed:
			return fmt.Errorf("serial port %s does not support %d baud: use a standard rate such as %d", path, baud, DefaultBaud)
		case serial.InvalidSerialPort:
			return fmt.Errorf("%s is not a serial port: %v", path, pe)
		}
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("no permission to open serial port %s: run as root or add the user to the dialout group", path)
	}
	return fmt.Errorf("serial port %s: %w", path, err)
}
