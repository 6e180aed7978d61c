// Package cborlite is a small CBOR (RFC 8949) codec for the provisioning
// messages of the device agent: explicit calls for each item instead of
// reflection, so the agent binary stays small.
//
// It covers the items the messages use: integers (major types 0 and 1),
// byte and text strings (2, 3), arrays (4), maps (5) and the simple values
// false, true and null (7). Tags, floats, undefined and other simple values
// are not part of it.
//
// The [Encoder] writes the core deterministic encoding of RFC 8949 §4.2.1:
// the shortest head for every argument and definite lengths only; callers
// write map keys in ascending order of their encoding ([CompareText] gives
// that order for text keys).
//
// The [Decoder] accepts only that encoding: a head longer than needed, an
// indefinite length, map keys out of order (which covers repeated keys),
// text that is not UTF-8, more than [MaxItems] elements or pairs, nesting
// deeper than [MaxDepth] and bytes after the top item are all refused,
// and every length is checked against the input left before anything is
// allocated. A Decoder is for one goroutine.
package cborlite

import (
	"cmp"
	"encoding/binary"
	"strings"
)

// Major types.
const (
	majorUint   = 0
	majorNegInt = 1
	majorBytes  = 2
	majorText   = 3
	majorArray  = 4
	majorMap    = 5
	majorTag    = 6
	majorSimple = 7
)

// Simple values (major type 7).
const (
	simpleFalse = 20
	simpleTrue  = 21
	simpleNull  = 22
)

// Encoder appends CBOR items to a buffer. The zero value is an empty
// encoder, ready to use.
type Encoder struct {
	buf []byte
}

// Bytes returns what was encoded so far; it aliases the encoder's buffer.
func (e *Encoder) Bytes() []byte { return e.buf }

// head appends the initial byte of major type major with argument arg in
// its shortest form.
func (e *Encoder) head(major byte, arg uint64) {
	m := major << 5
	switch {
	case arg < 24:
		e.buf = append(e.buf, m|byte(arg))
	case arg <= 0xff:
		e.buf = append(e.buf, m|24, byte(arg))
	case arg <= 0xffff:
		e.buf = binary.BigEndian.AppendUint16(append(e.buf, m|25), uint16(arg))
	case arg <= 0xffffffff:
		e.buf = binary.BigEndian.AppendUint32(append(e.buf, m|26), uint32(arg))
	default:
		e.buf = binary.BigEndian.AppendUint64(append(e.buf, m|27), arg)
	}
}

// Int appends an integer (major type 0 when v >= 0, else 1).
func (e *Encoder) Int(v int64) {
	if v >= 0 {
		e.head(majorUint, uint64(v))
		return
	}
	e.head(majorNegInt, uint64(-1-v))
}

// ByteString appends b as a byte string (an empty one for nil; write
// [Encoder.Null] for a nil slice that must stay nil).
func (e *Encoder) ByteString(b []byte) {
	e.head(majorBytes, uint64(len(b)))
	e.buf = append(e.buf, b...)
}

// Text appends s as a text string. s must be valid UTF-8.
func (e *Encoder) Text(s string) {
	e.head(majorText, uint64(len(s)))
	e.buf = append(e.buf, s...)
}

// Bool appends false or true.
func (e *Encoder) Bool(v bool) {
	if v {
		e.buf = append(e.buf, majorSimple<<5|simpleTrue)
		return
	}
	e.buf = append(e.buf, majorSimple<<5|simpleFalse)
}

// Null appends null.
func (e *Encoder) Null() { e.buf = append(e.buf, majorSimple<<5|simpleNull) }

// ArrayHeader starts an array of n elements; the caller appends them.
func (e *Encoder) ArrayHeader(n int) { e.head(majorArray, uint64(n)) }

// MapHeader starts a map of n pairs; the caller appends each key and its
// value, keys in ascending order of their encoding.
func (e *Encoder) MapHeader(n int) { e.head(majorMap, uint64(n)) }

// Raw appends item, which must be one complete, encoded CBOR item.
func (e *Encoder) Raw(item []byte) { e.buf = append(e.buf, item...) }

// CompareText orders text map keys as their deterministic encodings sort
// bytewise: shorter strings first, strings of one length bytewise.
func CompareText(a, b string) int {
	return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
}
