// Package identity produces the device's identity attributes and inventory
// attributes the way Mender does (protocol notes §6, §7.2): by running the
// identity script and the inventory scripts from Mender's data directory and
// parsing their key=value output. Without an identity script it falls back to
// the MAC address of an Ethernet interface: one with a permanent MAC address
// that is up when there is one, else the best there is with a warning (see
// [Identify]); among equals the lowest ifindex, as Mender's stock script
// picks. It knows nothing about HTTP; cmd/ hands [Identify] to the client.
//
// Scripts run directly (no shell) with a timeout; their stdout is bounded and
// the first line of their stderr is kept for error messages.
package identity

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Defaults for Options fields left empty.
const (
	// DefaultDataDir is MENDER_DATA_DIR's default.
	DefaultDataDir = "/usr/share/mender"
	// DefaultSysClassNet is where Linux lists network interfaces.
	DefaultSysClassNet = "/sys/class/net"
	// DefaultTimeout bounds each script run.
	DefaultTimeout = 30 * time.Second

	// IdentityScript is the identity script's path below the data directory.
	IdentityScript = "identity/mender-device-identity"
	// InventoryDir is the inventory scripts' directory below the data directory.
	InventoryDir = "inventory"
	// InventoryPrefix starts the name of every inventory script.
	InventoryPrefix = "mender-inventory-"
)

var (
	// ErrMalformed is wrapped by errors about output that is not key=value lines.
	ErrMalformed = errors.New("malformed key=value output")
	// ErrEmptyOutput is wrapped when the identity script prints no attribute.
	ErrEmptyOutput = errors.New("no attributes in the output")
	// ErrTimeout is wrapped when a script runs longer than Options.Timeout.
	ErrTimeout = errors.New("script timed out")
	// ErrNoIdentity is wrapped when there is no identity script and no
	// Ethernet interface to take a MAC address from.
	ErrNoIdentity = errors.New("no device identity")
)

// Options configures Collect and Inventory. The zero value uses Mender's
// default paths, a 30 s timeout per script and no logging.
type Options struct {
	// DataDir is the MENDER_DATA_DIR value; "" means /usr/share/mender. The
	// identity script is <DataDir>/identity/mender-device-identity and the
	// inventory scripts are <DataDir>/inventory/mender-inventory-*.
	DataDir string
	// Timeout bounds each script run; 0 means 30 s.
	Timeout time.Duration
	// Logger receives debug and info messages; nil discards them.
	Logger *slog.Logger
	// SysClassNet is the sysfs network directory read for the MAC address
	// fallback (type, address, ifindex, addr_assign_type, flags and
	// operstate of each interface); "" means /sys/class/net. Tests point it
	// at a fake tree.
	SysClassNet string
}

func (o Options) dataDir() string {
	if o.DataDir == "" {
		return DefaultDataDir
	}
	return o.DataDir
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o Options) sysClassNet() string {
	if o.SysClassNet == "" {
		return DefaultSysClassNet
	}
	return o.SysClassNet
}

// Parse parses key=value lines as Mender's identity and inventory scripts
// print them. Each line is split at its first '='; empty lines are skipped; a
// key on several lines gets several values, in order. Values are kept
// verbatim except for trailing '\r' characters, which are dropped. A
// non-empty line without '=' or with an empty key is an error naming the
// line number and wrapping [ErrMalformed]. The map is never nil on success.
func Parse(out []byte) (map[string][]string, error) {
	attrs := make(map[string][]string)
	for i, line := range bytes.Split(out, []byte{'\n'}) {
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte{'='})
		switch {
		case !ok:
			return nil, fmt.Errorf("line %d: %w: %q has no '='", i+1, ErrMalformed, excerpt(line))
		case len(k) == 0:
			return nil, fmt.Errorf("line %d: %w: %q has an empty key", i+1, ErrMalformed, excerpt(line))
		}
		attrs[string(k)] = append(attrs[string(k)], string(v))
	}
	return attrs, nil
}

// excerpt shortens a line for an error message.
func excerpt(b []byte) string {
	const max = 80
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}

// Result is a device identity and what a caller should tell the user about it.
type Result struct {
	// Attributes are the identity attributes; never empty on success.
	Attributes map[string][]string
	// Interface names the network interface whose MAC address is the
	// identity; "" when the identity script produced it.
	Interface string
	// Warnings are one-line explanations, each with its fix, of why the
	// identity may not stay the same: the MAC address fallback had to use a
	// random MAC address or an interface that is down. The caller logs them.
	Warnings []string
}

// Identify returns the device identity. When the identity script exists it
// runs it and returns its attributes; a script that is not executable, exits
// non-zero (the error carries the first line of its stderr), times out, or
// prints malformed, non-UTF-8 or no output is an error naming the script.
//
// Without a script it returns {"mac": ["xx:xx:xx:xx:xx:xx"]}, the MAC address
// of an Ethernet interface (sysfs type 1, not dummy*, MAC not all zero). It
// prefers, in this order: a permanent MAC address (addr_assign_type 0) over
// one set by software, over a random one, which may change at reboot; an
// interface that is administratively up (IFF_UP) over one that is down; the
// lowest ifindex. Using a random MAC address or an interface that is down
// adds a warning. When there is no such interface the error wraps
// [ErrNoIdentity].
func Identify(ctx context.Context, opts Options) (Result, error) {
	log := opts.logger()
	script := filepath.Join(opts.dataDir(), filepath.FromSlash(IdentityScript))
	st, err := os.Stat(script)
	switch {
	case err == nil:
		attrs, err := runIdentity(ctx, script, st, opts, log)
		return Result{Attributes: attrs}, err
	case !errors.Is(err, fs.ErrNotExist):
		return Result{}, fmt.Errorf("identity: %w; fix its permissions or remove it to use the MAC address", err)
	}

	nics, err := etherNICs(opts.sysClassNet())
	if err != nil {
		return Result{}, fmt.Errorf("identity: %w; install an identity script at %s that prints key=value lines (e.g. serial=1234)",
			err, script)
	}
	best := nics[0]
	args := []any{"script", script, "iface", best.name, "mac", best.mac}
	if stock := slices.MinFunc(nics, func(a, b nic) int { return cmp.Compare(a.index, b.index) }); stock.name != best.name {
		// Mender's stock identity script takes the lowest ifindex regardless.
		args = append(args, "mender_stock_script_iface", stock.name)
	}
	log.Info("no identity script; using the MAC address as identity", args...)
	return Result{Attributes: map[string][]string{"mac": {best.mac}}, Interface: best.name,
		Warnings: macWarnings(best, script)}, nil
}

// Collect is [Identify] for callers that only need the attributes: it logs
// the warnings to Options.Logger at warn level and returns the attributes.
func Collect(ctx context.Context, opts Options) (map[string][]string, error) {
	res, err := Identify(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, w := range res.Warnings {
		opts.logger().Warn(w)
	}
	return res.Attributes, nil
}

// runIdentity runs the identity script at path and parses its output.
func runIdentity(ctx context.Context, path string, st fs.FileInfo, opts Options, log *slog.Logger) (map[string][]string, error) {
	const hint = "fix the script, or remove it to use the MAC address"
	switch {
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("identity: script %s is not a regular file; %s", path, hint)
	case st.Mode().Perm()&0o111 == 0:
		return nil, fmt.Errorf("identity: script %s is not executable; chmod +x it, or remove it to use the MAC address", path)
	}
	out, err := runScript(ctx, path, opts.timeout(), log)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("identity: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w; %s", err, hint)
	}
	attrs, err := parseOutput(path, out)
	if err != nil {
		return nil, fmt.Errorf("identity: %w; %s", err, hint)
	}
	if len(attrs) == 0 {
		return nil, fmt.Errorf("identity: %w; %s", &ScriptError{Script: path, Err: ErrEmptyOutput}, hint)
	}
	log.Debug("identity from script", "script", path, "attributes", len(attrs))
	return attrs, nil
}

// parseOutput parses a script's output, which must also be valid UTF-8 so
// that it survives JSON encoding unchanged.
func parseOutput(path string, out []byte) (map[string][]string, error) {
	if !utf8.Valid(out) {
		line := 1 + bytes.Count(out[:invalidUTF8At(out)], []byte{'\n'})
		return nil, &ScriptError{Script: path, Err: fmt.Errorf("line %d: %w: not valid UTF-8", line, ErrMalformed)}
	}
	attrs, err := Parse(out)
	if err != nil {
		return nil, &ScriptError{Script: path, Err: err}
	}
	return attrs, nil
}

// invalidUTF8At returns the offset of the first invalid UTF-8 sequence in b.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(b)
}

// Inventory runs every executable <DataDir>/inventory/mender-inventory-*
// script in name order and merges their output: a key printed by several
// scripts gets all their values, in script order. A script that fails (exits
// non-zero, times out, prints malformed output) adds one error and
// contributes nothing; the others still run. Files that are not executable
// are skipped. A missing inventory directory gives no attributes and no
// error. The map is never nil.
func Inventory(ctx context.Context, opts Options) (map[string][]string, []error) {
	log := opts.logger()
	attrs := make(map[string][]string)
	dir := filepath.Join(opts.dataDir(), InventoryDir)
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		log.Debug("no inventory scripts", "dir", dir)
		return attrs, nil
	}
	if err != nil {
		return attrs, []error{fmt.Errorf("inventory: list scripts: %w", err)}
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), InventoryPrefix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		st, err := os.Stat(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("inventory: %w; fix or remove it", err))
			continue
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			log.Debug("skipping non-executable inventory file", "script", path)
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("inventory: %w", err))
			break
		}
		out, err := runScript(ctx, path, opts.timeout(), log)
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("inventory: %w", ctx.Err()))
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("inventory: %w", err))
			continue
		}
		got, err := parseOutput(path, out)
		if err != nil {
			errs = append(errs, fmt.Errorf("inventory: %w", err))
			continue
		}
		for k, v := range got {
			attrs[k] = append(attrs[k], v...)
		}
		log.Debug("inventory script done", "script", path, "attributes", len(got))
	}
	return attrs, errs
}
