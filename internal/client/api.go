package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// maxAttributeName is the longest inventory attribute name the server takes.
const maxAttributeName = 1024

// SendInventory sends the device inventory with PUT (replacing the server's
// set), falling back to PATCH when the server answers 405. The payload is the
// script attributes (Options.Inventory) overridden by device_type,
// artifact_name and mender_client_version, plus mtls_cert_subject,
// mtls_cert_serial and mtls_cert_not_after when a client certificate is
// configured; names sorted, values strings or arrays of strings. Success is
// 200; anything else is an *APIError.
func (c *Client) SendInventory(ctx context.Context) error {
	attrs, err := c.inventoryAttributes(ctx)
	if err != nil {
		return err
	}
	body, err := json.Marshal(attrs)
	if err != nil {
		return fmt.Errorf("inventory: encode attributes: %w", err)
	}
	res, err := c.apiCall(ctx, OpInventory, http.MethodPut, menderapi.PathInventoryAttributes, body)
	if err != nil {
		return err
	}
	if res.status == http.StatusMethodNotAllowed {
		c.log.Debug("inventory PUT not allowed, using PATCH", "server", c.currentServer())
		res, err = c.apiCall(ctx, OpInventory, http.MethodPatch, menderapi.PathInventoryAttributes, body)
		if err != nil {
			return err
		}
	}
	if res.status != http.StatusOK {
		return c.apiError(OpInventory, res)
	}
	return nil
}

func (c *Client) currentServer() string {
	_, s := c.current()
	return s
}

// inventoryAttributes builds the inventory payload.
func (c *Client) inventoryAttributes(ctx context.Context) ([]menderapi.InventoryAttribute, error) {
	all := menderapi.Attributes{}
	if c.opts.Inventory != nil {
		ictx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		script, err := c.opts.Inventory(ictx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("inventory: collect attributes: %w", err)
		}
		for k, v := range script {
			all[k] = v
		}
	}
	all["device_type"] = []string{c.opts.DeviceType}
	all["artifact_name"] = []string{c.currentArtifactName()}
	all["mender_client_version"] = []string{c.opts.ClientVersion}
	if cred := c.opts.TLSCredential; cred != nil {
		if chain := cred.CertificateChain(); len(chain) > 0 && chain[0] != nil {
			leaf := chain[0]
			all["mtls_cert_subject"] = []string{leaf.Subject.String()}
			all["mtls_cert_serial"] = []string{strings.ToLower(leaf.SerialNumber.Text(16))}
			all["mtls_cert_not_after"] = []string{leaf.NotAfter.UTC().Format(time.RFC3339)}
		}
	}
	names := make([]string, 0, len(all))
	for k := range all {
		if k == "" || len(k) > maxAttributeName {
			c.log.Warn("inventory attribute skipped: name must be 1 to 1024 bytes", "name_len", len(k))
			continue
		}
		names = append(names, k)
	}
	slices.Sort(names)
	out := make([]menderapi.InventoryAttribute, 0, len(names))
	for _, k := range names {
		var v any
		switch vals := all[k]; len(vals) {
		case 1:
			v = vals[0]
		case 0:
			v = []string{} // an empty array, never JSON null (the server refuses null)
		default:
			v = slices.Clone(vals)
		}
		out = append(out, menderapi.InventoryAttribute{Name: k, Value: v})
	}
	return out, nil
}

// CheckUpdate asks for the next deployment: v2 POST with device_provides,
// and on 404 (servers without v2, such as open-source Mender) the v1 GET with
// artifact_name and device_type. It returns nil, nil on 204 (nothing to do),
// validated instructions on 200, and an *APIError otherwise.
func (c *Client) CheckUpdate(ctx context.Context) (*menderapi.DeploymentInstructions, error) {
	artifact, devType := c.currentArtifactName(), c.opts.DeviceType
	body, err := json.Marshal(menderapi.NextRequestV2{DeviceProvides: map[string]string{
		"device_type":   devType,
		"artifact_name": artifact,
	}})
	if err != nil {
		return nil, fmt.Errorf("next: encode request: %w", err)
	}
	res, err := c.apiCall(ctx, OpNext, http.MethodPost, menderapi.PathNextV2, body)
	if err != nil {
		return nil, err
	}
	if res.status == http.StatusNotFound {
		q := url.Values{"artifact_name": {artifact}, "device_type": {devType}}
		res, err = c.apiCall(ctx, OpNext, http.MethodGet, menderapi.PathNextV1+"?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
	}
	switch res.status {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
		var d menderapi.DeploymentInstructions
		if err := json.Unmarshal(res.body, &d); err != nil {
			return nil, fmt.Errorf("next: decode deployment instructions: %w", err)
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("next: invalid deployment instructions: %w", err)
		}
		return &d, nil
	}
	return nil, c.apiError(OpNext, res)
}

// ReportStatus reports a deployment status (one of the nine a device may
// send, see menderapi.ValidDeviceStatus). Success is 204; a 409 matches
// ErrAborted (the deployment was aborted: stop working on it); anything else
// is an *APIError.
func (c *Client) ReportStatus(ctx context.Context, deploymentID, status string) error {
	if deploymentID == "" {
		return errors.New("status: deployment id is empty")
	}
	if !menderapi.ValidDeviceStatus(status) {
		return fmt.Errorf("status: %q is not a status a device may report (use downloading, installing, rebooting, success, failure, already-installed or pause_before_*)", status)
	}
	body, err := json.Marshal(menderapi.StatusReport{Status: status})
	if err != nil {
		return fmt.Errorf("status: encode report: %w", err)
	}
	res, err := c.apiCall(ctx, OpStatus, http.MethodPut, menderapi.DeploymentStatusPath(url.PathEscape(deploymentID)), body)
	if err != nil {
		return err
	}
	if res.status != http.StatusNoContent {
		return c.apiError(OpStatus, res)
	}
	return nil
}

// UploadLog uploads deployment log messages (at least one). Success is 204;
// anything else is an *APIError.
func (c *Client) UploadLog(ctx context.Context, deploymentID string, msgs []menderapi.LogMessage) error {
	if deploymentID == "" {
		return errors.New("log: deployment id is empty")
	}
	if len(msgs) == 0 {
		return errors.New("log: no messages (the server refuses an empty log)")
	}
	body, err := json.Marshal(menderapi.DeploymentLog{Messages: msgs})
	if err != nil {
		return fmt.Errorf("log: encode messages: %w", err)
	}
	res, err := c.apiCall(ctx, OpLog, http.MethodPut, menderapi.DeploymentLogPath(url.PathEscape(deploymentID)), body)
	if err != nil {
		return err
	}
	if res.status != http.StatusNoContent {
		return c.apiError(OpLog, res)
	}
	return nil
}
