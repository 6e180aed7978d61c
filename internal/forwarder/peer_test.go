package forwarder

import "testing"

func TestLoopbackPeer(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:5000":   true,
		"127.8.9.10:1":     true,
		"[::1]:443":        true,
		"192.168.1.10:999": false,
		"[fe80::1]:80":     false,
		"nonsense":         false,
	} {
		if got := loopbackPeer(addr); got != want {
			t.Errorf("loopbackPeer(%q) = %v, want %v", addr, got, want)
		}
	}
}
