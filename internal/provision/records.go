package provision

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// Record kinds.
const (
	// KindIssued: a certificate was signed and sent to the device. It is
	// recorded before it is sent, so a key is never given two certificates.
	KindIssued = "issued"
	// KindStored: the device confirmed it stored the certificate.
	KindStored = "stored"
)

// Record is one line of the station's records. Hash is the SHA-256 of the
// line's JSON with Hash left out; Prev is the Hash of the line before ("" on
// the first line), so a line that is edited, deleted or moved breaks the
// chain.
type Record struct {
	Seq             int                 `json:"seq"`
	Time            time.Time           `json:"time"`
	Kind            string              `json:"kind"`
	Station         string              `json:"station"`
	Port            string              `json:"port"`
	Identity        map[string][]string `json:"identity"`
	PublicKey       string              `json:"public_key"`
	KeyFingerprint  string              `json:"key_fingerprint"`
	KeyInTPM        bool                `json:"key_in_tpm"`
	CN              string              `json:"cn"`
	CertSerial      string              `json:"cert_serial"`
	CertFingerprint string              `json:"cert_fingerprint"`
	NotAfter        time.Time           `json:"not_after"`
	CA              string              `json:"ca"`
	// Certificate is the certificate, base64 DER, on issued records.
	Certificate []byte `json:"certificate,omitempty"`
	Prev        string `json:"prev"`
	Hash        string `json:"hash,omitempty"`
}

// headSuffix names the file next to the records that holds the count and
// the last hash, so that removing the last lines is detected too.
const headSuffix = ".head"

type head struct {
	Count int    `json:"count"`
	Hash  string `json:"hash"`
}

// ErrRecordsBroken wraps every verification failure of a records file.
var ErrRecordsBroken = errors.New("records do not verify")

// hashRecord returns the hash of r with its Hash field left out.
func hashRecord(r Record) (string, []byte, error) {
	r.Hash = ""
	b, err := json.Marshal(r)
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), b, nil
}

// ReadRecords reads and verifies a records file: every line parses, numbers
// run 1, 2, 3…, each line's hash matches its content and its prev the line
// before, and the head file (when present) names the last line. A missing
// file is an empty list. Errors name the file and line and wrap
// ErrRecordsBroken.
func ReadRecords(path string) ([]Record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, herr := os.Stat(path + headSuffix); herr == nil {
			return nil, fmt.Errorf("%s: %w: the file is missing but %s%s says records were written: restore it from a backup", path, ErrRecordsBroken, path, headSuffix)
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	var (
		recs []Record
		prev string
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			return nil, fmt.Errorf("%s line %d: %w: empty line", path, line, ErrRecordsBroken)
		}
		var r Record
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s line %d: %w: not a record: %v", path, line, ErrRecordsBroken, err)
		}
		h, _, err := hashRecord(r)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w: %v", path, line, ErrRecordsBroken, err)
		}
		switch {
		case r.Hash != h:
			return nil, fmt.Errorf("%s line %d: %w: its hash does not match its content: the line was edited", path, line, ErrRecordsBroken)
		case r.Prev != prev:
			return nil, fmt.Errorf("%s line %d: %w: it does not follow the line before: a line was deleted, inserted or moved before it", path, line, ErrRecordsBroken)
		case r.Seq != line:
			return nil, fmt.Errorf("%s line %d: %w: record number %d, want %d", path, line, ErrRecordsBroken, r.Seq, line)
		}
		prev = r.Hash
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s line %d: %w: %v", path, line+1, ErrRecordsBroken, err)
	}
	if hb, err := os.ReadFile(path + headSuffix); err == nil {
		var hd head
		if err := json.Unmarshal(hb, &hd); err != nil {
			return nil, fmt.Errorf("%s%s: %w: %v", path, headSuffix, ErrRecordsBroken, err)
		}
		// The head is written after the line: a crash between the two leaves
		// it one line behind, which is no loss.
		switch {
		case hd.Count == len(recs) && hd.Hash == prev:
		case hd.Count == len(recs)-1 && (hd.Count == 0 || recs[hd.Count-1].Hash == hd.Hash):
		case hd.Count > len(recs):
			return nil, fmt.Errorf("%s: %w: %s%s counts %d records, the file has %d: lines were removed from the end", path, ErrRecordsBroken, path, headSuffix, hd.Count, len(recs))
		default:
			return nil, fmt.Errorf("%s: %w: the last record does not match %s%s: the end of the file was rewritten", path, ErrRecordsBroken, path, headSuffix)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read records head: %w", err)
	}
	return recs, nil
}

// Records is an open records file. Append is safe for concurrent use, also
// by several processes on one file (flock).
type Records struct {
	path string
	mu   sync.Mutex
	recs []Record
	size int64
}

// OpenRecords reads and verifies path (see ReadRecords); a missing file is
// created at the first Append.
func OpenRecords(path string) (*Records, error) {
	recs, err := ReadRecords(path)
	if err != nil {
		return nil, err
	}
	r := &Records{path: path, recs: recs}
	if st, err := os.Stat(path); err == nil {
		r.size = st.Size()
	}
	return r, nil
}

// Path returns the records file.
func (r *Records) Path() string { return r.path }

// Append chains rec to the last record and appends it (Seq, Prev and Hash
// are filled in), fsyncs the file and updates the head file. It returns the
// record as written.
func (r *Records) Append(rec Record) (Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return Record{}, fmt.Errorf("records: %w", err)
	}
	defer f.Close()
	unlock, err := lockFD(f)
	if err != nil {
		return Record{}, fmt.Errorf("records %s: lock: %w", r.path, err)
	}
	defer unlock()
	st, err := f.Stat()
	if err != nil {
		return Record{}, fmt.Errorf("records: %w", err)
	}
	if st.Size() != r.size {
		// Another process appended: take its lines in, verified.
		recs, err := ReadRecords(r.path)
		if err != nil {
			return Record{}, err
		}
		r.recs, r.size = recs, st.Size()
	}
	rec.Seq, rec.Prev, rec.Hash = len(r.recs)+1, "", ""
	if len(r.recs) > 0 {
		rec.Prev = r.recs[len(r.recs)-1].Hash
	}
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	rec.Time = rec.Time.UTC().Truncate(time.Millisecond)
	h, _, err := hashRecord(rec)
	if err != nil {
		return Record{}, fmt.Errorf("records: %w", err)
	}
	rec.Hash = h
	line, err := json.Marshal(rec)
	if err != nil {
		return Record{}, fmt.Errorf("records: %w", err)
	}
	line = append(line, '\n')
	if _, err := f.Write(line); err != nil {
		_ = f.Truncate(r.size) // leave no half line behind
		return Record{}, fmt.Errorf("records %s: write: %w", r.path, err)
	}
	if err := f.Sync(); err != nil {
		return Record{}, fmt.Errorf("records %s: sync: %w", r.path, err)
	}
	r.recs = append(r.recs, rec)
	r.size += int64(len(line))
	hb, _ := json.Marshal(head{Count: len(r.recs), Hash: rec.Hash})
	if err := atomicfile.Write(r.path+headSuffix, append(hb, '\n'), 0o644); err != nil {
		return rec, fmt.Errorf("records %s: the record is written but the head file is not: %w", r.path, err)
	}
	return rec, nil
}

// IssuedFor returns the latest issued record for the key with this
// fingerprint and CA.
func (r *Records) IssuedFor(keyFingerprint, ca string) (Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.recs) - 1; i >= 0; i-- {
		if rec := r.recs[i]; rec.Kind == KindIssued && rec.KeyFingerprint == keyFingerprint && rec.CA == ca {
			return rec, true
		}
	}
	return Record{}, false
}

// Stored reports whether the certificate with this fingerprint was
// confirmed stored.
func (r *Records) Stored(certFingerprint string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Kind == KindStored && rec.CertFingerprint == certFingerprint {
			return true
		}
	}
	return false
}

// All returns a copy of the records.
func (r *Records) All() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}
