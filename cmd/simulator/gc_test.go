package main

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestApplyServeGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })

	assert.True(t, applyServeGC(func(string) string { return "" }))
	assert.Equal(t, serveGCPercent, debug.SetGCPercent(100), "without $GOGC serve raises the target")

	assert.False(t, applyServeGC(func(k string) string {
		if k == "GOGC" {
			return "50"
		}
		return ""
	}))
	assert.Equal(t, 100, debug.SetGCPercent(100), "$GOGC is left to the runtime")
}
