package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAmbassadorLimitFlags(t *testing.T) {
	f := ambassadorFlags{backend: "https://mender.example.com", user: "u", password: "p", tlsMin: "1.2",
		newIdentitiesPerHour: -1, maxInflightPerCert: 3, bodyTimeout: 5 * time.Second, upstreamWait: 2 * time.Second}
	o, err := f.options()
	require.NoError(t, err)
	assert.Equal(t, 3, o.MaxInflightPerCert)
	assert.Equal(t, 5*time.Second, o.BodyReadTimeout)
	assert.Equal(t, 2*time.Second, o.UpstreamWaitTimeout)

	f.bodyTimeout, f.upstreamWait = -time.Second, -time.Second
	_, err = f.options()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--body-timeout")
	assert.Contains(t, err.Error(), "--upstream-wait")

	var out, errb bytes.Buffer
	err = cmdAmbassador(t.Context(), []string{"--upstream-wait", "soon"}, &out, &errb, func(string) string { return "" })
	require.Error(t, err, "not a duration")
	assert.Contains(t, errb.String()+err.Error(), "upstream-wait")
}
