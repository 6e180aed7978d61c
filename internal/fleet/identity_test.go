package fleet

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestParseShard(t *testing.T) {
	tests := []struct {
		in      string
		want    Shard
		wantErr bool
	}{
		{in: "0/1", want: Shard{0, 1}},
		{in: "3/4", want: Shard{3, 4}},
		{in: " 2/10 ", want: Shard{2, 10}},
		{in: "4/4", wantErr: true},
		{in: "-1/4", wantErr: true},
		{in: "1/0", wantErr: true},
		{in: "1", wantErr: true},
		{in: "a/b", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseShard(tt.in)
			if tt.wantErr {
				assert.ErrorIs(t, err, ErrInvalid)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.want.String(), got.String())
		})
	}
	assert.Equal(t, "0/1", Shard{}.String(), "the zero value is the whole fleet")
}

// TestShardsNeverCollide checks, over many fleet sizes and shard counts,
// that the shards partition the indices exactly (no index twice, none
// missing, sizes within one) and that no two devices of the fleet share a
// MAC address.
func TestShardsNeverCollide(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	type tc struct{ count, shards int }
	cases := []tc{{0, 1}, {1, 1}, {1, 7}, {10, 3}, {999, 1000}, {1000, 1000}, {10000, 7}, {65536, 13}}
	for range 300 {
		cases = append(cases, tc{r.IntN(5000), 1 + r.IntN(64)})
	}
	prefix := MACPrefix{0x02, 0x10}
	for _, c := range cases {
		owner := make([]int, c.count)
		for i := range owner {
			owner[i] = -1
		}
		macs := make(map[string]int, c.count)
		minSize, maxSize := c.count+1, -1
		prevHi := 0
		for s := range c.shards {
			lo, hi := Shard{Index: s, Total: c.shards}.Range(c.count)
			require.Equal(t, prevHi, lo, "count %d shards %d: shard %d starts where the previous ended", c.count, c.shards, s)
			prevHi = hi
			minSize, maxSize = min(minSize, hi-lo), max(maxSize, hi-lo)
			for i := lo; i < hi; i++ {
				require.Equal(t, -1, owner[i], "count %d shards %d: index %d in two shards", c.count, c.shards, i)
				owner[i] = s
				mac := prefix.MAC(i)
				_, dup := macs[mac]
				require.False(t, dup, "count %d: MAC %s twice", c.count, mac)
				macs[mac] = i
			}
		}
		assert.Equal(t, c.count, prevHi, "count %d shards %d: the last shard ends at the fleet size", c.count, c.shards)
		assert.Len(t, macs, c.count)
		if c.count > 0 {
			assert.LessOrEqual(t, maxSize-minSize, 1, "count %d shards %d: balanced", c.count, c.shards)
		}
	}
}

func TestMACPrefix(t *testing.T) {
	tests := []struct {
		in       string
		index    int
		wantMAC  string
		capacity int
		wantErr  bool
	}{
		{in: "02", index: 0, wantMAC: "02:00:00:00:00:00", capacity: 1 << 40},
		{in: "02:4d", index: 10000, wantMAC: "02:4d:00:00:27:10", capacity: 1 << 32},
		{in: "ff-00-01-02-03", index: 255, wantMAC: "ff:00:01:02:03:ff", capacity: 256},
		{in: "AB:cd", index: 1, wantMAC: "ab:cd:00:00:00:01", capacity: 1 << 32},
		{in: "", wantErr: true},
		{in: "02:03:04:05:06:07", wantErr: true},
		{in: "0g", wantErr: true},
		{in: "123", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := ParseMACPrefix(tt.in)
			if tt.wantErr {
				assert.ErrorIs(t, err, ErrInvalid)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantMAC, p.MAC(tt.index))
			assert.Equal(t, tt.capacity, p.Capacity())
		})
	}
}

func TestParseAttribute(t *testing.T) {
	tests := []struct {
		in      string
		multi   bool
		want    Attribute
		wantErr bool
	}{
		{in: "site=lab", want: Attribute{"site", []string{"lab"}}},
		{in: "group=a|b|c", multi: true, want: Attribute{"group", []string{"a", "b", "c"}}},
		{in: "group=a|b", multi: false, want: Attribute{"group", []string{"a|b"}}},
		{in: "url=http://x?a=b", want: Attribute{"url", []string{"http://x?a=b"}}},
		{in: "=v", wantErr: true},
		{in: "k=", wantErr: true},
		{in: "novalue", wantErr: true},
		{in: "g=a||b", multi: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAttribute(tt.in, tt.multi)
			if tt.wantErr {
				assert.ErrorIs(t, err, ErrInvalid)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestIdentityAndInventoryAttributes(t *testing.T) {
	id := identityAttributes("02:00:00:00:00:05", []Attribute{{"site", []string{"lab"}}, {"tag", []string{"x", "y"}}})
	assert.Equal(t, menderapi.Attributes{"mac": {"02:00:00:00:00:05"}, "site": {"lab"}, "tag": {"x", "y"}}, id)
	assert.Equal(t, `{"mac":"02:00:00:00:00:05","site":"lab","tag":["x","y"]}`, id.IdentityJSON())

	attrs := []Attribute{{"group", []string{"g1", "g2", "g3"}}, {"fixed", []string{"v"}}}
	for i, want := range []string{"g1", "g2", "g3", "g1"} {
		inv := inventoryAttributes(i, attrs)
		assert.Equal(t, []string{want}, inv["group"], "device %d picks value %d", i, i%3)
		assert.Equal(t, []string{"v"}, inv["fixed"])
	}
}
