package provision

import (
	"fmt"
	"maps"
	"slices"

	"github.com/mender-mtls/mtls-agent/internal/provision/cborlite"
)

// LiteCodec is the built-in [Codec]: each message type has its own
// encoder and decoder over cborlite (next to the type), so the device
// agent links no reflection-based CBOR library. It decodes only the core
// deterministic encoding (see cborlite) and refuses map keys that are not
// integers; unknown integer keys are skipped. The zero value is ready and
// safe for concurrent use.
type LiteCodec struct{}

type liteEncoder interface{ appendCBOR(e *cborlite.Encoder) }

type liteDecoder interface {
	decodeCBOR(d *cborlite.Decoder) error
}

// Marshal encodes a message value (or a pointer to one).
func (LiteCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(liteEncoder)
	if !ok {
		return nil, fmt.Errorf("provision: %T is not a provisioning message", v)
	}
	var e cborlite.Encoder
	m.appendCBOR(&e)
	return e.Bytes(), nil
}

// Unmarshal decodes data, which must hold exactly one message, into v, a
// pointer to a message value; v is reset first.
func (LiteCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(liteDecoder)
	if !ok {
		return fmt.Errorf("provision: %T is not a pointer to a provisioning message", v)
	}
	d := cborlite.NewDecoder(data)
	if err := m.decodeCBOR(d); err != nil {
		return err
	}
	return d.End()
}

// decodeFields reads a message map. field decodes the value of key and
// reports whether it knew the key; unknown keys' values are skipped.
func decodeFields(d *cborlite.Decoder, field func(key int64) (bool, error)) error {
	return d.Map(func() error {
		key, err := d.Int()
		if err != nil {
			return fmt.Errorf("message keys are integers: %w", err)
		}
		known, err := field(key)
		if err != nil {
			return fmt.Errorf("key %d: %w", key, err)
		}
		if !known {
			return d.Skip()
		}
		return nil
	})
}

// textField is one text field of a message that has only text fields.
type textField struct {
	key       int64
	value     string
	omitEmpty bool
}

func appendTextFields(e *cborlite.Encoder, fields ...textField) {
	n := 0
	for _, f := range fields {
		if f.value != "" || !f.omitEmpty {
			n++
		}
	}
	e.MapHeader(n)
	for _, f := range fields {
		if f.value != "" || !f.omitEmpty {
			e.Int(f.key)
			e.Text(f.value)
		}
	}
}

// decodeTextFields reads a message whose fields are all text, keyed 1, 2,
// ... in the order of dst.
func decodeTextFields(d *cborlite.Decoder, dst ...*string) error {
	return decodeFields(d, func(key int64) (bool, error) {
		if key < 1 || key > int64(len(dst)) {
			return false, nil
		}
		var err error
		*dst[key-1], err = d.Text()
		return true, err
	})
}

// decodeInt reads an integer that fits this platform's int.
func decodeInt(d *cborlite.Decoder) (int, error) {
	v, err := d.Int()
	if err != nil {
		return 0, err
	}
	if int64(int(v)) != v {
		return 0, fmt.Errorf("integer %d overflows int", v)
	}
	return int(v), nil
}

// appendBytes writes b, nil as null.
func appendBytes(e *cborlite.Encoder, b []byte) {
	if b == nil {
		e.Null()
		return
	}
	e.ByteString(b)
}

func decodeBytes(d *cborlite.Decoder) ([]byte, error) {
	if d.Null() {
		return nil, nil
	}
	return d.ByteString()
}

// appendBytesList writes a list of byte strings, nil as null.
func appendBytesList(e *cborlite.Encoder, list [][]byte) {
	if list == nil {
		e.Null()
		return
	}
	e.ArrayHeader(len(list))
	for _, b := range list {
		appendBytes(e, b)
	}
}

func decodeBytesList(d *cborlite.Decoder) ([][]byte, error) {
	if d.Null() {
		return nil, nil
	}
	list := [][]byte{}
	err := d.Array(func() error {
		b, err := decodeBytes(d)
		list = append(list, b)
		return err
	})
	return list, err
}

// appendIdentity writes an identity, its attributes in deterministic
// order, nil as null.
func appendIdentity(e *cborlite.Encoder, id map[string][]string) {
	if id == nil {
		e.Null()
		return
	}
	e.MapHeader(len(id))
	for _, k := range slices.SortedFunc(maps.Keys(id), cborlite.CompareText) {
		e.Text(k)
		v := id[k]
		if v == nil {
			e.Null()
			continue
		}
		e.ArrayHeader(len(v))
		for _, s := range v {
			e.Text(s)
		}
	}
}

func decodeIdentity(d *cborlite.Decoder) (map[string][]string, error) {
	if d.Null() {
		return nil, nil
	}
	id := map[string][]string{}
	err := d.Map(func() error {
		k, err := d.Text()
		if err != nil {
			return err
		}
		if d.Null() {
			id[k] = nil
			return nil
		}
		v := []string{}
		err = d.Array(func() error {
			s, err := d.Text()
			v = append(v, s)
			return err
		})
		id[k] = v
		return err
	})
	return id, err
}
