package provision

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeRecords(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "records.jsonl")
	r, err := OpenRecords(path)
	require.NoError(t, err)
	for i := range n {
		_, err := r.Append(Record{Kind: KindStored, Station: "s1", Port: "/dev/ttyUSB0", CN: fmt.Sprintf("dev-%d", i),
			Identity: map[string][]string{"serial": {fmt.Sprint(i)}}, CertSerial: fmt.Sprintf("%x", 1000+i), Time: time.Unix(int64(i), 0)})
		require.NoError(t, err)
	}
	return path
}

func lines(t *testing.T, path string) [][]byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func rewrite(t *testing.T, path string, ls [][]byte) {
	var b []byte
	for _, l := range ls {
		b = append(b, bytes.TrimSuffix(l, []byte("\n"))...)
		b = append(b, '\n')
	}
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

func TestRecordsVerify(t *testing.T) {
	path := writeRecords(t, 5)
	recs, err := ReadRecords(path)
	require.NoError(t, err)
	require.Len(t, recs, 5)
	for i, r := range recs {
		assert.Equal(t, i+1, r.Seq)
		if i > 0 {
			assert.Equal(t, recs[i-1].Hash, r.Prev)
		}
	}
	r, err := OpenRecords(path) // appending goes on from the file
	require.NoError(t, err)
	_, err = r.Append(Record{Kind: KindIssued, CN: "dev-5"})
	require.NoError(t, err)
	recs, err = ReadRecords(path)
	require.NoError(t, err)
	assert.Len(t, recs, 6)
}

func TestRecordsDetectTampering(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		change     func([][]byte) [][]byte
	}{
		{"edit a line", "line 3: records do not verify: its hash does not match its content: the line was edited", func(ls [][]byte) [][]byte {
			ls[2] = bytes.Replace(ls[2], []byte(`"dev-2"`), []byte(`"dev-X"`), 1)
			return ls
		}},
		{"edit the last line", "line 5: records do not verify: its hash does not match", func(ls [][]byte) [][]byte {
			ls[4] = bytes.Replace(ls[4], []byte(`"/dev/ttyUSB0"`), []byte(`"/dev/ttyUSB1"`), 1)
			return ls
		}},
		{"delete a line", "line 2: records do not verify: it does not follow the line before", func(ls [][]byte) [][]byte {
			return append(ls[:1:1], ls[2:]...)
		}},
		{"delete the first line", "line 1: records do not verify: it does not follow the line before", func(ls [][]byte) [][]byte {
			return ls[1:]
		}},
		{"reorder two lines", "line 2: records do not verify: it does not follow the line before", func(ls [][]byte) [][]byte {
			ls[1], ls[2] = ls[2], ls[1]
			return ls
		}},
		{"delete the last line", "lines were removed from the end", func(ls [][]byte) [][]byte {
			return ls[:4]
		}},
		{"delete the last two lines", "lines were removed from the end", func(ls [][]byte) [][]byte {
			return ls[:3]
		}},
		{"garbage line", "line 6: records do not verify: not a record", func(ls [][]byte) [][]byte {
			return append(ls, []byte("{oops"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeRecords(t, 5)
			rewrite(t, path, tc.change(lines(t, path)))
			_, err := ReadRecords(path)
			require.ErrorIs(t, err, ErrRecordsBroken)
			assert.Contains(t, err.Error(), tc.want)
			_, err = OpenRecords(path)
			require.Error(t, err, "a broken file is never appended to")
		})
	}
	t.Run("delete the file", func(t *testing.T) {
		path := writeRecords(t, 2)
		require.NoError(t, os.Remove(path))
		_, err := ReadRecords(path)
		require.ErrorContains(t, err, "the file is missing but")
	})
}

// Two stations (two Records on one file, as two processes) append at once:
// the chain stays whole.
func TestRecordsConcurrentAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.jsonl")
	a, err := OpenRecords(path)
	require.NoError(t, err)
	b, err := OpenRecords(path)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i, r := range []*Records{a, b, a, b} {
		wg.Go(func() {
			for j := range 10 {
				_, err := r.Append(Record{Kind: KindStored, CN: fmt.Sprintf("dev-%d-%d", i, j)})
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	recs, err := ReadRecords(path)
	require.NoError(t, err)
	assert.Len(t, recs, 40)
}
