package identity_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/identity"
)

// FuzzIdentityParse checks that Parse never panics, and that any map it
// returns survives re-serialisation as key=value lines: parsing the lines
// again gives the same map.
func FuzzIdentityParse(f *testing.F) {
	for _, seed := range []string{
		"", "mac=52:54:00:ab:cd:ef\n", "ip=1\nip=2\n", "a=b=c", "\n\na=1\r\n\r\n",
		"a=1\r\r\n", " k =v \n", "=x", "novalue", "a=x\ry\n", "a=\n", "k\r=v\n", "a=\xff\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := identity.Parse(data)
		if err != nil {
			assert.ErrorIs(t, err, identity.ErrMalformed)
			assert.Nil(t, m)
			return
		}
		require.NotNil(t, m)
		var buf bytes.Buffer
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			require.NotEmpty(t, k)
			require.NotContains(t, k, "=")
			for _, v := range m[k] {
				require.False(t, strings.ContainsRune(v, '\n'), "value %q holds a newline", v)
				buf.WriteString(k + "=" + v + "\n")
			}
		}
		again, err := identity.Parse(buf.Bytes())
		require.NoError(t, err, "re-serialised output %q must parse", buf.String())
		assert.Equal(t, m, again)
	})
}
