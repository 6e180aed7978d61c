package provision

import (
	"errors"
	"fmt"

	"github.com/mender-mtls/mtls-agent/internal/provision/cborlite"
)

// Version is the protocol version this package speaks. Every message
// carries it; a peer with another version gets a clear error, never a
// misread message.
const Version = 1

// Message types.
const (
	TypeHello    = "hello"    // device → station: who I am, my key, my certificate
	TypeDecision = "decision" // station → device: what to do (send a CSR, confirm, refuse)
	TypeCSR      = "csr"      // device → station: the certificate request
	TypeCert     = "cert"     // station → device: the certificate and its CA chain
	TypeStored   = "stored"   // device → station: the certificate is stored (its fingerprint)
	TypeDone     = "done"     // station → device: records committed
	TypeError    = "error"    // either way: this side gives up, and why
)

// Decision actions.
const (
	ActionCSR    = "csr"    // send a CSR for the common name given
	ActionHave   = "have"   // the certificate you hold is good: confirm it is stored
	ActionRefuse = "refuse" // the station will not provision this device
)

// Error codes carried by an Error message.
const (
	CodeVersion  = "version"  // protocol versions do not match
	CodeRefused  = "refused"  // the station refuses the device
	CodeCSR      = "csr"      // the CSR is invalid
	CodeCert     = "cert"     // the certificate does not verify on the device
	CodeStorage  = "storage"  // the device cannot store the certificate
	CodeStation  = "station"  // the station failed (CA, records)
	CodeProtocol = "protocol" // an unexpected message
)

// Hello is the device's first message.
type Hello struct {
	// Versions are the protocol versions the device speaks.
	Versions []int `cbor:"1,keyasint"`
	// Identity is the device identity, as mender-device-identity prints it
	// (or the MAC address the agent would use).
	Identity map[string][]string `cbor:"2,keyasint"`
	// PublicKey is the device key's public part, PKIX DER.
	PublicKey []byte `cbor:"3,keyasint"`
	// KeyInTPM says whether the private key lives in a TPM.
	KeyInTPM bool `cbor:"4,keyasint"`
	// Cert is the certificate chain the device already holds for this key
	// (leaf first, DER), when it is valid; nil otherwise.
	Cert [][]byte `cbor:"5,keyasint,omitempty"`
}

func (h Hello) appendCBOR(e *cborlite.Encoder) {
	n := 4
	if len(h.Cert) > 0 {
		n++
	}
	e.MapHeader(n)
	e.Int(1)
	if h.Versions == nil {
		e.Null()
	} else {
		e.ArrayHeader(len(h.Versions))
		for _, v := range h.Versions {
			e.Int(int64(v))
		}
	}
	e.Int(2)
	appendIdentity(e, h.Identity)
	e.Int(3)
	appendBytes(e, h.PublicKey)
	e.Int(4)
	e.Bool(h.KeyInTPM)
	if len(h.Cert) > 0 {
		e.Int(5)
		appendBytesList(e, h.Cert)
	}
}

func (h *Hello) decodeCBOR(d *cborlite.Decoder) error {
	*h = Hello{}
	return decodeFields(d, func(key int64) (bool, error) {
		var err error
		switch key {
		case 1:
			if d.Null() {
				return true, nil
			}
			h.Versions = []int{}
			err = d.Array(func() error {
				v, err := decodeInt(d)
				h.Versions = append(h.Versions, v)
				return err
			})
		case 2:
			h.Identity, err = decodeIdentity(d)
		case 3:
			h.PublicKey, err = decodeBytes(d)
		case 4:
			h.KeyInTPM, err = d.Bool()
		case 5:
			h.Cert, err = decodeBytesList(d)
		default:
			return false, nil
		}
		return true, err
	})
}

// Decision is the station's answer to Hello.
type Decision struct {
	Action string `cbor:"1,keyasint"`
	// CN is the common name the CSR must carry (ActionCSR).
	CN string `cbor:"2,keyasint,omitempty"`
	// Reason explains ActionRefuse.
	Reason string `cbor:"3,keyasint,omitempty"`
	// Station names the station, for the device's log and its marker file.
	Station string `cbor:"4,keyasint,omitempty"`
}

func (m Decision) appendCBOR(e *cborlite.Encoder) {
	appendTextFields(e, textField{1, m.Action, false}, textField{2, m.CN, true},
		textField{3, m.Reason, true}, textField{4, m.Station, true})
}

func (m *Decision) decodeCBOR(d *cborlite.Decoder) error {
	*m = Decision{}
	return decodeTextFields(d, &m.Action, &m.CN, &m.Reason, &m.Station)
}

// CSR carries the certificate request, DER.
type CSR struct {
	DER []byte `cbor:"1,keyasint"`
}

func (m CSR) appendCBOR(e *cborlite.Encoder) {
	e.MapHeader(1)
	e.Int(1)
	appendBytes(e, m.DER)
}

func (m *CSR) decodeCBOR(d *cborlite.Decoder) error {
	*m = CSR{}
	return decodeFields(d, func(key int64) (bool, error) {
		if key != 1 {
			return false, nil
		}
		var err error
		m.DER, err = decodeBytes(d)
		return true, err
	})
}

// Cert carries the signed certificate chain (leaf first, DER) and the CA
// certificate it chains to.
type Cert struct {
	Chain [][]byte `cbor:"1,keyasint"`
	CA    []byte   `cbor:"2,keyasint"`
}

func (m Cert) appendCBOR(e *cborlite.Encoder) {
	e.MapHeader(2)
	e.Int(1)
	appendBytesList(e, m.Chain)
	e.Int(2)
	appendBytes(e, m.CA)
}

func (m *Cert) decodeCBOR(d *cborlite.Decoder) error {
	*m = Cert{}
	return decodeFields(d, func(key int64) (bool, error) {
		var err error
		switch key {
		case 1:
			m.Chain, err = decodeBytesList(d)
		case 2:
			m.CA, err = decodeBytes(d)
		default:
			return false, nil
		}
		return true, err
	})
}

// Stored confirms the certificate with this fingerprint is stored.
type Stored struct {
	Fingerprint string `cbor:"1,keyasint"`
}

func (m Stored) appendCBOR(e *cborlite.Encoder) {
	appendTextFields(e, textField{1, m.Fingerprint, false})
}

func (m *Stored) decodeCBOR(d *cborlite.Decoder) error {
	*m = Stored{}
	return decodeTextFields(d, &m.Fingerprint)
}

// Done closes the dialogue.
type Done struct {
	// Note is what the station did, e.g. "preauthorized".
	Note string `cbor:"1,keyasint,omitempty"`
}

func (m Done) appendCBOR(e *cborlite.Encoder) {
	appendTextFields(e, textField{1, m.Note, true})
}

func (m *Done) decodeCBOR(d *cborlite.Decoder) error {
	*m = Done{}
	return decodeTextFields(d, &m.Note)
}

// Error ends the dialogue on the sender's side.
type Error struct {
	Code string `cbor:"1,keyasint"`
	Text string `cbor:"2,keyasint"`
}

func (m Error) appendCBOR(e *cborlite.Encoder) {
	appendTextFields(e, textField{1, m.Code, false}, textField{2, m.Text, false})
}

func (m *Error) decodeCBOR(d *cborlite.Decoder) error {
	*m = Error{}
	return decodeTextFields(d, &m.Code, &m.Text)
}

// envelope is what goes into a frame body.
type envelope struct {
	V int        `cbor:"1,keyasint"`
	T string     `cbor:"2,keyasint"`
	B RawMessage `cbor:"3,keyasint"` // null when there is no body
}

func (m envelope) appendCBOR(e *cborlite.Encoder) {
	e.MapHeader(3)
	e.Int(1)
	e.Int(int64(m.V))
	e.Int(2)
	e.Text(m.T)
	e.Int(3)
	if len(m.B) == 0 {
		e.Null()
	} else {
		e.Raw(m.B)
	}
}

func (m *envelope) decodeCBOR(d *cborlite.Decoder) error {
	*m = envelope{}
	return decodeFields(d, func(key int64) (bool, error) {
		var err error
		switch key {
		case 1:
			m.V, err = decodeInt(d)
		case 2:
			m.T, err = d.Text()
		case 3:
			if !d.Null() {
				m.B, err = d.Raw()
			}
		default:
			return false, nil
		}
		return true, err
	})
}

// RawMessage is one encoded CBOR item, carried as it is: the body of a
// message inside its envelope.
type RawMessage []byte

// MarshalCBOR returns m itself, or null when m is empty; reflection-based
// CBOR codecs (the station's) call it.
func (m RawMessage) MarshalCBOR() ([]byte, error) {
	if len(m) == 0 {
		return []byte{0xf6}, nil
	}
	return m, nil
}

// UnmarshalCBOR keeps a copy of data, or nil for null (no body);
// reflection-based CBOR codecs call it.
func (m *RawMessage) UnmarshalCBOR(data []byte) error {
	if m == nil {
		return errors.New("provision.RawMessage: UnmarshalCBOR on a nil pointer")
	}
	if len(data) == 1 && data[0] == 0xf6 {
		*m = nil
		return nil
	}
	*m = append((*m)[:0], data...)
	return nil
}

// Codec turns messages into CBOR and back. Marshal takes a message value
// (Hello, Decision, CSR, Cert, Stored, Done, Error) or an envelope,
// Unmarshal a pointer to one; the encoding is the core deterministic one
// of RFC 8949 with the integer keys of the struct tags. The device always
// uses the built-in codec ([LiteCodec]); the station may use a
// reflection-based one such as internal/provision/cborfx, which must
// decode with the same limits: nesting 8, 256 array elements or map
// pairs, repeated map keys refused, unknown keys ignored.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// VersionError is a message of another protocol version.
type VersionError struct{ Got int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("the other side speaks provisioning protocol version %d, this program speaks version %d: update the older of the two", e.Got, Version)
}

// ErrMessage wraps every message that does not decode.
var ErrMessage = errors.New("invalid message")

// EncodeMessage returns the frame body for a message of type typ, with the
// built-in codec.
func EncodeMessage(typ string, body any) ([]byte, error) {
	return encodeMessage(LiteCodec{}, typ, body)
}

func encodeMessage(c Codec, typ string, body any) ([]byte, error) {
	raw, err := c.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s message: %w", typ, err)
	}
	return c.Marshal(envelope{V: Version, T: typ, B: raw})
}

// DecodeEnvelope returns a message's type and raw body, decoded with the
// built-in codec; a message of another version gives a *VersionError.
func DecodeEnvelope(b []byte) (string, RawMessage, error) {
	return decodeEnvelope(LiteCodec{}, b)
}

func decodeEnvelope(c Codec, b []byte) (string, RawMessage, error) {
	var env envelope
	if err := c.Unmarshal(b, &env); err != nil {
		return "", nil, fmt.Errorf("%w: %w", ErrMessage, err)
	}
	if env.V != Version {
		return env.T, nil, &VersionError{Got: env.V}
	}
	if env.T == "" {
		return "", nil, fmt.Errorf("%w: no type", ErrMessage)
	}
	return env.T, env.B, nil
}

// decodeBody decodes a message body into v.
func decodeBody(c Codec, typ string, raw RawMessage, v any) error {
	if err := c.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMessage, typ, err)
	}
	return nil
}
