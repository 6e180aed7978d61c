package cborlite

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func coreDet(t *testing.T) cbor.EncMode {
	t.Helper()
	em, err := cbor.CoreDetEncOptions().EncMode()
	require.NoError(t, err)
	return em
}

// Integers at every head-size boundary encode as fxamacker's core
// deterministic encoding does, and decode back.
func TestIntHeads(t *testing.T) {
	em := coreDet(t)
	for _, v := range []int64{0, 1, 23, 24, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -24, -25, -256, -257, -65536, -65537, -math.MaxUint32 - 1, -math.MaxUint32 - 2, math.MinInt64} {
		var e Encoder
		e.Int(v)
		want, err := em.Marshal(v)
		require.NoError(t, err)
		assert.Equal(t, want, e.Bytes(), "%d", v)
		d := NewDecoder(e.Bytes())
		got, err := d.Int()
		require.NoError(t, err, "%d", v)
		assert.Equal(t, v, got)
		require.NoError(t, d.End())
	}
}

// Strings, arrays, maps and simple values match fxamacker too.
func TestItems(t *testing.T) {
	em := coreDet(t)
	long := strings.Repeat("x", 70000)
	tests := []struct {
		name  string
		write func(e *Encoder)
		value any
	}{
		{"empty bytes", func(e *Encoder) { e.ByteString(nil) }, []byte{}},
		{"bytes 24", func(e *Encoder) { e.ByteString(make([]byte, 24)) }, make([]byte, 24)},
		{"long text", func(e *Encoder) { e.Text(long) }, long},
		{"text", func(e *Encoder) { e.Text("héllo") }, "héllo"},
		{"bools and null", func(e *Encoder) { e.ArrayHeader(3); e.Bool(false); e.Bool(true); e.Null() }, []any{false, true, nil}},
		{"array of 300", func(e *Encoder) {
			e.ArrayHeader(300)
			for range 300 {
				e.Int(7)
			}
		}, slices.Repeat([]int{7}, 300)},
		{"map", func(e *Encoder) { e.MapHeader(2); e.Int(1); e.Text("a"); e.Int(2); e.Raw([]byte{0x80}) }, map[int]any{1: "a", 2: []int{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e Encoder
			tt.write(&e)
			want, err := em.Marshal(tt.value)
			require.NoError(t, err)
			assert.Equal(t, want, e.Bytes())
		})
	}
}

// CompareText sorts text keys as fxamacker's deterministic map encoding
// does.
func TestCompareText(t *testing.T) {
	keys := []string{"b", "aa", "a", "", "é", strings.Repeat("z", 23), strings.Repeat("a", 24), strings.Repeat("a", 300), "B"}
	m := map[string]int{}
	for _, k := range keys {
		m[k] = 0
	}
	want, err := coreDet(t).Marshal(m)
	require.NoError(t, err)
	var e Encoder
	e.MapHeader(len(keys))
	for _, k := range slices.SortedFunc(slices.Values(keys), CompareText) {
		e.Text(k)
		e.Int(0)
	}
	assert.Equal(t, want, e.Bytes())
}

func TestDecoderRefuses(t *testing.T) {
	nested := func(n int) string { return strings.Repeat("\x81", n-1) + "\x80" }
	tests := []struct{ name, in, want string }{
		{"nesting 9", nested(9), "nested deeper than 8"},
		{"short head", "\x19\x00\xff", "not in its shortest form"},
		{"short 8-byte head", "\x1b\x00\x00\x00\x00\xff\xff\xff\xff", "not in its shortest form"},
		{"reserved", "\x1c", "reserved additional information"},
		{"indefinite bytes", "\x5f\xff", "indefinite lengths"},
		{"undefined", "\xf7", "simple value 23 is not supported"},
		{"simple in next byte", "\xf8\x20", "extended simple values"},
		{"map key order in skipped maps", "\xa2\x61b\x00\x61a\x00", "not in deterministic order"},
		{"map of 257", "\xb9\x01\x01", "at most 256"},
		{"map longer than input", "\xa3\x00\x00", "only 2 bytes left"},
		{"truncated head", "\x19\x01", "unexpected end of input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDecoder([]byte(tt.in))
			err := d.Skip()
			require.ErrorContains(t, err, tt.want)
			var se *SyntaxError
			require.ErrorAs(t, err, &se)
		})
	}
	require.NoError(t, NewDecoder([]byte(nested(8))).Skip(), "8 levels are allowed")
}

// Typed reads refuse the wrong type and leave the input where it was.
func TestDecoderTypes(t *testing.T) {
	d := NewDecoder([]byte("\x61a"))
	_, err := d.Int()
	require.ErrorContains(t, err, "got a text string, want an integer")
	_, err = d.ByteString()
	require.ErrorContains(t, err, "want a byte string")
	_, err = d.Bool()
	require.ErrorContains(t, err, "want a simple value")
	assert.False(t, d.Null())
	s, err := d.Text()
	require.NoError(t, err)
	assert.Equal(t, "a", s)
	require.NoError(t, d.End())

	raw, err := NewDecoder([]byte("\x82\x01\xa1\x01\xf6")).Raw()
	require.NoError(t, err)
	assert.Equal(t, []byte("\x82\x01\xa1\x01\xf6"), raw)
}
