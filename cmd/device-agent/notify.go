package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// notifier sends service state changes to systemd (sd_notify(3)) over the
// datagram socket in $NOTIFY_SOCKET, for units with Type=notify: READY=1
// once the daemon is up, RELOADING=1 and READY=1 around a reload,
// STOPPING=1 at shutdown, STATUS=... for `systemctl status`. A nil
// notifier (no $NOTIFY_SOCKET) sends nothing.
type notifier struct {
	addr *net.UnixAddr
}

// newNotifier returns the notifier for socket, the value of NOTIFY_SOCKET:
// an absolute path, or an abstract socket name starting with '@'. "" gives
// nil (not started by systemd, or without Type=notify).
func newNotifier(socket string) (*notifier, error) {
	switch {
	case socket == "":
		return nil, nil
	case strings.HasPrefix(socket, "/"), strings.HasPrefix(socket, "@") && len(socket) > 1:
		// Go maps a leading '@' to the abstract namespace (a leading NUL).
		return &notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}, nil
	}
	return nil, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or an abstract socket name starting with '@'; readiness is not reported", socket)
}

// send sends one datagram with the lines of state ("READY=1", ...).
func (n *notifier) send(state ...string) error {
	if n == nil {
		return nil
	}
	msg := strings.Join(state, "\n") + "\n"
	if strings.ContainsRune(msg, 0) {
		return errors.New("sd_notify: message holds a NUL byte")
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", n.addr.Name, err)
	}
	return nil
}

// status returns a STATUS= line: one line, at most 200 bytes.
func notifyStatus(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return "STATUS=" + s
}

// notifyReloading returns the lines that start a reload: RELOADING=1 and,
// where the clock is available, MONOTONIC_USEC (systemd ≥ 253 uses it to
// match the reload to the request).
func notifyReloading() []string {
	lines := []string{"RELOADING=1"}
	if us, ok := monotonicMicros(); ok {
		lines = append(lines, "MONOTONIC_USEC="+strconv.FormatUint(us, 10))
	}
	return lines
}
