package forwarder

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// maxNextBody bounds a deployments/next answer read for rewriting.
const maxNextBody = 1 << 20

// isNextRequest reports whether r asks for deployment instructions: v1 GET
// or POST, v2 POST.
func isNextRequest(r *http.Request) bool {
	switch r.URL.Path {
	case menderapi.PathNextV1:
		return r.Method == http.MethodGet || r.Method == http.MethodPost
	case menderapi.PathNextV2:
		return r.Method == http.MethodPost
	}
	return false
}

// rewriteNext replaces, in a deployments/next answer, an artifact
// source.uri on one of servers' hosts by a /download/ link of this
// forwarder, and fixes Content-Length. An answer that is not the expected
// JSON passes unchanged.
func (f *Forwarder) rewriteNext(resp *http.Response, servers []string) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxNextBody+1))
	_ = resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read the deployments/next answer: %w", err)
	}
	if len(data) > maxNextBody {
		return fmt.Errorf("deployments/next answer is larger than %d bytes", maxNextBody)
	}
	if out, ok := f.rewriteLinks(data, servers); ok {
		data = out
		f.log.Debug("forwarder: artifact link rewritten to go through the forwarder")
	}
	resp.Body = io.NopCloser(bytes.NewReader(data))
	resp.ContentLength = int64(len(data))
	resp.Header.Set("Content-Length", strconv.Itoa(len(data)))
	resp.Header.Del("Content-Encoding")
	return nil
}

// rewriteLinks returns data with artifact.source.uri rewritten, and
// whether it changed anything. Other members keep their values.
func (f *Forwarder) rewriteLinks(data []byte, servers []string) ([]byte, bool) {
	var doc map[string]json.RawMessage
	if json.Unmarshal(data, &doc) != nil {
		return nil, false
	}
	var artifact map[string]json.RawMessage
	if json.Unmarshal(doc["artifact"], &artifact) != nil {
		return nil, false
	}
	var source map[string]json.RawMessage
	if json.Unmarshal(artifact["source"], &source) != nil {
		return nil, false
	}
	var uri string
	if json.Unmarshal(source["uri"], &uri) != nil {
		return nil, false
	}
	u, err := url.Parse(uri)
	if err != nil || !onServer(u, servers) {
		return nil, false
	}
	local := f.url + downloadPrefix + base64.RawURLEncoding.EncodeToString([]byte(uri))
	var ok bool
	if source["uri"], ok = marshal(local); !ok {
		return nil, false
	}
	if artifact["source"], ok = marshal(source); !ok {
		return nil, false
	}
	if doc["artifact"], ok = marshal(artifact); !ok {
		return nil, false
	}
	out, ok := marshal(doc)
	return out, ok
}

func marshal(v any) (json.RawMessage, bool) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep & in presigned queries readable
	if enc.Encode(v) != nil {
		return nil, false
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), true
}

// decodeDownload turns the part of a /download/ path after the prefix back
// into the artifact URL, which must be on one of servers' hosts.
func decodeDownload(enc string, servers []string) (*url.URL, error) {
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("download link %s...: not a link this forwarder made", truncate(enc, 16))
	}
	u, err := url.Parse(string(raw))
	if err != nil || !u.IsAbs() {
		return nil, fmt.Errorf("download link: not a link this forwarder made")
	}
	if !onServer(u, servers) {
		return nil, fmt.Errorf("download link for %s refused: only links on the configured servers go through the forwarder", u.Host)
	}
	return u, nil
}

// onServer reports whether u has the scheme and host (port included,
// defaults made explicit) of one of servers.
func onServer(u *url.URL, servers []string) bool {
	want := origin(u)
	if want == "" {
		return false
	}
	for _, s := range servers {
		if su, err := url.Parse(s); err == nil && origin(su) == want {
			return true
		}
	}
	return false
}

// origin is "scheme://host:port" in lower case, "" for non-http(s) URLs.
func origin(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	switch {
	case scheme != "http" && scheme != "https", u.Hostname() == "":
		return ""
	case port == "" && scheme == "https":
		port = "443"
	case port == "":
		port = "80"
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
