package cborlite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// Limits of the Decoder, the same as the station's decoder options.
const (
	// MaxDepth is how deeply arrays and maps may nest; a top-level map is
	// at depth 1.
	MaxDepth = 8
	// MaxItems is the most elements an array, or pairs a map, may hold.
	MaxItems = 256
)

// SyntaxError is input the Decoder refuses, with where it found it.
type SyntaxError struct {
	Offset int // bytes from the start of the input
	Msg    string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("cbor: at byte %d: %s", e.Offset, e.Msg) }

// Decoder reads CBOR items from a byte slice, one call per item.
type Decoder struct {
	data  []byte
	off   int
	depth int // arrays and maps open around the next item
}

// NewDecoder returns a decoder reading data from its start.
func NewDecoder(data []byte) *Decoder { return &Decoder{data: data} }

func (d *Decoder) errorf(at int, format string, args ...any) error {
	return &SyntaxError{Offset: at, Msg: fmt.Sprintf(format, args...)}
}

func (d *Decoder) remaining() int { return len(d.data) - d.off }

// head reads an item's initial byte and argument, refusing what the
// deterministic encoding never holds.
func (d *Decoder) head() (major byte, arg uint64, err error) {
	at := d.off
	if d.remaining() < 1 {
		return 0, 0, d.errorf(at, "unexpected end of input")
	}
	ib := d.data[d.off]
	major, ai := ib>>5, ib&0x1f
	d.off++
	switch {
	case major == majorTag:
		return 0, 0, d.errorf(at, "tags are not supported")
	case major == majorSimple && ai >= 24:
		return 0, 0, d.errorf(at, "floating-point and extended simple values are not supported")
	case ai < 24:
		return major, uint64(ai), nil
	case ai == 31:
		return 0, 0, d.errorf(at, "indefinite lengths are not allowed")
	case ai > 27:
		return 0, 0, d.errorf(at, "reserved additional information %d", ai)
	}
	n := 1 << (ai - 24) // 1, 2, 4 or 8 bytes of argument
	if d.remaining() < n {
		return 0, 0, d.errorf(at, "unexpected end of input")
	}
	b := d.data[d.off : d.off+n]
	d.off += n
	var min uint64
	switch n {
	case 1:
		arg, min = uint64(b[0]), 24
	case 2:
		arg, min = uint64(binary.BigEndian.Uint16(b)), 0x100
	case 4:
		arg, min = uint64(binary.BigEndian.Uint32(b)), 0x10000
	default:
		arg, min = binary.BigEndian.Uint64(b), 0x100000000
	}
	if arg < min {
		return 0, 0, d.errorf(at, "argument %d is not in its shortest form", arg)
	}
	return major, arg, nil
}

// typeName names a major type for errors.
func typeName(major byte) string {
	return [...]string{"unsigned integer", "negative integer", "byte string", "text string", "array", "map", "tag", "simple value"}[major&7]
}

func (d *Decoder) want(want byte) (uint64, error) {
	at := d.off
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != want {
		d.off = at
		return 0, d.errorf(at, "got a %s, want a %s", typeName(major), typeName(want))
	}
	return arg, nil
}

// Int reads an integer that fits an int64.
func (d *Decoder) Int() (int64, error) {
	at := d.off
	major, arg, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != majorUint && major != majorNegInt {
		d.off = at
		return 0, d.errorf(at, "got a %s, want an integer", typeName(major))
	}
	if arg > math.MaxInt64 {
		return 0, d.errorf(at, "integer overflows int64")
	}
	if major == majorNegInt {
		return -1 - int64(arg), nil
	}
	return int64(arg), nil
}

// str reads the content of a byte or text string.
func (d *Decoder) str(major byte) ([]byte, error) {
	at := d.off
	n, err := d.want(major)
	if err != nil {
		return nil, err
	}
	if n > uint64(d.remaining()) {
		return nil, d.errorf(at, "%s of %d bytes, only %d left", typeName(major), n, d.remaining())
	}
	b := d.data[d.off : d.off+int(n)]
	d.off += int(n)
	if major == majorText && !utf8.Valid(b) {
		return nil, d.errorf(at, "text string is not valid UTF-8")
	}
	return b, nil
}

// ByteString reads a byte string into a new slice (empty, not nil, for an
// empty string).
func (d *Decoder) ByteString() ([]byte, error) {
	b, err := d.str(majorBytes)
	if err != nil {
		return nil, err
	}
	return append([]byte{}, b...), nil
}

// Text reads a text string.
func (d *Decoder) Text() (string, error) {
	b, err := d.str(majorText)
	return string(b), err
}

// Bool reads false or true.
func (d *Decoder) Bool() (bool, error) {
	at := d.off
	arg, err := d.want(majorSimple)
	if err != nil {
		return false, err
	}
	switch arg {
	case simpleFalse:
		return false, nil
	case simpleTrue:
		return true, nil
	}
	d.off = at
	return false, d.errorf(at, "got simple value %d, want false or true", arg)
}

// Null reads a null if one is next and reports whether it did.
func (d *Decoder) Null() bool {
	if d.remaining() > 0 && d.data[d.off] == majorSimple<<5|simpleNull {
		d.off++
		return true
	}
	return false
}

// open reads the head of an array or map of n items, each at least size
// bytes, and enters it.
func (d *Decoder) open(major byte, size int) (int, error) {
	at := d.off
	n, err := d.want(major)
	if err != nil {
		return 0, err
	}
	if n > MaxItems {
		return 0, d.errorf(at, "%s of %d items, at most %d allowed", typeName(major), n, MaxItems)
	}
	if int(n)*size > d.remaining() {
		return 0, d.errorf(at, "%s of %d items, only %d bytes left", typeName(major), n, d.remaining())
	}
	if d.depth+1 > MaxDepth {
		return 0, d.errorf(at, "nested deeper than %d levels", MaxDepth)
	}
	d.depth++
	return int(n), nil
}

// Array reads an array, calling elem once for each element; elem must read
// exactly one item.
func (d *Decoder) Array(elem func() error) error {
	n, err := d.open(majorArray, 1)
	if err != nil {
		return err
	}
	defer func() { d.depth-- }()
	for range n {
		if err := elem(); err != nil {
			return err
		}
	}
	return nil
}

// Map reads a map, calling entry once for each pair with the decoder at
// the key; entry must read the key and its value. Keys must come in
// strictly ascending order of their encoding, so a repeated key is refused.
func (d *Decoder) Map(entry func() error) error {
	n, err := d.open(majorMap, 2)
	if err != nil {
		return err
	}
	defer func() { d.depth-- }()
	var prev []byte
	for i := range n {
		key, err := d.peekItem()
		if err != nil {
			return err
		}
		if i > 0 {
			switch c := bytes.Compare(prev, key); {
			case c == 0:
				return d.errorf(d.off, "repeated map key")
			case c > 0:
				return d.errorf(d.off, "map keys are not in deterministic order")
			}
		}
		prev = key
		if err := entry(); err != nil {
			return err
		}
	}
	return nil
}

// peekItem returns the encoding of the next item, checked, without
// reading it.
func (d *Decoder) peekItem() ([]byte, error) {
	start := d.off
	if err := d.Skip(); err != nil {
		return nil, err
	}
	item := d.data[start:d.off]
	d.off = start
	return item, nil
}

// Skip reads one item of any supported kind, checking it as strictly as
// the typed reads do.
func (d *Decoder) Skip() error {
	at := d.off
	major, _, err := d.head()
	if err != nil {
		return err
	}
	d.off = at
	switch major {
	case majorUint, majorNegInt:
		_, err = d.Int()
	case majorBytes, majorText:
		_, err = d.str(major)
	case majorArray:
		err = d.Array(d.Skip)
	case majorMap:
		err = d.Map(func() error {
			if err := d.Skip(); err != nil {
				return err
			}
			return d.Skip()
		})
	default: // majorSimple: head let only false, true, null and the unassigned small values through
		var arg uint64
		_, arg, err = d.head()
		if err == nil && arg != simpleFalse && arg != simpleTrue && arg != simpleNull {
			err = d.errorf(at, "simple value %d is not supported", arg)
		}
	}
	return err
}

// Raw reads one item (checked as Skip does) and returns a copy of its
// encoding.
func (d *Decoder) Raw() ([]byte, error) {
	start := d.off
	if err := d.Skip(); err != nil {
		return nil, err
	}
	return append([]byte(nil), d.data[start:d.off]...), nil
}

// End checks that the whole input was read.
func (d *Decoder) End() error {
	if n := d.remaining(); n > 0 {
		return d.errorf(d.off, "%d bytes after the item", n)
	}
	return nil
}
