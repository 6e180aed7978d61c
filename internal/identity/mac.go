package identity

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// arphrdEther is the sysfs "type" of Ethernet-like interfaces (ARPHRD_ETHER).
const arphrdEther = "1"

// iffUp is IFF_UP in the sysfs "flags" file: administratively up.
const iffUp = 0x1

// macOrigin is how the kernel got an interface's MAC address, from the sysfs
// addr_assign_type file (NET_ADDR_*), ordered from most to least stable.
type macOrigin int

const (
	macPermanent macOrigin = iota // 0 NET_ADDR_PERM: burned in or from firmware
	macAssigned                   // 2 NET_ADDR_STOLEN, 3 NET_ADDR_SET, or unknown
	macRandom                     // 1 NET_ADDR_RANDOM: may change at every boot
)

// linkState is whether an interface is administratively up.
type linkState int

const (
	linkUp      linkState = iota
	linkUnknown           // neither flags nor operstate readable: not held against it
	linkDown
)

// rank is 0 for an interface that is or may be up, 1 for one that is down.
func (s linkState) rank() int {
	if s == linkDown {
		return 1
	}
	return 0
}

// nic is one candidate interface for the MAC address fallback.
type nic struct {
	name   string
	mac    string
	index  int
	origin macOrigin
	state  linkState
}

// ranked reports whether a is preferred to b: a permanent MAC address first
// (a random one may change at reboot, and the identity with it), then an
// interface that is up, then the lowest ifindex as Mender's stock identity
// script picks, then the name.
func ranked(a, b nic) int {
	return cmp.Or(
		cmp.Compare(a.origin, b.origin),
		cmp.Compare(a.state.rank(), b.state.rank()),
		cmp.Compare(a.index, b.index),
		cmp.Compare(a.name, b.name),
	)
}

// etherNICs returns the Ethernet interfaces under the sysfs directory root
// that have a usable MAC address (sysfs type 1, not dummy*, six bytes, not
// all zero), best first (see ranked).
func etherNICs(root string) ([]nic, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoIdentity, root)
	}
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	var out []nic
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "dummy") {
			continue
		}
		dir := filepath.Join(root, name)
		if typ, err := readTrimmed(filepath.Join(dir, "type")); err != nil || typ != arphrdEther {
			continue
		}
		addr, err := readTrimmed(filepath.Join(dir, "address"))
		if err != nil {
			continue
		}
		hw, err := net.ParseMAC(addr)
		if err != nil || len(hw) != 6 || allZero(hw) {
			continue
		}
		s, err := readTrimmed(filepath.Join(dir, "ifindex"))
		if err != nil {
			continue
		}
		idx, err := strconv.Atoi(s)
		if err != nil || idx < 0 {
			continue
		}
		out = append(out, nic{name: name, mac: hw.String(), index: idx,
			origin: readOrigin(dir), state: readLinkState(dir)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no Ethernet interface with a MAC address in %s", ErrNoIdentity, root)
	}
	slices.SortFunc(out, ranked)
	return out, nil
}

// readOrigin reads addr_assign_type; a missing or unknown value is
// macAssigned: not known to be permanent, not known to be random.
func readOrigin(dir string) macOrigin {
	s, err := readTrimmed(filepath.Join(dir, "addr_assign_type"))
	if err != nil {
		return macAssigned
	}
	switch s {
	case "0":
		return macPermanent
	case "1":
		return macRandom
	}
	return macAssigned
}

// readLinkState reads whether the interface is administratively up: IFF_UP
// in "flags", else "operstate" when flags is unreadable. Carrier (a cable
// plugged in, LOWER_UP) deliberately does not count, so that unplugging a
// cable does not move the identity to another interface.
func readLinkState(dir string) linkState {
	if s, err := readTrimmed(filepath.Join(dir, "flags")); err == nil {
		if f, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32); err == nil {
			if f&iffUp != 0 {
				return linkUp
			}
			return linkDown
		}
	}
	switch s, _ := readTrimmed(filepath.Join(dir, "operstate")); s {
	case "up", "dormant", "lowerlayerdown":
		return linkUp // states of an administratively up interface
	case "down":
		return linkDown
	}
	return linkUnknown
}

// macWarnings explains why the chosen interface may not give a stable
// identity: a random MAC address, or an interface that is down.
func macWarnings(best nic, script string) []string {
	var w []string
	fix := fmt.Sprintf("for a stable identity install an identity script at %s that prints a fixed key (e.g. serial=1234)", script)
	if best.origin == macRandom {
		w = append(w, fmt.Sprintf("identity: the MAC address %s of %s was generated at random by the kernel (addr_assign_type 1) "+
			"and may change at the next boot, and the device identity with it; no Ethernet interface has a permanent MAC address; %s",
			best.mac, best.name, fix))
	}
	if best.state == linkDown {
		w = append(w, fmt.Sprintf("identity: using the MAC address %s of %s, which is down: no interface with a %s MAC address is up, "+
			"and if another one comes up later the identity changes to its MAC address; %s",
			best.mac, best.name, originWord(best.origin), fix))
	}
	return w
}

func originWord(o macOrigin) string {
	switch o {
	case macPermanent:
		return "permanent"
	case macRandom:
		return "usable"
	}
	return "non-random"
}

// readTrimmed reads a small sysfs attribute file.
func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
