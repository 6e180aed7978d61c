package fakemender

import (
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVerifiedTokenCache: a token's signature is checked once, later
// calls get the cached claims; a token differing in any byte is checked on
// its own; the cache is bounded.
func TestVerifiedTokenCache(t *testing.T) {
	k, err := generateSigningKey(AlgEdDSA)
	require.NoError(t, err)
	tok, err := k.sign(DeviceClaims{ID: "j", Subject: "d", Issuer: IssuerDevice, Expires: time.Now().Add(time.Hour).Unix(), Device: true})
	require.NoError(t, err)
	first, err := k.verify(tok)
	require.NoError(t, err)
	second, err := k.verify(tok)
	require.NoError(t, err)
	assert.Same(t, first, second, "the second check of the same token comes from the cache")

	forged := tok[:len(tok)-2] + "AA"
	if forged == tok {
		forged = tok[:len(tok)-2] + "BB"
	}
	_, err = k.verify(forged)
	assert.True(t, errors.Is(err, errToken), "a changed signature is checked, not taken from the cache: %v", err)

	for i := range maxVerifiedTokens + 10 {
		k.verified.put(sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)}), first)
	}
	k.verified.mu.Lock()
	n := len(k.verified.m)
	k.verified.mu.Unlock()
	assert.LessOrEqual(t, n, maxVerifiedTokens)
}
