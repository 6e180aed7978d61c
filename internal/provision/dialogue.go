package provision

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// DefaultStepTimeout is how long one side waits for the other's next
// message (the other side may be creating a key or signing).
const DefaultStepTimeout = 30 * time.Second

// PeerError is an Error message the other side sent.
type PeerError struct {
	Side string // "station" or "device"
	Code string
	Text string
}

func (e *PeerError) Error() string { return e.Side + ": " + e.Text }

// conv sends and receives typed messages on a link.
type conv struct {
	link  *Link
	codec Codec
	step  time.Duration
	peer  string // "station" or "device", for errors
}

func (c *conv) send(ctx context.Context, typ string, body any) error {
	b, err := encodeMessage(c.codec, typ, body)
	if err != nil {
		return err
	}
	if err := c.link.Send(ctx, b); err != nil {
		return fmt.Errorf("send %s to the %s: %w", typ, c.peer, err)
	}
	return nil
}

// sendError tells the peer why this side gives up; failures to deliver it
// are ignored (the dialogue fails anyway).
func (c *conv) sendError(ctx context.Context, code, text string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = c.send(ctx, TypeError, Error{Code: code, Text: text})
}

// recv waits for the next message, which must be one of want (an Error
// message becomes a *PeerError), and decodes it into the matching value of
// into (keyed by type).
func (c *conv) recv(ctx context.Context, into map[string]any) (string, error) {
	b, err := c.link.Recv(ctx, c.step)
	if err != nil {
		return "", fmt.Errorf("waiting for the %s: %w", c.peer, err)
	}
	typ, raw, err := decodeEnvelope(c.codec, b)
	if err != nil {
		return "", err
	}
	if typ == TypeError {
		var e Error
		if err := decodeBody(c.codec, typ, raw, &e); err != nil {
			return "", err
		}
		return "", &PeerError{Side: c.peer, Code: e.Code, Text: e.Text}
	}
	v, ok := into[typ]
	if !ok {
		want := make([]string, 0, len(into))
		for k := range into {
			want = append(want, k)
		}
		slices.Sort(want)
		return "", fmt.Errorf("%w: the %s sent %q, expected %v", ErrMessage, c.peer, typ, want)
	}
	return typ, decodeBody(c.codec, typ, raw, v)
}

// versionIn reports whether versions holds Version.
func versionIn(versions []int) bool { return slices.Contains(versions, Version) }

// decodeHello decodes the first message of a dialogue.
func decodeHello(c Codec, b []byte) (Hello, error) {
	var h Hello
	typ, raw, err := decodeEnvelope(c, b)
	if err != nil {
		return h, err
	}
	if typ != TypeHello {
		return h, fmt.Errorf("%w: the device began with %q, not hello", ErrMessage, typ)
	}
	if err := decodeBody(c, typ, raw, &h); err != nil {
		return h, err
	}
	if !versionIn(h.Versions) {
		got := 0
		if len(h.Versions) > 0 {
			got = slices.Max(h.Versions)
		}
		return h, &VersionError{Got: got}
	}
	return h, nil
}

// isVersion reports whether err is a *VersionError.
func isVersion(err error) bool {
	var v *VersionError
	return errors.As(err, &v)
}
