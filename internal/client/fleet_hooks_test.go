package client

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

func TestStepFollowsRunsWaitRules(t *testing.T) {
	const (
		retry     = 80 * time.Second
		inventory = time.Hour
		update    = 10 * time.Minute
	)
	base := min(retry, time.Minute) / 8 // first backoff ceiling
	f := newFakeServer(t)
	f.on(routeAuth, reply{status: http.StatusUnauthorized, body: `{"error":"dev auth: unauthorized"}`})
	f.on(routeNextV2, reply{status: http.StatusServiceUnavailable}, reply{status: http.StatusServiceUnavailable},
		reply{status: http.StatusTooManyRequests, retryAfter: 42 * time.Second})
	var deployments []string
	c, _ := memClient(t, f, func(o *Options) {
		o.RetryPollInterval, o.InventoryPollInterval, o.UpdatePollInterval = retry, inventory, update
		o.OnDeployment = func(_ context.Context, d *menderapi.DeploymentInstructions) { deployments = append(deployments, d.ID) }
	})
	var inv, upd StepState
	ctx := t.Context()

	assert.Equal(t, 500*time.Millisecond, c.FirstContactDelay(), "rand 0.5 of the one-second first-contact spread")
	assert.Equal(t, retry, c.Step(ctx, JobInventory, &inv), "pending: wait RetryPollInterval (jitter at rand 0.5 is exact)")
	assert.False(t, c.Authenticated())
	assert.Equal(t, inventory, c.Step(ctx, JobInventory, &inv), "accepted: the inventory interval")
	assert.True(t, c.Authenticated())

	tests := []struct {
		name string
		want time.Duration
	}{
		{"503: backoff from the first ceiling", base / 2},
		{"503 again: the ceiling doubles", base},
		{"429 with Retry-After: exactly that", 42 * time.Second},
		{"success: the update interval", update},
	}
	for _, tt := range tests {
		got := c.Step(ctx, JobUpdate, &upd)
		if tt.want == 42*time.Second {
			assert.InDelta(t, float64(tt.want), float64(got), float64(2*time.Second), tt.name) // an HTTP-date has whole seconds
			continue
		}
		assert.Equal(t, tt.want, got, tt.name)
	}
	f.on(routeNextV2, reply{status: http.StatusServiceUnavailable})
	assert.Equal(t, base/2, c.Step(ctx, JobUpdate, &upd), "a success reset the backoff")

	f.on(routeNextV2, reply{status: http.StatusOK, body: `{"id":"dep-1","artifact":{"artifact_name":"r2","source":{"uri":"https://x/a"},"device_types_compatible":["qemux86-64"]}}`})
	assert.Equal(t, update, c.Step(ctx, JobUpdate, &upd))
	assert.Equal(t, []string{"dep-1"}, deployments, "instructions go to OnDeployment, as in Run")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.Zero(t, c.Step(cctx, JobInventory, &inv), "a done context ends the step without a wait")
}
