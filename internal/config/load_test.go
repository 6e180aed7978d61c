package config_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mender-mtls/mtls-agent/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// env is a throwaway set of Mender directories and config paths.
type env struct {
	dir                   string
	main, fallback        string
	data, datastore, mtls string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{
		dir:       dir,
		main:      filepath.Join(dir, "etc", "mender.conf"),
		fallback:  filepath.Join(dir, "datastore", "mender.conf"),
		data:      filepath.Join(dir, "data"),
		datastore: filepath.Join(dir, "datastore"),
		mtls:      filepath.Join(dir, "mtls"),
	}
	for _, d := range []string{filepath.Dir(e.main), e.data, e.datastore, e.mtls} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	return e
}

func (e *env) opts() config.LoadOptions {
	return config.LoadOptions{
		MainPath: e.main, FallbackPath: e.fallback,
		DataDir: e.data, DatastoreDir: e.datastore, MTLSDir: e.mtls,
	}
}

// write writes content to path unless content is "" (file absent).
func write(t *testing.T, path, content string) {
	t.Helper()
	if content == "" {
		return
	}
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

// load writes main and fallback ("" = absent) and loads them.
func (e *env) load(t *testing.T, main, fallback string) (*config.Config, error) {
	t.Helper()
	write(t, e.main, main)
	write(t, e.fallback, fallback)
	return config.Load(e.opts())
}

// problems splits an errors.Join result into its errors.
func problems(t *testing.T, err error) []error {
	t.Helper()
	require.Error(t, err)
	j, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "error %q should come from errors.Join", err)
	return j.Unwrap()
}

func TestLoadStock(t *testing.T) {
	e := newEnv(t)
	main, err := os.ReadFile("testdata/stock-main.conf")
	require.NoError(t, err)
	fallback, err := os.ReadFile("testdata/stock-fallback.conf")
	require.NoError(t, err)

	c, err := e.load(t, string(main), string(fallback))
	require.NoError(t, err)

	assert.Empty(t, c.Warnings, "a stock mender.conf has no unknown keys")
	assert.Equal(t, []string{e.fallback, e.main}, c.Sources)
	assert.Equal(t, []string{"https://docker.mender.io"}, c.Servers)
	assert.Equal(t, "dummy", c.TenantToken, "the tenant token is trimmed")
	assert.Equal(t, "standard", c.DeviceTier)
	assert.Equal(t, 30*time.Minute, c.UpdatePollInterval)
	assert.Equal(t, 8*time.Hour, c.InventoryPollInterval)
	assert.Equal(t, 5*time.Minute, c.RetryPollInterval)
	assert.Equal(t, "/etc/mender/server.crt", c.ServerCertificate)
	assert.Equal(t, "/dev/tpmrm0", c.TPMDevice)
	assert.Equal(t, filepath.Join(e.datastore, "device_type"), c.DeviceTypeFile)
	assert.Empty(t, c.CertFile, "no mTLS without HttpsClient or the mTLS files")
	assert.Equal(t, filepath.Join(e.datastore, "mender-agent.pem"), c.AuthKeyFile)
	assert.True(t, c.AuthKeyGenerated)
	assert.Equal(t, "/dev/mmcblk0p2", c.File.RootfsPartA, "keys from the fallback file are kept")
	assert.Equal(t, 30, c.File.Connectivity.IdleConnTimeoutSeconds)
	assert.True(t, c.File.DBus.Enabled)
	assert.Equal(t, []string{"/etc/mender/artifact-verify-key.pem"}, c.File.ArtifactVerifyKeys)
}

// TestStockGoldenRoundTrip checks the merged stock file against its golden
// JSON, and that loading the golden JSON gives the same File back.
func TestStockGoldenRoundTrip(t *testing.T) {
	e := newEnv(t)
	main, err := os.ReadFile("testdata/stock-main.conf")
	require.NoError(t, err)
	fallback, err := os.ReadFile("testdata/stock-fallback.conf")
	require.NoError(t, err)
	c, err := e.load(t, string(main), string(fallback))
	require.NoError(t, err)

	got, err := json.MarshalIndent(c.File, "", "    ")
	require.NoError(t, err)
	got = append(got, '\n')
	const golden = "testdata/stock-merged.golden.json"
	if *update {
		require.NoError(t, os.WriteFile(golden, got, 0o644))
	}
	want, err := os.ReadFile(golden)
	require.NoError(t, err, "run go test -update to create the golden file")
	assert.Equal(t, string(want), string(got), "merged File differs from %s (go test -update rewrites it)", golden)

	e2 := newEnv(t)
	c2, err := e2.load(t, string(got), "")
	require.NoError(t, err)
	assert.Equal(t, c.File, c2.File, "loading the golden file gives the same File")
}

func TestLoadMerge(t *testing.T) {
	tests := []struct {
		name     string
		fallback string
		main     string
		check    func(t *testing.T, e *env, c *config.Config)
	}{
		{
			name:     "main overrides a key",
			fallback: `{"ServerURL":"https://old.example.com","UpdatePollIntervalSeconds":60}`,
			main:     `{"ServerURL":"https://new.example.com"}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{"https://new.example.com"}, c.Servers)
				assert.Equal(t, time.Minute, c.UpdatePollInterval, "absent in main keeps the fallback value")
			},
		},
		{
			name:     "zero in main overrides",
			fallback: `{"ServerURL":"https://a.example.com","SkipVerify":true,"TenantToken":"t"}`,
			main:     `{"SkipVerify":false,"TenantToken":""}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.False(t, c.SkipVerify, "a false in main is present and wins")
				assert.Empty(t, c.TenantToken, "an empty string in main is present and wins")
			},
		},
		{
			name:     "null in main counts as absent",
			fallback: `{"ServerURL":"https://a.example.com","TenantToken":"tok"}`,
			main:     `{"TenantToken":null}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, "tok", c.TenantToken)
			},
		},
		{
			name:     "nested keys merge per field",
			fallback: `{"ServerURL":"https://a.example.com","HttpsClient":{"Certificate":"/f/cert.pem","Key":"/f/key.pem"}}`,
			main:     `{"HttpsClient":{"Key":"/m/key.pem"}}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, "/f/cert.pem", c.CertFile)
				assert.Equal(t, "/m/key.pem", c.KeyFile)
			},
		},
		{
			name:     "arrays are replaced whole",
			fallback: `{"Servers":[{"ServerURL":"https://a.example.com"},{"ServerURL":"https://b.example.com"}]}`,
			main:     `{"Servers":[{"ServerURL":"https://c.example.com"}]}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{"https://c.example.com"}, c.Servers)
			},
		},
		{
			name:     "only the fallback file",
			fallback: `{"ServerURL":"https://a.example.com"}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{e.fallback}, c.Sources)
				assert.Equal(t, []string{"https://a.example.com"}, c.Servers)
			},
		},
		{
			name: "only the main file",
			main: `{"ServerURL":"https://a.example.com"}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, []string{e.main}, c.Sources)
			},
		},
		{
			name:     "relative paths resolve against the file that set them",
			fallback: `{"ServerURL":"https://a.example.com","ServerCertificate":"server.crt"}`,
			main:     `{"DeviceTypeFile":"dt"}`,
			check: func(t *testing.T, e *env, c *config.Config) {
				assert.Equal(t, filepath.Join(filepath.Dir(e.fallback), "server.crt"), c.ServerCertificate)
				assert.Equal(t, filepath.Join(filepath.Dir(e.main), "dt"), c.DeviceTypeFile)
				require.Len(t, c.Warnings, 2, "each relative path is reported")
				assert.Contains(t, c.Warnings[0], `key "ServerCertificate" is the relative path`)
				assert.Contains(t, c.Warnings[1], `key "DeviceTypeFile" is the relative path`)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.main, tt.fallback)
			require.NoError(t, err)
			tt.check(t, e, c)
		})
	}
}

func TestLoadServers(t *testing.T) {
	tests := []struct {
		name     string
		conf     string
		want     []string
		warnings int
	}{
		{"trailing slash trimmed", `{"ServerURL":"https://m.example.com/"}`, []string{"https://m.example.com"}, 0},
		{"all trailing slashes trimmed", `{"ServerURL":"http://m.example.com:8080//"}`, []string{"http://m.example.com:8080"}, 0},
		{"scheme added", `{"ServerURL":"m.example.com:8443"}`, []string{"https://m.example.com:8443"}, 0},
		{"path prefix kept", `{"ServerURL":"https://m.example.com/mender/"}`, []string{"https://m.example.com/mender"}, 0},
		{"whitespace trimmed", `{"ServerURL":"  https://m.example.com \n"}`, []string{"https://m.example.com"}, 0},
		{
			"servers in order", `{"Servers":[{"ServerURL":"https://b.example.com"},{"ServerURL":"a.example.com/"}]}`,
			[]string{"https://b.example.com", "https://a.example.com"}, 0,
		},
		{
			"duplicates removed with a warning", `{"Servers":[{"ServerURL":"https://a.example.com"},{"ServerURL":"a.example.com/"}]}`,
			[]string{"https://a.example.com"}, 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.conf, "")
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Servers)
			assert.Len(t, c.Warnings, tt.warnings, "warnings: %q", c.Warnings)
		})
	}
}

func TestLoadIntervals(t *testing.T) {
	tests := []struct {
		name                     string
		conf                     string
		update, inventory, retry time.Duration
		count                    int
	}{
		{"defaults", `{"ServerURL":"https://a"}`, 1800 * time.Second, 28800 * time.Second, 300 * time.Second, 0},
		{
			"zero means default",
			`{"ServerURL":"https://a","UpdatePollIntervalSeconds":0,"InventoryPollIntervalSeconds":0,"RetryPollIntervalSeconds":0}`,
			1800 * time.Second, 28800 * time.Second, 300 * time.Second, 0,
		},
		{
			"seconds converted",
			`{"ServerURL":"https://a","UpdatePollIntervalSeconds":5,"InventoryPollIntervalSeconds":7,"RetryPollIntervalSeconds":30,"RetryPollCount":4}`,
			5 * time.Second, 7 * time.Second, 30 * time.Second, 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.conf, "")
			require.NoError(t, err)
			assert.Equal(t, tt.update, c.UpdatePollInterval)
			assert.Equal(t, tt.inventory, c.InventoryPollInterval)
			assert.Equal(t, tt.retry, c.RetryPollInterval)
			assert.Equal(t, tt.count, c.RetryPollCount)
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	const srv = `"ServerURL":"https://a.example.com"`
	const pair = `"HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem"}`
	tests := []struct {
		name     string
		fallback string
		main     string
		key      string
		inFile   string // "main" or "fallback": the file the error names
		contains string
	}{
		{"ServerURL with Servers", "", `{` + srv + `,"Servers":[{"ServerURL":"https://b"}]}`, "Servers", "main", "cannot be used together with ServerURL"},
		{"ServerURL in fallback, Servers in main", `{` + srv + `}`, `{"Servers":[{"ServerURL":"https://b"}]}`, "Servers", "main", "mender.conf); keep only one"},
		{"no server", "", `{"TenantToken":"x"}`, "ServerURL", "main", "is not set and neither is Servers"},
		{"empty Servers", "", `{"Servers":[]}`, "ServerURL", "main", "is not set"},
		{"no server, fallback only", `{}`, "", "ServerURL", "fallback", "is not set"},
		{"empty Servers entry", "", `{"Servers":[{"ServerURL":"https://b"},{"ServerURL":""}]}`, "Servers[1].ServerURL", "main", "is empty"},
		{"Servers entry without ServerURL", "", `{"Servers":[{}]}`, "Servers[0].ServerURL", "main", "is empty"},
		{"Key without Certificate", "", `{` + srv + `,"HttpsClient":{"Key":"/k.pem"}}`, "HttpsClient.Key", "main", "HttpsClient.Certificate is empty"},
		{"Certificate without Key", "", `{` + srv + `,"HttpsClient":{"Certificate":"/c.pem"}}`, "HttpsClient.Certificate", "main", "HttpsClient.Key is empty"},
		{"Certificate in fallback without Key", `{"HttpsClient":{"Certificate":"/c.pem"}}`, `{` + srv + `}`, "HttpsClient.Certificate", "fallback", "HttpsClient.Key is empty"},
		{"pkcs11 mTLS key", "", `{` + srv + `,"HttpsClient":{"Certificate":"/c.pem","Key":"pkcs11:token=dev;object=k"}}`, "HttpsClient.Key", "main", "pkcs11 keys are not supported by this agent; use a key file or a TPM handle"},
		{"pkcs11 auth key", "", `{` + srv + `,"Security":{"AuthPrivateKey":"PKCS11:object=k"}}`, "Security.AuthPrivateKey", "main", "pkcs11 keys are not supported by this agent; use a key file or a TPM handle"},
		{"HttpsClient.SSLEngine", "", `{` + srv + `,"HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem","SSLEngine":"pkcs11"}}`, "HttpsClient.SSLEngine", "main", "not supported"},
		{"Security.SSLEngine", "", `{` + srv + `,"Security":{"SSLEngine":"tpm2"}}`, "Security.SSLEngine", "main", "not supported"},
		{"negative update interval", "", `{` + srv + `,"UpdatePollIntervalSeconds":-1}`, "UpdatePollIntervalSeconds", "main", "must not be negative"},
		{"negative inventory interval", "", `{` + srv + `,"InventoryPollIntervalSeconds":-5}`, "InventoryPollIntervalSeconds", "main", "must not be negative"},
		{"negative retry interval", `{"RetryPollIntervalSeconds":-300}`, `{` + srv + `}`, "RetryPollIntervalSeconds", "fallback", "must not be negative"},
		{"negative retry count", "", `{` + srv + `,"RetryPollCount":-2}`, "RetryPollCount", "main", "must not be negative"},
		{"negative idle timeout", "", `{` + srv + `,"Connectivity":{"IdleConnTimeoutSeconds":-2}}`, "Connectivity.IdleConnTimeoutSeconds", "main", "must not be negative"},
		{"ArtifactVerifyKey with ArtifactVerifyKeys", "", `{` + srv + `,"ArtifactVerifyKey":"/a","ArtifactVerifyKeys":["/b"]}`, "ArtifactVerifyKeys", "main", "cannot be used together with ArtifactVerifyKey"},
		{"unknown DeviceTier", "", `{` + srv + `,"DeviceTier":"gold"}`, "DeviceTier", "main", `"gold"; it must be one of standard, micro or system`},
		{"DeviceTier is case sensitive", "", `{` + srv + `,"DeviceTier":"Standard"}`, "DeviceTier", "main", "must be one of"},
		{"unparsable ServerURL", "", `{"ServerURL":"https://a b.example.com"}`, "ServerURL", "main", "is not a valid URL"},
		{"ServerURL without host", "", `{"ServerURL":"https://"}`, "ServerURL", "main", "has no host"},
		{"ServerURL with a query", "", `{"ServerURL":"https://a.example.com/?x=1"}`, "ServerURL", "main", "has a query or fragment"},
		{"ServerURL with other scheme", "", `{"ServerURL":"ftp://a.example.com"}`, "ServerURL", "main", `has scheme "ftp"`},
		{"unparsable Servers URL", "", `{"Servers":[{"ServerURL":"https://a"},{"ServerURL":"https://%zz"}]}`, "Servers[1].ServerURL", "main", "is not a valid URL"},
		{"mTLS pair with pkcs11 auth key", "", `{` + srv + `,` + pair + `,"Security":{"AuthPrivateKey":"pkcs11:x"}}`, "Security.AuthPrivateKey", "main", "pkcs11"},
	}
	if strconv.IntSize == 64 {
		tests = append(tests, struct {
			name, fallback, main, key, inFile, contains string
		}{"interval too large for a Duration", "", `{` + srv + `,"UpdatePollIntervalSeconds":9300000000}`, "UpdatePollIntervalSeconds", "main", "must be at most 9223372036"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.main, tt.fallback)
			assert.Nil(t, c)
			errs := problems(t, err)
			require.Len(t, errs, 1, "exactly one problem expected, got %q", errs)
			assert.ErrorIs(t, err, config.ErrInvalid)
			var ke *config.KeyError
			require.ErrorAs(t, errs[0], &ke)
			assert.Equal(t, tt.key, ke.Key)
			wantFile := e.main
			if tt.inFile == "fallback" {
				wantFile = e.fallback
			}
			assert.Equal(t, wantFile, ke.File, "the error names the file the key came from")
			assert.Contains(t, err.Error(), tt.contains)
			assert.True(t, strings.HasPrefix(err.Error(), wantFile+`: key "`+tt.key+`" `), "message %q names file and key", err)
		})
	}
}

func TestLoadSeveralProblems(t *testing.T) {
	e := newEnv(t)
	_, err := e.load(t, `{
		"HttpsClient": {"Key": "pkcs11:object=k", "SSLEngine": "pkcs11"},
		"Security": {"SSLEngine": "pkcs11"},
		"UpdatePollIntervalSeconds": -1,
		"DeviceTier": "huge"
	}`, "")
	errs := problems(t, err)
	var keys []string
	for _, e := range errs {
		var ke *config.KeyError
		require.ErrorAs(t, e, &ke)
		keys = append(keys, ke.Key)
	}
	assert.ElementsMatch(t, []string{
		"ServerURL", "HttpsClient.Key", "HttpsClient.Key", "HttpsClient.SSLEngine",
		"Security.SSLEngine", "UpdatePollIntervalSeconds", "DeviceTier",
	}, keys, "every problem is reported once: %q", errs)
}

func TestLoadWrongTypes(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want []string // messages after "<file>: "
	}{
		{"number as string", `{"UpdatePollIntervalSeconds":"1800"}`, []string{`key "UpdatePollIntervalSeconds" must be a number, got string`}},
		{"string as number", `{"ServerURL":5}`, []string{`key "ServerURL" must be a string, got number`}},
		{"bool as string", `{"SkipVerify":"true"}`, []string{`key "SkipVerify" must be a boolean (true or false), got string`}},
		{"object as string", `{"HttpsClient":"/k.pem"}`, []string{`key "HttpsClient" must be an object, got string`}},
		{"nested string as number", `{"HttpsClient":{"Key":1}}`, []string{`key "HttpsClient.Key" must be a string, got number`}},
		{"array of objects as object", `{"Servers":{"ServerURL":"x"}}`, []string{`key "Servers" must be an array of objects, got object`}},
		{"array element as string", `{"Servers":["https://a"]}`, []string{`key "Servers[0]" must be an object, got string`}},
		{"array element field", `{"Servers":[{"ServerURL":true}]}`, []string{`key "Servers[0].ServerURL" must be a string, got boolean`}},
		{"array of strings element", `{"ArtifactVerifyKeys":["/a",2]}`, []string{`key "ArtifactVerifyKeys[1]" must be a string, got number`}},
		{"array of strings as string", `{"ArtifactVerifyKeys":"/a"}`, []string{`key "ArtifactVerifyKeys" must be an array of strings, got string`}},
		{"fraction", `{"RetryPollCount":1.5}`, []string{`key "RetryPollCount" must be a whole number, got 1.5`}},
		{"exponent", `{"RetryPollCount":1e3}`, []string{`key "RetryPollCount" must be a whole number, got 1e3`}},
		{"out of range", `{"RetryPollCount":99999999999999999999}`, []string{`key "RetryPollCount" is out of range, got 99999999999999999999`}},
		{"TPM device as bool", `{"TPM":{"Device":true}}`, []string{`key "TPM.Device" must be a string, got boolean`}},
		{"null element", `{"ArtifactVerifyKeys":[null]}`, []string{`key "ArtifactVerifyKeys[0]" must be a string, got null`}},
		{
			"several wrong types",
			`{"ServerURL":[],"DBus":{"Enabled":"yes"},"Connectivity":{"IdleConnTimeoutSeconds":"30"}}`,
			[]string{
				`key "ServerURL" must be a string, got array`,
				`key "DBus.Enabled" must be a boolean (true or false), got string`,
				`key "Connectivity.IdleConnTimeoutSeconds" must be a number, got string`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.load(t, tt.conf, "")
			errs := problems(t, err)
			var got []string
			for _, e2 := range errs {
				assert.ErrorIs(t, e2, config.ErrInvalid)
				got = append(got, e2.Error())
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, e.main+": "+w)
			}
			assert.Equal(t, want, got, "only the type errors, not follow-up validation errors")
		})
	}
}

func TestLoadWrongTypesInBothFiles(t *testing.T) {
	e := newEnv(t)
	_, err := e.load(t, `{"ServerURL":1}`, `{"TenantToken":2}`)
	errs := problems(t, err)
	require.Len(t, errs, 2)
	assert.Equal(t, e.fallback+`: key "TenantToken" must be a string, got number`, errs[0].Error())
	assert.Equal(t, e.main+`: key "ServerURL" must be a string, got number`, errs[1].Error())
}

func TestLoadMalformedJSON(t *testing.T) {
	tests := []struct {
		name      string
		conf      string
		line, col int
		contains  string
	}{
		{"trailing comma", "{\n  \"ServerURL\": \"https://a\",\n}\n", 3, 1, "looking for beginning of object key string"},
		{"missing value", `{"ServerURL":}`, 1, 14, "invalid character '}'"},
		{"unterminated", "{\n\"ServerURL\": \"https://a\"", 2, 25, "unexpected end of JSON input"},
		{"garbage after object", "{}\nx", 2, 1, "after top-level value"},
		{"whitespace only", " \n ", 2, 2, "unexpected end"},
		{"single quotes", "{'ServerURL': 'x'}", 1, 2, "invalid character '\\''"},
		{"comment", "{\n  // server\n  \"ServerURL\": \"x\"}", 2, 3, "invalid character '/'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.load(t, tt.conf, `{"ServerURL":"https://a"}`)
			errs := problems(t, err)
			require.Len(t, errs, 1)
			assert.ErrorIs(t, err, config.ErrInvalid)
			var se *config.SyntaxError
			require.ErrorAs(t, errs[0], &se)
			assert.Equal(t, e.main, se.File)
			assert.Equal(t, tt.line, se.Line, "line")
			assert.Equal(t, tt.col, se.Column, "column")
			assert.Contains(t, err.Error(), tt.contains)
			assert.True(t, strings.HasPrefix(err.Error(), e.main+":"+strconv.Itoa(tt.line)+":"+strconv.Itoa(tt.col)+": malformed JSON: "), err.Error())
		})
	}
}

func TestLoadTopLevelNotObject(t *testing.T) {
	for _, conf := range []string{`[]`, `"https://a"`, `42`, `null`, `true`} {
		t.Run(conf, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.load(t, conf, "")
			require.Error(t, err)
			assert.ErrorIs(t, err, config.ErrInvalid)
			assert.Contains(t, err.Error(), e.main+": invalid configuration: the top level must be a JSON object")
		})
	}
}

func TestLoadUnknownKeys(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want []string // warnings after "<file>: "
	}{
		{"typo with suggestion", `{"ServerURL":"https://a","HttpsClinet":{}}`,
			[]string{`unknown key "HttpsClinet" (ignored; check the spelling: did you mean "HttpsClient"?)`}},
		{"wrong case", `{"ServerURL":"https://a","tenanttoken":"x"}`,
			[]string{`unknown key "tenanttoken" (ignored; check the spelling: did you mean "TenantToken"?)`}},
		{"no suggestion", `{"ServerURL":"https://a","Frobnicate":1}`,
			[]string{`unknown key "Frobnicate" (ignored; check the spelling)`}},
		{"nested", `{"ServerURL":"https://a","HttpsClient":{"Foo":"bar"}}`,
			[]string{`unknown key "HttpsClient.Foo" (ignored; check the spelling)`}},
		{"in an array element", `{"Servers":[{"ServerURL":"https://a","Weight":3}]}`,
			[]string{`unknown key "Servers[0].Weight" (ignored; check the spelling)`}},
		{"of any type", `{"ServerURL":"https://a","X":[1,{"a":null}],"Y":null}`,
			[]string{`unknown key "X" (ignored; check the spelling)`, `unknown key "Y" (ignored; check the spelling)`}},
		{"duplicate key", `{"ServerURL":"https://a","ServerURL":"https://b"}`,
			[]string{`duplicate key "ServerURL" (the last one wins; remove the others)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.conf, "")
			require.NoError(t, err, "unknown keys are not errors")
			var want []string
			for _, w := range tt.want {
				want = append(want, e.main+": "+w)
			}
			assert.Equal(t, want, c.Warnings)
		})
	}

	t.Run("duplicate key: last wins", func(t *testing.T) {
		e := newEnv(t)
		c, err := e.load(t, `{"ServerURL":"https://a","ServerURL":"https://b"}`, "")
		require.NoError(t, err)
		assert.Equal(t, []string{"https://b"}, c.Servers)
	})
}

// TestLoadErrorKeepsWarnings: a mistyped key is only a warning, but it is
// usually why a required key is missing; the warning must reach the caller
// together with the errors, not be dropped because validation failed.
func TestLoadErrorKeepsWarnings(t *testing.T) {
	tests := []struct {
		name, conf  string
		wantProblem string
		wantWarning string
	}{
		{"typo leaves ServerURL unset", `{"ServerUrl":"https://a"}`,
			"ServerURL", `unknown key "ServerUrl" (ignored; check the spelling: did you mean "ServerURL"?)`},
		{"typo next to a wrong type", `{"ServerURL":"https://a","HttpsClinet":{},"UpdatePollIntervalSeconds":"5"}`,
			"UpdatePollIntervalSeconds", `unknown key "HttpsClinet" (ignored; check the spelling: did you mean "HttpsClient"?)`},
		{"duplicate key next to a bad value", `{"ServerURL":"https://a","DeviceTier":"x","DeviceTier":"gold"}`,
			"DeviceTier", `duplicate key "DeviceTier"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(t, tt.conf, "")
			require.Error(t, err)
			assert.Nil(t, c)
			assert.ErrorIs(t, err, config.ErrInvalid, "the problems are still visible through the LoadError")
			assert.Contains(t, err.Error(), tt.wantProblem)
			var le *config.LoadError
			require.ErrorAs(t, err, &le, "content problems come as a *config.LoadError")
			require.Len(t, le.Warnings, 1, "warnings: %q", le.Warnings)
			assert.Contains(t, le.Warnings[0], e.main+": "+tt.wantWarning)
			assert.NotEmpty(t, problems(t, err), "the problems unwrap one by one")
		})
	}

	t.Run("no warnings", func(t *testing.T) {
		e := newEnv(t)
		_, err := e.load(t, `{"DeviceTier":"gold"}`, "")
		var le *config.LoadError
		require.ErrorAs(t, err, &le)
		assert.Empty(t, le.Warnings)
		assert.Len(t, le.Problems, 2, "ServerURL and DeviceTier: %v", err)
	})
}

func TestLoadNoConfig(t *testing.T) {
	t.Run("both files missing", func(t *testing.T) {
		e := newEnv(t)
		_, err := config.Load(e.opts())
		require.ErrorIs(t, err, config.ErrNoConfig)
		assert.Contains(t, err.Error(), e.main)
		assert.Contains(t, err.Error(), e.fallback)
	})
	t.Run("no paths", func(t *testing.T) {
		_, err := config.Load(config.LoadOptions{})
		assert.ErrorIs(t, err, config.ErrNoConfig)
	})
	t.Run("unreadable main is not skipped", func(t *testing.T) {
		e := newEnv(t)
		require.NoError(t, os.MkdirAll(e.main, 0o755)) // a directory cannot be read as a file
		write(t, e.fallback, `{"ServerURL":"https://a"}`)
		_, err := config.Load(e.opts())
		require.Error(t, err)
		assert.NotErrorIs(t, err, config.ErrNoConfig)
		assert.Contains(t, err.Error(), "read config "+e.main)
	})
	t.Run("oversized file", func(t *testing.T) {
		e := newEnv(t)
		big := `{"ServerURL":"https://a","X":"` + strings.Repeat("x", 1<<20) + `"}`
		_, err := e.load(t, big, "")
		require.ErrorIs(t, err, config.ErrInvalid)
		assert.Contains(t, err.Error(), "larger than")
	})
}

func TestLoadDirDefaults(t *testing.T) {
	_, err := os.Stat("/data/mender")
	if err == nil {
		t.Skip("/data/mender exists on this machine; the default mTLS directory would be used")
	}
	dir := t.TempDir()
	main := filepath.Join(dir, "mender.conf")
	write(t, main, `{"ServerURL":"https://a"}`)

	c, err := config.Load(config.LoadOptions{MainPath: main})
	require.NoError(t, err)
	assert.Equal(t, "/usr/share/mender", c.DataDir)
	assert.Equal(t, "/var/lib/mender", c.DatastoreDir)
	assert.Equal(t, "/var/lib/mender/device_type", c.DeviceTypeFile)
	assert.Equal(t, "/var/lib/mender/mender-agent.pem", c.AuthKeyFile)
	assert.True(t, c.AuthKeyGenerated)
	assert.Empty(t, c.TPMDevice)

	c, err = config.Load(config.LoadOptions{MainPath: main, DataDir: "/opt/data", DatastoreDir: "/opt/store"})
	require.NoError(t, err)
	assert.Equal(t, "/opt/data", c.DataDir)
	assert.Equal(t, "/opt/store", c.DatastoreDir)
	assert.Equal(t, "/opt/store/device_type", c.DeviceTypeFile)
	assert.Equal(t, "/opt/store/mender-agent.pem", c.AuthKeyFile)
}

func TestDefaultPaths(t *testing.T) {
	tests := []struct {
		conf, data, store  string
		wantMain, wantFall string
	}{
		{"", "", "", "/etc/mender/mender.conf", "/var/lib/mender/mender.conf"},
		{"/tmp/c", "/tmp/d", "/tmp/s", "/tmp/c/mender.conf", "/tmp/s/mender.conf"},
		{"/tmp/c/", "", "", "/tmp/c/mender.conf", "/var/lib/mender/mender.conf"},
		{"", "", "/srv/store", "/etc/mender/mender.conf", "/srv/store/mender.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.conf+"|"+tt.store, func(t *testing.T) {
			m, f := config.DefaultPaths(tt.conf, tt.data, tt.store)
			assert.Equal(t, tt.wantMain, m)
			assert.Equal(t, tt.wantFall, f)
		})
	}
}

func TestLoadMTLSDefaults(t *testing.T) {
	tests := []struct {
		name        string
		conf        string
		cert, key   bool // which default files exist
		wantMTLS    bool // CertFile/KeyFile are the defaults
		wantAuthKey string
		warning     string
	}{
		{name: "both files", conf: `{"ServerURL":"https://a"}`, cert: true, key: true, wantMTLS: true, wantAuthKey: "default-key"},
		{name: "only the certificate", conf: `{"ServerURL":"https://a"}`, cert: true, wantAuthKey: "generated", warning: "mender-cert-private.pem does not"},
		{name: "only the key", conf: `{"ServerURL":"https://a"}`, key: true, wantAuthKey: "generated", warning: "mender-cert.pem does not"},
		{name: "neither", conf: `{"ServerURL":"https://a"}`, wantAuthKey: "generated"},
		{name: "HttpsClient configured", conf: `{"ServerURL":"https://a","HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem"}}`, cert: true, key: true, wantAuthKey: "/k.pem"},
		{name: "empty HttpsClient counts as not configured", conf: `{"ServerURL":"https://a","HttpsClient":{"Certificate":"","Key":""}}`, cert: true, key: true, wantMTLS: true, wantAuthKey: "default-key"},
		{
			name: "AuthPrivateKey set", conf: `{"ServerURL":"https://a","Security":{"AuthPrivateKey":"/auth.pem"}}`, cert: true, key: true,
			wantMTLS: true, wantAuthKey: "/auth.pem", warning: "differs from the mTLS key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			cert := filepath.Join(e.mtls, "mender-cert.pem")
			key := filepath.Join(e.mtls, "mender-cert-private.pem")
			if tt.cert {
				write(t, cert, "cert")
			}
			if tt.key {
				write(t, key, "key")
			}
			c, err := e.load(t, tt.conf, "")
			require.NoError(t, err)
			if tt.wantMTLS {
				assert.Equal(t, cert, c.CertFile)
				assert.Equal(t, key, c.KeyFile)
			} else {
				assert.NotEqual(t, cert, c.CertFile)
				assert.NotEqual(t, key, c.KeyFile)
			}
			switch tt.wantAuthKey {
			case "generated":
				assert.Equal(t, filepath.Join(e.datastore, "mender-agent.pem"), c.AuthKeyFile)
				assert.True(t, c.AuthKeyGenerated)
			case "default-key":
				assert.Equal(t, key, c.AuthKeyFile, "the mTLS key also signs auth requests")
				assert.False(t, c.AuthKeyGenerated)
			default:
				assert.Equal(t, tt.wantAuthKey, c.AuthKeyFile)
				assert.False(t, c.AuthKeyGenerated)
			}
			if tt.warning == "" {
				assert.Empty(t, c.Warnings)
			} else {
				require.Len(t, c.Warnings, 1)
				assert.Contains(t, c.Warnings[0], tt.warning)
			}
		})
	}
}

func TestLoadAuthKeyChoice(t *testing.T) {
	tests := []struct {
		name          string
		conf          string
		wantCert      string
		wantKey       string
		wantAuth      string // "generated" = <datastore>/mender-agent.pem
		wantWarnings  int
		warningSubstr string
	}{
		{name: "nothing set", conf: `{}`, wantAuth: "generated"},
		{name: "only mTLS key", conf: `{"HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem"}}`, wantCert: "/c.pem", wantKey: "/k.pem", wantAuth: "/k.pem"},
		{name: "only AuthPrivateKey", conf: `{"Security":{"AuthPrivateKey":"/a.pem"}}`, wantAuth: "/a.pem"},
		{name: "both, same file", conf: `{"HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem"},"Security":{"AuthPrivateKey":"/k.pem"}}`, wantCert: "/c.pem", wantKey: "/k.pem", wantAuth: "/k.pem"},
		{
			name: "both, different files", conf: `{"HttpsClient":{"Certificate":"/c.pem","Key":"/k.pem"},"Security":{"AuthPrivateKey":"/a.pem"}}`,
			wantCert: "/c.pem", wantKey: "/k.pem", wantAuth: "/a.pem", wantWarnings: 1, warningSubstr: "Security.AuthPrivateKey (/a.pem) differs from the mTLS key (/k.pem)",
		},
		{name: "TPM handles kept as written", conf: `{"HttpsClient":{"Certificate":"/c.pem","Key":"handle:0x81000002"}}`, wantCert: "/c.pem", wantKey: "handle:0x81000002", wantAuth: "handle:0x81000002"},
		{
			name: "TPM handles differ", conf: `{"HttpsClient":{"Certificate":"/c.pem","Key":"handle:0x81000002"},"Security":{"AuthPrivateKey":"handle:0x81000003"}}`,
			wantCert: "/c.pem", wantKey: "handle:0x81000002", wantAuth: "handle:0x81000003", wantWarnings: 1, warningSubstr: "differs",
		},
		{
			name: "relative paths resolved; equal after resolution", conf: `{"HttpsClient":{"Certificate":"c.pem","Key":"k.pem"},"Security":{"AuthPrivateKey":"./k.pem"}}`,
			wantCert: "@/c.pem", wantKey: "@/k.pem", wantAuth: "@/k.pem", wantWarnings: 3, warningSubstr: "relative path",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			// The server lives in the fallback so the matrix conf stays readable.
			c, err := e.load(t, tt.conf, `{"ServerURL":"https://a"}`)
			require.NoError(t, err)
			at := func(s string) string {
				if rest, ok := strings.CutPrefix(s, "@"); ok {
					return filepath.Dir(e.main) + rest
				}
				return s
			}
			assert.Equal(t, at(tt.wantCert), c.CertFile)
			assert.Equal(t, at(tt.wantKey), c.KeyFile)
			if tt.wantAuth == "generated" {
				assert.Equal(t, filepath.Join(e.datastore, "mender-agent.pem"), c.AuthKeyFile)
				assert.True(t, c.AuthKeyGenerated)
			} else {
				assert.Equal(t, at(tt.wantAuth), c.AuthKeyFile)
				assert.False(t, c.AuthKeyGenerated)
			}
			require.Len(t, c.Warnings, tt.wantWarnings, "warnings: %q", c.Warnings)
			for _, w := range c.Warnings {
				assert.Contains(t, w, tt.warningSubstr)
			}
		})
	}
}

func TestFileValidate(t *testing.T) {
	tests := []struct {
		name string
		f    config.File
		keys []string
	}{
		{"zero file", config.File{}, []string{"ServerURL"}},
		{"valid", config.File{ServerURL: "https://a"}, nil},
		{"two problems", config.File{ServerURL: "https://a", DeviceTier: "x", RetryPollCount: -1}, []string{"DeviceTier", "RetryPollCount"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			if tt.keys == nil {
				assert.NoError(t, err)
				return
			}
			var got []string
			for _, e := range problems(t, err) {
				var ke *config.KeyError
				require.ErrorAs(t, e, &ke)
				assert.Empty(t, ke.File)
				assert.True(t, strings.HasPrefix(e.Error(), `key "`), "no file prefix: %q", e)
				got = append(got, ke.Key)
			}
			assert.ElementsMatch(t, tt.keys, got)
		})
	}
}

// TestConfigWarningsNeverLeakSecrets checks that the tenant token is not
// echoed into warnings, which cmd/ logs.
func TestConfigWarningsNeverLeakSecrets(t *testing.T) {
	e := newEnv(t)
	const token = "eyJhbGciOiJSUzI1NiJ9.secret.sig"
	c, err := e.load(t, `{"ServerURL":"https://a","TenantToken":"`+token+`","Tenanttoken":"`+token+`"}`, "")
	require.NoError(t, err)
	require.NotEmpty(t, c.Warnings)
	for _, w := range c.Warnings {
		assert.NotContains(t, w, "secret")
	}
}
