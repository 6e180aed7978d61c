package fakemender

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// Inventory limits (§6).
const (
	MaxInventoryAttributes = 100
	MaxAttributeNameLen    = 1024
)

// invAttr is one stored inventory-scope attribute. Value is a string, a
// float64, a []string or a []float64.
type invAttr struct {
	Value       any    `json:"value"`
	Description string `json:"description,omitempty"`
}

// rawAttr is one element of the device's PUT/PATCH body before validation.
type rawAttr struct {
	Name        string          `json:"name"`
	Value       json.RawMessage `json:"value"`
	Description *string         `json:"description"`
}

// parseInventory validates a PUT/PATCH body: an array of at most 100
// attributes, names 1..1024 characters, values a string, a number or a
// homogeneous array of strings or of numbers (§6, §11.11).
func parseInventory(body []byte) (map[string]invAttr, error) {
	var raws []rawAttr
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, fmt.Errorf("failed to decode attributes: want a JSON array of {name, value}: %v", err)
	}
	if len(raws) > MaxInventoryAttributes {
		return nil, fmt.Errorf("too many attributes: %d, the limit is %d", len(raws), MaxInventoryAttributes)
	}
	out := make(map[string]invAttr, len(raws))
	for i, ra := range raws {
		if n := utf8.RuneCountInString(ra.Name); n < 1 || n > MaxAttributeNameLen {
			return nil, fmt.Errorf("attribute %d: name must be 1..%d characters", i, MaxAttributeNameLen)
		}
		v, err := normalizeValue(ra.Value)
		if err != nil {
			return nil, fmt.Errorf("attribute %q: %w", ra.Name, err)
		}
		a := invAttr{Value: v}
		if ra.Description != nil {
			a.Description = *ra.Description
		}
		out[ra.Name] = a
	}
	return out, nil
}

var errBadValue = errors.New("value must be a string, a number or an array of only strings or only numbers")

// normalizeValue decodes an attribute value into string, float64, []string
// or []float64; anything else (bool, null, object, mixed array) is an error.
func normalizeValue(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, errBadValue
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errBadValue
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case json.Number:
		return v.Float64()
	case []any:
		if len(v) == 0 {
			return []string{}, nil
		}
		switch v[0].(type) {
		case string:
			out := make([]string, len(v))
			for i, e := range v {
				s, ok := e.(string)
				if !ok {
					return nil, errBadValue
				}
				out[i] = s
			}
			return out, nil
		case json.Number:
			out := make([]float64, len(v))
			for i, e := range v {
				n, ok := e.(json.Number)
				if !ok {
					return nil, errBadValue
				}
				f, err := n.Float64()
				if err != nil {
					return nil, errBadValue
				}
				out[i] = f
			}
			return out, nil
		}
	}
	return nil, errBadValue
}

// cloneValue copies slice values so callers cannot alias stored state.
func cloneValue(v any) any {
	switch v := v.(type) {
	case []string:
		return slices.Clone(v)
	case []float64:
		return slices.Clone(v)
	}
	return v
}

func (s *Server) handleInventoryPut(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	s.updateInventory(w, r, rc, true)
}

func (s *Server) handleInventoryPatch(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	s.updateInventory(w, r, rc, false)
}

// updateInventory is the device inventory PUT (replace) and PATCH (upsert);
// success is 200 with an empty body (§11.10).
func (s *Server) updateInventory(w http.ResponseWriter, r *http.Request, rc *reqCtx, replace bool) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	attrs, err := parseInventory(body)
	if err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[rc.devID]
	if d == nil { // decommissioned between the token check and now
		unauthorized(w, rc)
		return
	}
	next := attrs
	if !replace {
		next = make(map[string]invAttr, len(d.Inventory)+len(attrs))
		maps.Copy(next, d.Inventory)
		maps.Copy(next, attrs)
		if len(next) > MaxInventoryAttributes {
			menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("too many attributes: %d after the update, the limit is %d", len(next), MaxInventoryAttributes), rc.id)
			return
		}
	}
	d.Inventory = next
	d.InventoryUpdated = s.now()
	if s.mutatedLocked(w, rc) {
		w.WriteHeader(http.StatusOK)
	}
}

// Inventory returns a copy of the device's inventory-scope attributes, name
// → value (string, float64, []string or []float64); nil for an unknown
// device.
func (s *Server) Inventory(deviceID string) map[string]any {
	if s.ensure() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[deviceID]
	if d == nil {
		return nil
	}
	out := make(map[string]any, len(d.Inventory))
	for k, a := range d.Inventory {
		out[k] = cloneValue(a.Value)
	}
	return out
}

// inventoryView is the management view of a device: inventory-scope
// attributes, identity-scope attributes from the identity data, and the
// system-scope status and group. Called with s.mu held.
func (d *device) inventoryView() menderapi.InventoryDevice {
	out := menderapi.InventoryDevice{ID: d.ID, UpdatedTS: d.UpdatedTS, Attributes: []menderapi.InventoryMgmtAttribute{}}
	if d.InventoryUpdated.After(out.UpdatedTS) {
		out.UpdatedTS = d.InventoryUpdated
	}
	for _, name := range sortedKeys(d.Inventory) {
		out.Attributes = append(out.Attributes, menderapi.InventoryMgmtAttribute{Name: name, Value: cloneValue(d.Inventory[name].Value), Scope: "inventory"})
	}
	for _, name := range sortedKeys(d.IdentityData) {
		out.Attributes = append(out.Attributes, menderapi.InventoryMgmtAttribute{Name: name, Value: d.IdentityData[name], Scope: "identity"})
	}
	if d.Group != "" {
		out.Attributes = append(out.Attributes, menderapi.InventoryMgmtAttribute{Name: "group", Value: d.Group, Scope: "system"})
	}
	out.Attributes = append(out.Attributes, menderapi.InventoryMgmtAttribute{Name: "status", Value: d.status(), Scope: "system"})
	return out
}

// handleInventoryMgmt is GET /api/management/v1/inventory/devices/{id}.
func (s *Server) handleInventoryMgmt(w http.ResponseWriter, _ *http.Request, rc *reqCtx) {
	s.mu.Lock()
	d := s.devices[rc.params["id"]]
	var out menderapi.InventoryDevice
	if d != nil {
		out = d.inventoryView()
	}
	s.mu.Unlock()
	if d == nil {
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// inventoryFilter is one attribute equality filter of the device list.
type inventoryFilter struct{ scope, name, value string }

// matches reports whether an attribute of dev equals the filter value; an
// array attribute matches when one element does, a number when its
// decimal form does.
func (f inventoryFilter) matches(dev menderapi.InventoryDevice) bool {
	for _, a := range dev.Attributes {
		if a.Scope != f.scope || a.Name != f.name {
			continue
		}
		var vals []string
		switch v := a.Value.(type) {
		case string:
			vals = []string{v}
		case float64:
			vals = []string{strconv.FormatFloat(v, 'f', -1, 64)}
		case []string:
			vals = v
		case []float64:
			for _, n := range v {
				vals = append(vals, strconv.FormatFloat(n, 'f', -1, 64))
			}
		default:
			vals = []string{fmt.Sprint(v)}
		}
		if slices.Contains(vals, f.value) {
			return true
		}
	}
	return false
}

// handleInventoryList is GET /api/management/v1/inventory/devices: every
// device sorted by id, paged, filtered by group=NAME and by any other
// [SCOPE/]NAME=[eq:]VALUE query (scope inventory by default).
func (s *Server) handleInventoryList(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	pg, ok := parsePagingOrFail(w, r, rc)
	if !ok {
		return
	}
	var filters []inventoryFilter
	for key, vals := range r.URL.Query() {
		switch key {
		case "page", "per_page", "sort":
			continue
		case "group":
			key = "system/group"
		}
		scope, name, found := strings.Cut(key, "/")
		if !found {
			scope, name = "inventory", key
		}
		switch scope {
		case "inventory", "identity", "system":
		default:
			menderapi.WriteError(w, http.StatusBadRequest, fmt.Sprintf("filter %q: scope must be inventory, identity or system", key), rc.id)
			return
		}
		for _, v := range vals {
			filters = append(filters, inventoryFilter{scope: scope, name: name, value: strings.TrimPrefix(v, "eq:")})
		}
	}
	s.mu.Lock()
	out := []menderapi.InventoryDevice{}
	for _, id := range sortedKeys(s.devices) {
		v := s.devices[id].inventoryView()
		if !slices.ContainsFunc(filters, func(f inventoryFilter) bool { return !f.matches(v) }) {
			out = append(out, v)
		}
	}
	s.mu.Unlock()
	writePage(w, r, pg, out)
}

// groupNameRE is what Mender allows as a group name.
var groupNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// SetGroup puts the device into group (the system-scope group attribute);
// "" removes it from its group. Errors wrap ErrNotFound or ErrInvalid.
func (s *Server) SetGroup(deviceID, group string) error {
	if err := s.ensure(); err != nil {
		return err
	}
	if group != "" && !groupNameRE.MatchString(group) {
		return fmt.Errorf("group %q: %w: want letters, digits, _ and - only", group, ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[deviceID]
	if d == nil {
		return fmt.Errorf("device %s: %w", deviceID, ErrNotFound)
	}
	d.Group = group
	return s.saveLocked()
}

// handleSetGroup is PUT /api/management/v1/inventory/devices/{id}/group
// {"group": NAME} → 204; 400 for a bad name; 404.
func (s *Server) handleSetGroup(w http.ResponseWriter, r *http.Request, rc *reqCtx) {
	body, ok := readBody(w, r, rc)
	if !ok {
		return
	}
	var g struct {
		Group string `json:"group"`
	}
	if err := json.Unmarshal(body, &g); err != nil || g.Group == "" {
		menderapi.WriteError(w, http.StatusBadRequest, `body must be {"group":"NAME"}`, rc.id)
		return
	}
	err := s.SetGroup(rc.params["id"], g.Group)
	switch {
	case errors.Is(err, ErrInvalid):
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
	case errors.Is(err, ErrNotFound):
		menderapi.WriteError(w, http.StatusNotFound, "device not found", rc.id)
	case err != nil:
		s.log.Error("set group", "err", err, "request_id", rc.id)
		menderapi.WriteError(w, http.StatusInternalServerError, "internal error", rc.id)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
