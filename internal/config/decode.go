package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error about the content of a config file:
// malformed JSON, wrong types and invalid combinations of keys.
var ErrInvalid = errors.New("invalid configuration")

// KeyError is a problem with one key of mender.conf. It matches [ErrInvalid]
// with errors.Is.
type KeyError struct {
	// File is the file the key came from; "" when unknown.
	File string
	// Key is the JSON key path, e.g. "HttpsClient.Key" or "Servers[1].ServerURL".
	Key string
	// Msg describes the problem and the fix; it follows the quoted key.
	Msg string
}

// Error returns `<file>: key "<Key>" <Msg>`.
func (e *KeyError) Error() string {
	s := fmt.Sprintf("key %q %s", e.Key, e.Msg)
	if e.File != "" {
		s = e.File + ": " + s
	}
	return s
}

// Is reports whether target is [ErrInvalid].
func (e *KeyError) Is(target error) bool { return target == ErrInvalid }

// SyntaxError is malformed JSON in a config file. It matches [ErrInvalid]
// with errors.Is.
type SyntaxError struct {
	// File is the path of the file.
	File string
	// Line and Column are 1-based; Column counts bytes.
	Line, Column int
	// Msg is the JSON parser's description.
	Msg string
}

// Error returns `<file>:<line>:<column>: malformed JSON: <Msg>`.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("%s:%d:%d: malformed JSON: %s", e.File, e.Line, e.Column, e.Msg)
}

// Is reports whether target is [ErrInvalid].
func (e *SyntaxError) Is(target error) bool { return target == ErrInvalid }

// decoder decodes config files into one File, one file after the other, so
// that keys present in a later file override those of an earlier one. It
// records which file set each leaf key, the warnings and the errors.
type decoder struct {
	origin   map[string]string // leaf key path → file that set it last
	warnings []string
	errs     []error
}

func newDecoder() *decoder {
	return &decoder{origin: make(map[string]string)}
}

// decodeFile decodes data, the content of file, into f.
func (d *decoder) decodeFile(file string, data []byte, f *File) {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line, col := position(data, se)
			d.errs = append(d.errs, &SyntaxError{File: file, Line: line, Column: col, Msg: se.Error()})
			return
		}
		d.errs = append(d.errs, fmt.Errorf("%s: %w: %w", file, ErrInvalid, err))
		return
	}
	if k := jsonKind(raw); k != "object" {
		d.errs = append(d.errs, fmt.Errorf("%s: %w: the top level must be a JSON object ({...}), got %s",
			file, ErrInvalid, k))
		return
	}
	d.object(file, raw, "", reflect.ValueOf(f).Elem(), true)
}

// object decodes the JSON object raw into the struct v. Keys are reported
// with prefix; track records the origin of leaf keys (not done inside arrays).
func (d *decoder) object(file string, raw []byte, prefix string, v reflect.Value, track bool) {
	fields, names := structFields(v.Type())
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{'
		d.errs = append(d.errs, fmt.Errorf("%s: %w: %w", file, ErrInvalid, err))
		return
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			d.errs = append(d.errs, fmt.Errorf("%s: %w: %w", file, ErrInvalid, err))
			return
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			d.errs = append(d.errs, fmt.Errorf("%s: %w: key %q: %w", file, ErrInvalid, prefix+key, err))
			return
		}
		path := prefix + key
		if seen[key] {
			d.warnings = append(d.warnings, fmt.Sprintf("%s: duplicate key %q (the last one wins; remove the others)", file, path))
		}
		seen[key] = true
		idx, ok := fields[key]
		if !ok {
			d.warnings = append(d.warnings, unknownKeyWarning(file, path, key, names))
			continue
		}
		if jsonKind(val) == "null" {
			continue // like encoding/json: null leaves the value as it was
		}
		fv := v.Field(idx)
		if fv.Kind() == reflect.Struct {
			if k := jsonKind(val); k != "object" {
				d.errs = append(d.errs, &KeyError{File: file, Key: path, Msg: "must be an object, got " + k})
				continue
			}
			d.object(file, val, path+".", fv, track)
			continue
		}
		nv := reflect.New(fv.Type()).Elem()
		if !d.value(file, val, path, nv) {
			continue
		}
		fv.Set(nv)
		if track {
			d.origin[path] = file
		}
	}
}

// value decodes raw into the non-struct (or array element) v and reports
// whether it succeeded.
func (d *decoder) value(file string, raw []byte, path string, v reflect.Value) bool {
	got := jsonKind(raw)
	bad := func(want string) bool {
		d.errs = append(d.errs, &KeyError{File: file, Key: path, Msg: "must be " + want + ", got " + got})
		return false
	}
	switch v.Kind() {
	case reflect.String:
		if got != "string" {
			return bad("a string")
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return bad("a string")
		}
		v.SetString(s)
	case reflect.Bool:
		if got != "boolean" {
			return bad("a boolean (true or false)")
		}
		v.SetBool(string(raw) == "true")
	case reflect.Int:
		if got != "number" {
			return bad("a number")
		}
		n, err := strconv.ParseInt(string(raw), 10, strconv.IntSize)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				d.errs = append(d.errs, &KeyError{File: file, Key: path, Msg: "is out of range, got " + string(raw)})
			} else {
				d.errs = append(d.errs, &KeyError{File: file, Key: path, Msg: "must be a whole number, got " + string(raw)})
			}
			return false
		}
		v.SetInt(n)
	case reflect.Struct:
		if got != "object" {
			return bad("an object")
		}
		d.object(file, raw, path+".", v, false)
	case reflect.Slice:
		want := "an array of strings"
		if v.Type().Elem().Kind() == reflect.Struct {
			want = "an array of objects"
		}
		if got != "array" {
			return bad(want)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return bad(want)
		}
		out := reflect.MakeSlice(v.Type(), len(elems), len(elems))
		ok := true
		for i, e := range elems {
			n := len(d.errs)
			d.value(file, e, fmt.Sprintf("%s[%d]", path, i), out.Index(i))
			ok = ok && len(d.errs) == n
		}
		if !ok {
			return false
		}
		v.Set(out)
	default:
		// Unreachable: File only has the kinds above.
		d.errs = append(d.errs, &KeyError{File: file, Key: path, Msg: "has an unsupported type"})
		return false
	}
	return true
}

// structFields maps the JSON names of t's fields to field indexes, and lists
// the names in declaration order.
func structFields(t reflect.Type) (map[string]int, []string) {
	fields := make(map[string]int, t.NumField())
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" {
			name = t.Field(i).Name
		}
		fields[name] = i
		names = append(names, name)
	}
	return fields, names
}

// jsonKind names the JSON type of a valid JSON value.
func jsonKind(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// position turns the offset of a JSON syntax error into a 1-based line and
// column (in bytes) of the offending character.
func position(data []byte, se *json.SyntaxError) (line, col int) {
	pos := int(se.Offset)
	if pos > len(data) {
		pos = len(data)
	}
	// For "invalid character" the offset is just past the offending byte.
	if pos > 0 && strings.HasPrefix(se.Error(), "invalid character") {
		pos--
	}
	before := data[:pos]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = pos - bytes.LastIndexByte(before, '\n')
	return line, col
}

// unknownKeyWarning words the warning for an unknown key, suggesting a known
// key of the same object that is spelled alike.
func unknownKeyWarning(file, path, key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if strings.EqualFold(k, key) {
			best = k
			break
		}
		if len(key) > 2*len(k) {
			continue // far too long to be a typo; skip the quadratic distance
		}
		if dist := editDistance(strings.ToLower(k), strings.ToLower(key)); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf("%s: unknown key %q (ignored; check the spelling: did you mean %q?)", file, path, best)
	}
	return fmt.Sprintf("%s: unknown key %q (ignored; check the spelling)", file, path)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
