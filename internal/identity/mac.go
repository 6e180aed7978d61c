package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// arphrdEther is the sysfs "type" of Ethernet-like interfaces (ARPHRD_ETHER).
const arphrdEther = "1"

// etherMAC returns the name and MAC address of the Ethernet interface with
// the lowest ifindex under the sysfs directory root, skipping dummy*
// interfaces, other link types and all-zero addresses.
func etherMAC(root string) (iface, mac string, err error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("%w: %s does not exist", ErrNoIdentity, root)
	}
	if err != nil {
		return "", "", fmt.Errorf("list network interfaces: %w", err)
	}
	bestIdx := -1
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
		// Ties cannot happen on Linux; names break them for determinism.
		if bestIdx < 0 || idx < bestIdx || (idx == bestIdx && name < iface) {
			bestIdx, iface, mac = idx, name, hw.String()
		}
	}
	if bestIdx < 0 {
		return "", "", fmt.Errorf("%w: no Ethernet interface with a MAC address in %s", ErrNoIdentity, root)
	}
	return iface, mac, nil
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
