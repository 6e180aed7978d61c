package provision

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/provision/cborfx"
)

// gen makes random message values, deterministically from its seed. Its
// values are what a decoder gives back: omitempty slices are nil or
// non-empty.
type gen struct{ r *rand.Rand }

func newGen(seed uint64) *gen { return &gen{rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))} }

// length picks a length around the head-size boundaries of CBOR.
func (g *gen) length(limit int) int {
	sizes := []int{0, 1, 5, 23, 24, 25, 255, 256, 300}
	n := sizes[g.r.IntN(len(sizes))]
	return min(n, limit)
}

func (g *gen) int() int {
	switch g.r.IntN(5) {
	case 0:
		return g.r.IntN(30) - 5
	case 1:
		return int(int32(g.r.Uint32()))
	case 2:
		return []int{23, 24, 255, 256, 65535, 65536, -24, -25, -256, -257, math.MaxInt32, math.MinInt32}[g.r.IntN(12)]
	default:
		return int(g.r.Int64() - math.MaxInt64/2)
	}
}

func (g *gen) text(limit int) string {
	runes := []rune{'a', 'Z', '0', '-', ' ', 'é', '€', '𝄞', '\x00', '\u007f'}
	var b strings.Builder
	for b.Len() < g.length(limit) {
		b.WriteRune(runes[g.r.IntN(len(runes))])
	}
	return b.String()
}

// bytes returns nil, empty or random bytes; with omitEmpty never empty.
func (g *gen) bytes(omitEmpty bool) []byte {
	if g.r.IntN(6) == 0 {
		return nil
	}
	n := g.length(300)
	if n == 0 && omitEmpty {
		return nil
	}
	if g.r.IntN(50) == 0 {
		n = 70000 // a four-byte length head
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return b
}

func (g *gen) bytesList(omitEmpty bool) [][]byte {
	if g.r.IntN(5) == 0 {
		return nil
	}
	n := g.length(30)
	if n == 0 && omitEmpty {
		return nil
	}
	l := make([][]byte, n)
	for i := range l {
		l[i] = g.bytes(false)
	}
	return l
}

func (g *gen) hello() Hello {
	h := Hello{KeyInTPM: g.r.IntN(2) == 0, PublicKey: g.bytes(false), Cert: g.bytesList(true)}
	if g.r.IntN(5) > 0 {
		h.Versions = make([]int, g.length(30))
		for i := range h.Versions {
			h.Versions[i] = g.int()
		}
	}
	if g.r.IntN(5) > 0 {
		h.Identity = map[string][]string{}
		for range g.length(30) {
			var v []string
			if g.r.IntN(5) > 0 {
				v = make([]string, g.length(5))
				for i := range v {
					v[i] = g.text(40)
				}
			}
			h.Identity[g.text(30)] = v
		}
	}
	return h
}

// messages returns one random value of every message type.
func (g *gen) messages() []any {
	return []any{
		g.hello(),
		Decision{Action: g.text(10), CN: g.text(70), Reason: g.text(300), Station: g.text(30)},
		CSR{DER: g.bytes(false)},
		Cert{Chain: g.bytesList(false), CA: g.bytes(false)},
		Stored{Fingerprint: g.text(80)},
		Done{Note: g.text(30)},
		Error{Code: g.text(10), Text: g.text(300)},
		envelope{V: g.int(), T: g.text(10), B: RawMessage(mustLite(Error{Code: g.text(5)}))},
	}
}

func mustLite(v any) []byte {
	b, err := LiteCodec{}.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// newOf returns a pointer to a new zero value of v's type.
func newOf(v any) any { return reflect.New(reflect.TypeOf(v)).Interface() }

// Every message type, random values: the built-in codec writes exactly the
// bytes fxamacker's core deterministic encoding writes, and each decodes
// the other's bytes to the value encoded.
func TestLiteCodecMatchesFxamacker(t *testing.T) {
	fx := fxCodec(t)
	lite := LiteCodec{}
	g := newGen(1)
	for i := range 400 {
		for _, v := range g.messages() {
			name := reflect.TypeOf(v).Name()
			lb, err := lite.Marshal(v)
			require.NoError(t, err, "%s #%d", name, i)
			fb, err := fx.Marshal(v)
			require.NoError(t, err, "%s #%d", name, i)
			require.Equal(t, fb, lb, "%s #%d: the two codecs encode %+v differently", name, i, v)

			fromLite := newOf(v)
			require.NoError(t, fx.Unmarshal(lb, fromLite), "%s #%d: fxamacker decodes the built-in codec's bytes", name, i)
			assert.Equal(t, v, reflect.ValueOf(fromLite).Elem().Interface(), "%s #%d: fxamacker decodes the value encoded", name, i)
			fromFx := newOf(v)
			require.NoError(t, lite.Unmarshal(fb, fromFx), "%s #%d: the built-in codec decodes fxamacker's bytes", name, i)
			assert.Equal(t, v, reflect.ValueOf(fromFx).Elem().Interface(), "%s #%d: the built-in codec decodes the value encoded", name, i)
			if t.Failed() {
				return
			}
		}
	}
}

// The envelope: EncodeMessage and the station's encoding agree, and each
// side reads the other's frames.
func TestEnvelopeMatchesFxamacker(t *testing.T) {
	fx := fxCodec(t)
	g := newGen(2)
	for _, v := range g.messages()[:7] {
		lb, err := EncodeMessage("t", v)
		require.NoError(t, err)
		fb, err := encodeMessage(fx, "t", v)
		require.NoError(t, err)
		require.Equal(t, fb, lb, "%T", v)
		typ, raw, err := decodeEnvelope(fx, lb)
		require.NoError(t, err)
		assert.Equal(t, "t", typ)
		got := newOf(v)
		require.NoError(t, decodeBody(LiteCodec{}, typ, raw, got))
		assert.Equal(t, v, reflect.ValueOf(got).Elem().Interface())
	}
	_, _, err := decodeEnvelope(fx, mustLite(envelope{V: 2, T: TypeHello}))
	var ve *VersionError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, 2, ve.Got)
}

// What the built-in codec refuses or skips, and what fxamacker does with
// the same bytes.
func TestLiteCodecStrictness(t *testing.T) {
	fx := fxCodec(t)
	deep := "\x81\x81\x81\x81\x81\x81\x81\x80" // 8 nested arrays
	tests := []struct {
		name    string
		in      string
		into    any
		want    any    // the value, when accepted
		wantErr string // the built-in codec's error, when refused
		fxOK    bool   // fxamacker accepts it (a looser decoder; the built-in one takes only deterministic bytes)
	}{
		{"unknown integer key skipped", "\xa2\x01\x61a\x09\x82\x01\x02", &Stored{}, Stored{Fingerprint: "a"}, "", true},
		{"unknown negative key skipped", "\xa2\x01\x61a\x20\xf6", &Stored{}, Stored{Fingerprint: "a"}, "", true},
		{"null slices", "\xa4\x01\xf6\x02\xf6\x03\xf6\x04\xf4", &Hello{}, Hello{}, "", true},
		{"empty slices stay empty", "\xa4\x01\x80\x02\xa0\x03\x40\x04\xf5", &Hello{},
			Hello{Versions: []int{}, Identity: map[string][]string{}, PublicKey: []byte{}, KeyInTPM: true}, "", true},
		{"unknown key with nesting to the limit", "\xa1\x09" + deep[1:], &Done{}, Done{}, "", true},
		{"nesting past the limit", "\xa1\x09" + deep, &Done{}, nil, "nested deeper than 8", false},
		{"integer not in shortest form", "\xa1\x01\x18\x01", &envelope{}, nil, "not in its shortest form", true},
		{"length not in shortest form", "\xa1\x01\x78\x01a", &Stored{}, nil, "not in its shortest form", true},
		{"indefinite-length map", "\xbf\x01\x61a\xff", &Stored{}, nil, "indefinite lengths", true},
		{"keys out of order", "\xa2\x02\x61b\x01\x61a", &Error{}, nil, "not in deterministic order", true},
		{"repeated key", "\xa2\x01\x61a\x01\x61b", &Error{}, nil, "repeated map key", false},
		{"repeated unknown key", "\xa2\x09\x00\x09\x00", &Done{}, nil, "repeated map key", false},
		{"repeated identity attribute", "\xa1\x02\xa2\x61a\xf6\x61a\xf6", &Hello{}, nil, "repeated map key", false},
		{"text key", "\xa1\x61\x31\x61a", &Stored{}, nil, "message keys are integers", true},
		{"tag", "\xa1\x01\xc0\x61a", &Stored{}, nil, "tags are not supported", true},
		{"float", "\xa1\x09\xf9\x00\x00", &Done{}, nil, "floating-point", true},
		{"invalid UTF-8", "\xa1\x01\x61\xff", &Stored{}, nil, "not valid UTF-8", false},
		{"bytes after the item", "\xa1\x01\x61a\x00", &Stored{}, nil, "1 bytes after the item", false},
		{"truncated", "\xa1\x01\x62a", &Stored{}, nil, "only 1 left", false},
		{"length beyond the input", "\xa1\x01\x5a\xff\xff\xff\xff", &CSR{}, nil, "only 0 left", false},
		{"array beyond the input", "\xa1\x01\x99\x01\x00", &Hello{}, nil, "only 0 bytes left", false},
		{"too many elements", "\xa1\x01\x99\x01\x01" + strings.Repeat("\x00", 257), &Hello{}, nil, "at most 256", false},
		{"integer overflows int64", "\xa1\x01\x1b\x80\x00\x00\x00\x00\x00\x00\x00", &envelope{}, nil, "overflows int64", false},
		{"null where text goes", "\xa1\x01\xf6", &Stored{}, nil, "want a text string", true},
		{"not a map", "\x80", &Done{}, nil, "want a map", false},
		{"empty input", "", &Done{}, nil, "unexpected end of input", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := LiteCodec{}.Unmarshal([]byte(tt.in), tt.into)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
			} else {
				require.NoError(t, err)
				assert.Equal(t, tt.want, reflect.ValueOf(tt.into).Elem().Interface())
				// Accepted bytes decode the same with fxamacker.
				fxv := newOf(tt.want)
				require.NoError(t, fx.Unmarshal([]byte(tt.in), fxv))
				assert.Equal(t, tt.want, reflect.ValueOf(fxv).Elem().Interface())
			}
			fxErr := fx.Unmarshal([]byte(tt.in), newOf(reflect.ValueOf(tt.into).Elem().Interface()))
			assert.Equal(t, tt.fxOK, fxErr == nil, "fxamacker's verdict: %v", fxErr)
		})
	}
}

// A station that does not set Codec talks to the device with the built-in
// codec on both sides.
func TestStationDefaultCodec(t *testing.T) {
	s := &Station{}
	assert.Equal(t, LiteCodec{}, s.codec())
	_, err := LiteCodec{}.Marshal(struct{}{})
	require.ErrorContains(t, err, "is not a provisioning message")
	require.ErrorContains(t, LiteCodec{}.Unmarshal([]byte{0xa0}, &struct{}{}), "is not a pointer to a provisioning message")
}

// FuzzLiteDecode: arbitrary bytes never panic the built-in codec; what it
// accepts is the deterministic encoding of a value fxamacker (with the
// station's options) decodes the same, and re-encoding gives the same
// bytes with either codec. Documented difference: unknown keys are
// dropped, zero omitempty fields are left out and absent fields are
// written, so a message's re-encoding may differ from its input; the
// CBOR-level check below still holds the input itself to the
// deterministic encoding.
func FuzzLiteDecode(f *testing.F) {
	g := newGen(3)
	for range 3 {
		for _, v := range g.messages() {
			if b := mustLite(v); len(b) < 4096 {
				f.Add(b)
				f.Add(mustLite(envelope{V: Version, T: TypeHello, B: b}))
			}
		}
	}
	f.Add([]byte("\xa2\x01\x61a\x09\x82\x01\x02"))
	f.Add([]byte("\xa1\x01\x18\x01"))
	fx := fxCodec(f)
	dm, err := cborfx.DecOptions().DecMode()
	require.NoError(f, err)
	em, err := cbor.CoreDetEncOptions().EncMode()
	require.NoError(f, err)
	zeros := []any{envelope{}, Hello{}, Decision{}, CSR{}, Cert{}, Stored{}, Done{}, Error{}}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, zero := range zeros {
			lv := newOf(zero)
			if (LiteCodec{}).Unmarshal(in, lv) != nil {
				continue
			}
			// CBOR level: the input is well formed and already in
			// deterministic form (fxamacker's generic decoding re-encodes
			// to the same bytes).
			require.NoError(t, dm.Wellformed(in))
			var generic any
			if dm.Unmarshal(in, &generic) == nil {
				re, err := em.Marshal(generic)
				require.NoError(t, err)
				require.Equal(t, in, re, "accepted input is not in deterministic form")
			}
			// Message level: fxamacker decodes the same value, and both
			// codecs re-encode it to the same bytes, which decode back.
			fv := newOf(zero)
			require.NoError(t, fx.Unmarshal(in, fv), "%T accepted by the built-in codec only", zero)
			value := reflect.ValueOf(lv).Elem().Interface()
			require.Equal(t, value, reflect.ValueOf(fv).Elem().Interface())
			lre, err := LiteCodec{}.Marshal(value)
			require.NoError(t, err)
			fre, err := fx.Marshal(value)
			require.NoError(t, err)
			require.Equal(t, fre, lre)
			back := newOf(zero)
			require.NoError(t, LiteCodec{}.Unmarshal(lre, back))
			require.Equal(t, value, reflect.ValueOf(back).Elem().Interface())
		}
		typ, raw, err := DecodeEnvelope(in)
		if err != nil {
			if !errors.Is(err, ErrMessage) && !isVersion(err) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		ftyp, fraw, err := decodeEnvelope(fx, in)
		require.NoError(t, err)
		require.Equal(t, typ, ftyp)
		require.Equal(t, raw, fraw)
	})
}
