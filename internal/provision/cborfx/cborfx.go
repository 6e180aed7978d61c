// Package cborfx is the station's codec for the provisioning messages:
// github.com/fxamacker/cbor with core deterministic encoding and the
// decoding limits of the protocol. It satisfies provision.Codec without
// importing internal/provision, so only the station links it; the device
// agent uses the smaller built-in codec, and the tests of
// internal/provision hold the two against each other.
package cborfx

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Decoding limits, the same as cborlite's.
const (
	maxNested = 8
	maxItems  = 256
)

// Codec encodes with RFC 8949 core deterministic encoding and decodes with
// nesting limited to 8 levels, at most 256 array elements or map pairs,
// repeated map keys refused and unknown struct keys ignored. It is safe
// for concurrent use.
type Codec struct {
	enc cbor.EncMode
	dec cbor.DecMode
}

// DecOptions are the decoding options of the Codec.
func DecOptions() cbor.DecOptions {
	return cbor.DecOptions{
		MaxNestedLevels:  maxNested,
		MaxArrayElements: maxItems,
		MaxMapPairs:      maxItems,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
	}
}

// New returns a Codec.
func New() (*Codec, error) {
	enc, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return nil, fmt.Errorf("cbor encoding options: %w", err)
	}
	dec, err := DecOptions().DecMode()
	if err != nil {
		return nil, fmt.Errorf("cbor decoding options: %w", err)
	}
	return &Codec{enc: enc, dec: dec}, nil
}

// Marshal encodes v.
func (c *Codec) Marshal(v any) ([]byte, error) { return c.enc.Marshal(v) }

// Unmarshal decodes data, which must hold exactly one item, into v.
func (c *Codec) Unmarshal(data []byte, v any) error { return c.dec.Unmarshal(data, v) }
