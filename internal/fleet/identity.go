package fleet

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// ErrInvalid wraps every malformed flag-style value (shard, MAC prefix,
// attribute) and every invalid option.
var ErrInvalid = errors.New("invalid value")

// Shard selects one of Total contiguous slices of a fleet's device indices,
// so that Total processes simulate one fleet without identity collisions.
// The zero value is the whole fleet (0/1).
type Shard struct {
	Index, Total int
}

// ParseShard parses "i/N" with 0 ≤ i < N.
func ParseShard(s string) (Shard, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "/")
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("shard %q: %w: want i/N with 0 <= i < N, e.g. 0/4", s, ErrInvalid)
	}
	return Shard{Index: i, Total: n}, nil
}

// String returns "i/N".
func (s Shard) String() string {
	s = s.norm()
	return strconv.Itoa(s.Index) + "/" + strconv.Itoa(s.Total)
}

func (s Shard) norm() Shard {
	if s.Total <= 0 {
		return Shard{Index: 0, Total: 1}
	}
	return s
}

// Range returns the half-open index range [lo, hi) of the shard in a fleet
// of count devices: shard i gets floor(i·count/N) up to floor((i+1)·count/N),
// so the shards partition 0..count-1 and differ in size by at most one.
func (s Shard) Range(count int) (lo, hi int) {
	s = s.norm()
	c := int64(max(count, 0))
	return int(int64(s.Index) * c / int64(s.Total)), int(int64(s.Index+1) * c / int64(s.Total))
}

// MACPrefix is the fixed leading octets of the devices' MAC addresses; the
// device index fills the remaining octets big-endian, so every index below
// [MACPrefix.Capacity] gets a distinct MAC.
type MACPrefix []byte

// ParseMACPrefix parses 1 to 5 hex octets separated by ':' or '-', e.g.
// "02" or "02:4d:00".
func ParseMACPrefix(s string) (MACPrefix, error) {
	s = strings.TrimSpace(s)
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == ':' || r == '-' })
	if len(parts) < 1 || len(parts) > 5 {
		return nil, fmt.Errorf("MAC prefix %q: %w: want 1 to 5 hex octets such as 02 or 02:4d", s, ErrInvalid)
	}
	p := make(MACPrefix, 0, len(parts))
	for _, part := range parts {
		b, err := hex.DecodeString(part)
		if err != nil || len(b) != 1 {
			return nil, fmt.Errorf("MAC prefix %q: %w: %q is not a hex octet", s, ErrInvalid, part)
		}
		p = append(p, b[0])
	}
	return p, nil
}

// Capacity returns how many distinct indices the prefix leaves room for.
func (p MACPrefix) Capacity() int {
	free := 6 - len(p)
	if free >= 7 || free <= 0 {
		return 0
	}
	return 1 << (8 * free)
}

// MAC returns the MAC address of device index: the prefix followed by the
// index big-endian. index must be in [0, Capacity()).
func (p MACPrefix) MAC(index int) string {
	var b [6]byte
	copy(b[:], p)
	for i := 5; i >= len(p); i-- {
		b[i] = byte(index)
		index >>= 8
	}
	var sb strings.Builder
	sb.Grow(17)
	for i, o := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		sb.WriteString(hex.EncodeToString([]byte{o}))
	}
	return sb.String()
}

// String returns the prefix as colon-separated hex octets.
func (p MACPrefix) String() string {
	parts := make([]string, len(p))
	for i, o := range p {
		parts[i] = hex.EncodeToString([]byte{o})
	}
	return strings.Join(parts, ":")
}

// Attribute is a key with one or more values, as given to
// --identity-attr k=v or --inventory-attr k=v1|v2.
type Attribute struct {
	Key    string
	Values []string
}

// ParseAttribute parses "key=value" or, with multi, "key=v1|v2|...". The
// key must be non-empty and values non-empty.
func ParseAttribute(s string, multi bool) (Attribute, error) {
	k, v, ok := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" || v == "" {
		return Attribute{}, fmt.Errorf("attribute %q: %w: want key=value", s, ErrInvalid)
	}
	vals := []string{v}
	if multi {
		vals = strings.Split(v, "|")
		for _, x := range vals {
			if x == "" {
				return Attribute{}, fmt.Errorf("attribute %q: %w: empty value between '|'", s, ErrInvalid)
			}
		}
	}
	return Attribute{Key: k, Values: vals}, nil
}

// identityAttributes returns the identity of the device with the MAC: mac
// plus the extra attributes (each with all its values).
func identityAttributes(mac string, extra []Attribute) menderapi.Attributes {
	a := make(menderapi.Attributes, len(extra)+1)
	for _, x := range extra {
		a[x.Key] = append(a[x.Key], x.Values...)
	}
	a["mac"] = []string{mac}
	return a
}

// inventoryAttributes returns the inventory attributes of device index:
// each attribute's value number index % len(values), as the stress-test
// client picks them.
func inventoryAttributes(index int, attrs []Attribute) menderapi.Attributes {
	a := make(menderapi.Attributes, len(attrs))
	for _, x := range attrs {
		a[x.Key] = []string{x.Values[index%len(x.Values)]}
	}
	return a
}
