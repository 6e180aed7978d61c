// Package provision is the factory provisioning protocol spoken over a
// serial line between a board (device-agent provision) and a provisioning
// station (simulator station): the board makes its key, sends a CSR, and
// stores the certificate the station signs with the factory CA.
//
// The package has three layers:
//
//   - frames: each frame is COBS-encoded and ends with a zero byte, so a
//     reader finds the next frame after any line noise. Inside, a header
//     (type, session, sequence number, length) and a CRC-32 guard the body.
//   - the link: stop-and-wait retransmission with sequence numbers, so a
//     lost or corrupt frame is sent again and a repeated one is delivered
//     once; every frame has a deadline.
//   - the dialogue: CBOR messages carrying a protocol version, driven by two
//     state machines (Device and Station) over any io.ReadWriter, so they are
//     tested without a port.
//
// Records keeps the station's hash-chained audit log.
package provision

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Frame types.
const (
	FrameData  byte = 1 // a message fragment the peer must acknowledge
	FrameAck   byte = 2 // acknowledges the data frame with the same session and sequence number
	FrameReset byte = 3 // the sender knows nothing of this session: start again with hello
)

// MaxBody is the largest frame body. A message larger than this is refused
// when it is sent: certificates and CSRs are a few kilobytes.
const MaxBody = 16 << 10

// headerLen is type (1), session (4), sequence number (2) and body length (2).
const headerLen = 9

// crcLen is the CRC-32 (IEEE) after the body, over header and body.
const crcLen = 4

// maxRaw is the longest frame before COBS encoding.
const maxRaw = headerLen + MaxBody + crcLen

// MaxEncoded is the longest encoded frame (without its zero delimiter):
// COBS adds one byte per 254 bytes, plus one.
const MaxEncoded = maxRaw + maxRaw/254 + 1

// Frame is one unit on the line.
type Frame struct {
	Type    byte
	Session uint32
	Seq     uint16
	Body    []byte
}

// Errors of DecodeFrame. Each is counted as noise by the link: a frame that
// fails any check is dropped and its sender retransmits it.
var (
	ErrFrameShort  = errors.New("frame shorter than its header")
	ErrFrameLength = errors.New("frame length field does not match the frame")
	ErrFrameCRC    = errors.New("frame CRC-32 does not match")
	ErrFrameType   = errors.New("unknown frame type")
	ErrFrameCOBS   = errors.New("invalid COBS encoding")
	ErrFrameLarge  = fmt.Errorf("frame larger than %d bytes", MaxEncoded)
)

// AppendFrame appends f encoded for the line to dst: a leading zero byte
// (which ends any noise the receiver has collected), the COBS-encoded frame
// and the terminating zero byte. It fails only for a body over MaxBody or
// an unknown type.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if len(f.Body) > MaxBody {
		return dst, fmt.Errorf("frame body of %d bytes: the limit is %d", len(f.Body), MaxBody)
	}
	if f.Type < FrameData || f.Type > FrameReset {
		return dst, fmt.Errorf("%w %d", ErrFrameType, f.Type)
	}
	raw := make([]byte, headerLen, headerLen+len(f.Body)+crcLen)
	raw[0] = f.Type
	binary.BigEndian.PutUint32(raw[1:], f.Session)
	binary.BigEndian.PutUint16(raw[5:], f.Seq)
	binary.BigEndian.PutUint16(raw[7:], uint16(len(f.Body)))
	raw = append(raw, f.Body...)
	raw = binary.BigEndian.AppendUint32(raw, crc32.ChecksumIEEE(raw))
	dst = append(dst, 0)
	dst = cobsEncode(dst, raw)
	return append(dst, 0), nil
}

// DecodeFrame decodes one encoded frame, without its zero delimiters. The
// returned body is a fresh copy.
func DecodeFrame(enc []byte) (Frame, error) {
	if len(enc) > MaxEncoded {
		return Frame{}, ErrFrameLarge
	}
	raw, err := cobsDecode(enc)
	if err != nil {
		return Frame{}, err
	}
	if len(raw) < headerLen+crcLen {
		return Frame{}, ErrFrameShort
	}
	n := int(binary.BigEndian.Uint16(raw[7:]))
	if headerLen+n+crcLen != len(raw) {
		return Frame{}, ErrFrameLength
	}
	sum := binary.BigEndian.Uint32(raw[len(raw)-crcLen:])
	if crc32.ChecksumIEEE(raw[:len(raw)-crcLen]) != sum {
		return Frame{}, ErrFrameCRC
	}
	f := Frame{
		Type:    raw[0],
		Session: binary.BigEndian.Uint32(raw[1:]),
		Seq:     binary.BigEndian.Uint16(raw[5:]),
		Body:    append([]byte(nil), raw[headerLen:headerLen+n]...),
	}
	if f.Type < FrameData || f.Type > FrameReset {
		return Frame{}, fmt.Errorf("%w %d", ErrFrameType, f.Type)
	}
	return f, nil
}

// cobsEncode appends the consistent-overhead byte stuffing of src to dst:
// the result holds no zero byte.
func cobsEncode(dst, src []byte) []byte {
	codeAt := len(dst)
	dst = append(dst, 0)
	code := byte(1)
	for _, b := range src {
		if b == 0 {
			dst[codeAt] = code
			codeAt = len(dst)
			dst = append(dst, 0)
			code = 1
			continue
		}
		dst = append(dst, b)
		code++
		if code == 0xff {
			dst[codeAt] = code
			codeAt = len(dst)
			dst = append(dst, 0)
			code = 1
		}
	}
	dst[codeAt] = code
	return dst
}

// cobsDecode reverses cobsEncode.
func cobsDecode(src []byte) ([]byte, error) {
	out := make([]byte, 0, len(src))
	for i := 0; i < len(src); {
		code := int(src[i])
		if code == 0 {
			return nil, ErrFrameCOBS
		}
		i++
		end := i + code - 1
		if end > len(src) {
			return nil, ErrFrameCOBS
		}
		for _, b := range src[i:end] {
			if b == 0 {
				return nil, ErrFrameCOBS
			}
		}
		out = append(out, src[i:end]...)
		i = end
		if code != 0xff && i < len(src) {
			out = append(out, 0)
		}
	}
	return out, nil
}

// scanner splits a byte stream into frames at zero bytes. Bytes that do not
// form a valid frame are counted as noise; a run longer than MaxEncoded is
// dropped up to the next zero byte, so the buffer stays bounded.
type scanner struct {
	buf        []byte
	discarding bool
	// noise counts bytes that were not part of a valid frame; bad counts
	// zero-delimited runs that failed to decode.
	noise, bad int64
}

// feed consumes p and calls emit for every valid frame in it.
func (s *scanner) feed(p []byte, emit func(Frame)) {
	for _, b := range p {
		if b != 0 {
			if s.discarding {
				s.noise++
				continue
			}
			s.buf = append(s.buf, b)
			if len(s.buf) > MaxEncoded {
				s.noise += int64(len(s.buf))
				s.bad++
				s.buf = s.buf[:0]
				s.discarding = true
			}
			continue
		}
		if s.discarding {
			s.discarding = false
			continue
		}
		if len(s.buf) == 0 {
			continue
		}
		f, err := DecodeFrame(s.buf)
		if err != nil {
			s.noise += int64(len(s.buf))
			s.bad++
		} else {
			emit(f)
		}
		s.buf = s.buf[:0]
	}
}
