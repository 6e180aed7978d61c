package provision

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFrameRoundTrip(t *testing.T) {
	bodies := [][]byte{nil, {0}, {0, 0, 0}, bytes.Repeat([]byte{1}, 253), bytes.Repeat([]byte{7}, 254),
		bytes.Repeat([]byte{9}, 255), bytes.Repeat([]byte{0, 1, 2, 0xff}, 700), bytes.Repeat([]byte{0xaa}, MaxBody)}
	for _, body := range bodies {
		f := Frame{Type: FrameData, Session: 0xdeadbeef, Seq: 65535, Body: body}
		enc, err := AppendFrame(nil, f)
		require.NoError(t, err)
		require.Equal(t, byte(0), enc[0])
		require.Equal(t, byte(0), enc[len(enc)-1])
		require.NotContains(t, enc[1:len(enc)-1], byte(0), "COBS leaves no zero inside a frame")
		got, err := DecodeFrame(enc[1 : len(enc)-1])
		require.NoError(t, err, "body of %d bytes", len(body))
		assert.Equal(t, f.Type, got.Type)
		assert.Equal(t, f.Session, got.Session)
		assert.Equal(t, f.Seq, got.Seq)
		assert.Equal(t, len(body), len(got.Body))
		assert.True(t, bytes.Equal(body, got.Body))
	}
}

func TestFrameRejects(t *testing.T) {
	_, err := AppendFrame(nil, Frame{Type: FrameData, Body: make([]byte, MaxBody+1)})
	require.ErrorContains(t, err, "the limit is")
	_, err = AppendFrame(nil, Frame{Type: 9})
	require.ErrorIs(t, err, ErrFrameType)

	enc, err := AppendFrame(nil, Frame{Type: FrameAck, Session: 7, Seq: 3, Body: []byte("hello")})
	require.NoError(t, err)
	inner := enc[1 : len(enc)-1]
	for i := range inner {
		for bit := range 8 {
			c := bytes.Clone(inner)
			c[i] ^= 1 << bit
			_, err := DecodeFrame(c)
			require.Error(t, err, "a flipped bit %d of byte %d must not decode", bit, i)
		}
	}
	for n := range len(inner) {
		_, err := DecodeFrame(inner[:n])
		require.Error(t, err, "a frame cut to %d bytes must not decode", n)
	}
	_, err = DecodeFrame(make([]byte, MaxEncoded+1))
	require.ErrorIs(t, err, ErrFrameLarge)
}

func TestScannerResyncs(t *testing.T) {
	f1, _ := AppendFrame(nil, Frame{Type: FrameData, Session: 1, Seq: 0, Body: []byte("one")})
	f2, _ := AppendFrame(nil, Frame{Type: FrameData, Session: 1, Seq: 1, Body: []byte("two")})
	var stream []byte
	stream = append(stream, "line noise\x13\x37"...)
	stream = append(stream, f1[1:]...) // the noise swallows f1: its leading zero is missing
	stream = append(stream, bytes.Repeat([]byte{0x55}, MaxEncoded+10)...)
	stream = append(stream, f2...)
	stream = append(stream, f1[:len(f1)/2]...) // a cut frame
	stream = append(stream, f2...)
	var sc scanner
	var got []string
	for i := 0; i < len(stream); i += 7 { // arrives in small pieces
		sc.feed(stream[i:min(i+7, len(stream))], func(f Frame) { got = append(got, string(f.Body)) })
	}
	assert.Equal(t, []string{"two", "two"}, got)
	assert.Positive(t, sc.noise)
	assert.Positive(t, sc.bad)
	assert.LessOrEqual(t, len(sc.buf), MaxEncoded, "the buffer stays bounded")
}

func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(byte(1), uint32(1), uint16(0), []byte("hello"))
	f.Add(byte(2), uint32(0), uint16(65535), []byte{})
	f.Add(byte(3), uint32(99), uint16(7), bytes.Repeat([]byte{0}, 600))
	f.Fuzz(func(t *testing.T, typ byte, session uint32, seq uint16, body []byte) {
		typ = typ%3 + 1
		if len(body) > MaxBody {
			body = body[:MaxBody]
		}
		in := Frame{Type: typ, Session: session, Seq: seq, Body: body}
		enc, err := AppendFrame(nil, in)
		if err != nil {
			t.Fatal(err)
		}
		var sc scanner
		var out []Frame
		sc.feed(enc, func(f Frame) { out = append(out, f) })
		if len(out) != 1 {
			t.Fatalf("want one frame, got %d", len(out))
		}
		got := out[0]
		if got.Type != in.Type || got.Session != in.Session || got.Seq != in.Seq || !bytes.Equal(got.Body, in.Body) {
			t.Fatalf("decode(encode(x)) = %+v, want %+v", got, in)
		}
	})
}

// FuzzFrameDecode feeds arbitrary bytes to the stream decoder, the frame
// decoder and the message decoder: none may panic, and whatever decodes
// encodes back to the same frame.
func FuzzFrameDecode(f *testing.F) {
	enc, _ := AppendFrame(nil, Frame{Type: FrameData, Session: 5, Seq: 2, Body: []byte{0xa2, 1, 1, 2, 0x65, 'h', 'e', 'l', 'l', 'o'}})
	f.Add(enc)
	f.Add([]byte{0, 1, 1, 0})
	f.Add([]byte{0xff, 0xff, 0, 0xff})
	msg, _ := EncodeMessage(TypeHello, Hello{Versions: []int{1}, Identity: map[string][]string{"mac": {"x"}}})
	f.Add(msg)
	f.Fuzz(func(t *testing.T, data []byte) {
		var sc scanner
		sc.feed(data, func(fr Frame) {
			re, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatalf("a decoded frame does not encode: %v", err)
			}
			back, err := DecodeFrame(re[1 : len(re)-1])
			if err != nil || back.Type != fr.Type || back.Seq != fr.Seq || back.Session != fr.Session || !bytes.Equal(back.Body, fr.Body) {
				t.Fatalf("re-encoded frame differs: %v", err)
			}
			_, _, _ = DecodeEnvelope(fr.Body)
		})
		if fr, err := DecodeFrame(data); err == nil {
			re, _ := AppendFrame(nil, fr)
			if back, err := DecodeFrame(re[1 : len(re)-1]); err != nil || !bytes.Equal(back.Body, fr.Body) {
				t.Fatalf("re-encoded frame differs: %v", err)
			}
		}
		typ, raw, err := DecodeEnvelope(data)
		if err == nil {
			var h Hello
			_ = decodeBody(LiteCodec{}, typ, raw, &h)
		} else if !errors.Is(err, ErrMessage) && !isVersion(err) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		_, _ = decodeHello(LiteCodec{}, data)
	})
}
