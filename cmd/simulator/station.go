package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
	"github.com/mender-mtls/mtls-agent/internal/provision"
	"github.com/mender-mtls/mtls-agent/internal/provision/cborfx"
	"github.com/mender-mtls/mtls-agent/internal/provision/serialport"
)

// recordsName is the default records file in the PKI directory.
const recordsName = "provision-records.jsonl"

const stationSynopsis = `Provisioning station: serve boards running 'device-agent provision' on serial ports, one
goroutine per port. Each board's key stays on the board; the station checks its CSR (signature,
subject = the --cn-template filled from the board's identity), signs it with the CA in --pki-dir,
and keeps hash-chained records (append-only JSON lines; 'simulator station verify-records FILE'
checks them). With --preauth each stored board is preauthorized through the management API
(identity and public key); a board already preauthorized with the same key counts as done, one
with another key is reported and not forced. One line per board on stdout. Without --loop each
port serves one board; exit 1 when any failed.

Also: simulator station verify-records FILE
      simulator station import-records FILE --preauth URL --user EMAIL --password PASSWORD`

// preauthFlags are the management API flags of station and import-records.
type preauthFlags struct {
	url, user, password, ca string
	insecure                bool
}

func (p *preauthFlags) register(fs *cmdFlags) {
	fs.StringVar(&p.url, "preauth", "", "preauthorize stored boards through the management API at `URL`, e.g. https://127.0.0.1:8443")
	fs.StringVar(&p.user, "user", "", "management user `EMAIL` for --preauth")
	fs.StringVar(&p.password, "password", "", "management `PASSWORD` for --preauth (default $"+deployPasswordEnv+")")
	fs.StringVar(&p.ca, "ca", "", "CA `FILE` trusted for the management server's certificate (default: the system roots)")
	fs.BoolVar(&p.insecure, "insecure", false, "do not verify the management server's certificate (tests only)")
}

// client logs in and returns the management client; nil without --preauth.
func (p *preauthFlags) client(ctx context.Context, getenv func(string) string) (*mgmtClient, error) {
	if p.url == "" {
		if p.user != "" || p.password != "" {
			return nil, errors.New("--user and --password need --preauth URL")
		}
		return nil, nil
	}
	if p.password == "" {
		p.password = getenv(deployPasswordEnv)
	}
	if p.user == "" || p.password == "" {
		return nil, fmt.Errorf("--preauth needs --user and --password (or $%s)", deployPasswordEnv)
	}
	base, err := parseServerURL(p.url)
	if err != nil {
		return nil, fmt.Errorf("--preauth: %w", err)
	}
	var pool *x509.CertPool
	if p.ca != "" {
		if pool, err = loadPool(p.ca); err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
	}
	c := newMgmtClient(base, pool, p.insecure)
	if err := c.login(ctx, p.user, p.password); err != nil {
		return nil, fmt.Errorf("--preauth: %w", err)
	}
	return c, nil
}

// preauthorize registers the record's identity and key as Mender's
// preauthorization guide does. 201 is success, and so is 409 when the
// existing device holds the same key; a 409 with another key is an error.
func preauthorize(ctx context.Context, c *mgmtClient, ident map[string][]string, pubPEM string) (string, error) {
	idData := make(map[string]any, len(ident))
	for k, v := range ident {
		if len(v) == 1 {
			idData[k] = v[0]
		} else {
			idData[k] = v
		}
	}
	body, err := json.Marshal(menderapi.PreauthRequest{IdentityData: idData, PubKey: pubPEM})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, mgmtRequestTimeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPost, menderapi.PathDevauthDevices, strings.NewReader(string(body)), menderapi.ContentTypeJSON, http.StatusCreated, http.StatusConflict)
	if err != nil {
		return "", fmt.Errorf("preauthorize: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusCreated {
		return "preauthorized", nil
	}
	var dev menderapi.Device
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&dev); err != nil {
		return "", fmt.Errorf("preauthorize: 409 without the existing device: %w", err)
	}
	want, err := normalizedPEM(pubPEM)
	if err != nil {
		return "", err
	}
	for _, as := range dev.AuthSets {
		if got, err := normalizedPEM(as.PubKey); err == nil && got == want {
			return "already preauthorized (" + as.Status + ")", nil
		}
	}
	return "", fmt.Errorf("preauthorize: device %s already exists with another key: not forced; decommission it or replace its key in the Mender UI", dev.ID)
}

func normalizedPEM(s string) (string, error) {
	k, err := menderapi.ParsePublicKeyPEM(s)
	if err != nil {
		return "", err
	}
	return menderapi.MarshalPublicKeyPEM(k)
}

// cmdStation implements `simulator station`.
func cmdStation(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 {
		switch args[0] {
		case "verify-records":
			return stationVerify(args[1:], stdout, stderr)
		case "import-records":
			return stationImport(ctx, args[1:], stdout, stderr, getenv)
		}
	}
	fs := newFlagSet("station", stationSynopsis, stdout, stderr)
	fs.usage = "simulator station --port P [--port P2 …] --pki-dir DIR [flags]"
	var ports listFlag
	fs.Var(&ports, "port", "serial `PORT` to serve (repeat, or comma-separate, for several)")
	dir := fs.String("pki-dir", "", "CA `DIR` (ca.crt and ca.key, as simulator pki init makes) (required)")
	tmpl := fs.String("cn-template", provision.DefaultCNTemplate, "common name `TEMPLATE`: {ATTR} is the board's identity attribute ATTR")
	days := fs.Int("days", 3650, "certificate validity in `DAYS`")
	loop := fs.Bool("loop", false, "serve board after board until Ctrl-C")
	records := fs.String("records", "", "records `FILE` (default DIR/"+recordsName+")")
	baud := fs.Int("baud", serialport.DefaultBaud, "line speed in `BAUD` (8N1); the boards must use the same")
	name := fs.String("name", "", "station `NAME` in the records (default: the host name)")
	step := fs.Duration("step-timeout", provision.DefaultStepTimeout, "wait at most `DURATION` for each message of a board")
	var pf preauthFlags
	pf.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case len(ports) == 0:
		return usageError(fs, "--port is required (e.g. --port /dev/ttyUSB0)")
	case *dir == "":
		return usageError(fs, "--pki-dir is required: the CA directory (simulator pki init --dir DIR)")
	case *days <= 0:
		return usageError(fs, fmt.Sprintf("--days %d: want a positive number", *days))
	}
	if err := provision.CheckTemplate(*tmpl); err != nil {
		return fmt.Errorf("--cn-template: %w", err)
	}
	ca, err := loadCA(*dir)
	if err != nil {
		return fmt.Errorf("cannot use the CA: %w", err)
	}
	if *records == "" {
		*records = filepath.Join(*dir, recordsName)
	}
	recs, err := provision.OpenRecords(*records)
	if err != nil {
		return fmt.Errorf("%w: run 'simulator station verify-records %s' and restore the file before provisioning more boards", err, *records)
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	mc, err := pf.client(ctx, getenv)
	if err != nil {
		return err
	}
	codec, err := cborfx.New()
	if err != nil {
		return err
	}
	st := &provision.Station{Name: *name, CA: ca, CNTemplate: *tmpl, Validity: time.Duration(*days) * day, Records: recs, StepTimeout: *step,
		Codec: codec}
	if mc != nil {
		defer mc.close()
		st.Commit = func(ctx context.Context, rec provision.Record) (string, error) {
			return preauthorize(ctx, mc, rec.Identity, rec.PublicKey)
		}
	}
	// Open every port first: a missing or busy one stops the station before
	// any board is served.
	var open []*serialport.Port
	defer func() {
		for _, p := range open {
			p.Close()
		}
	}()
	for _, path := range ports {
		p, err := serialport.Open(path, *baud)
		if err != nil {
			return err
		}
		open = append(open, p)
	}
	fmt.Fprintf(stderr, "station %s: serving %s with CA %q, records %s\n", *name, strings.Join(ports, ", "), ca.Cert.Subject.CommonName, *records)

	var (
		mu           sync.Mutex
		boards, fail int
		wg           sync.WaitGroup
	)
	for _, p := range open {
		wg.Go(func() {
			err := st.Serve(ctx, p, p.Path(), provision.LinkOptions{Baud: *baud}, !*loop, func(res provision.BoardResult) {
				mu.Lock()
				defer mu.Unlock()
				boards++
				if res.Err != nil {
					fail++
				}
				fmt.Fprintln(stdout, boardLine(res))
			})
			if err != nil {
				mu.Lock()
				fail++
				fmt.Fprintf(stderr, "station: port %s: %v\n", p.Path(), err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if fail > 0 {
		return fmt.Errorf("%d of %d boards failed", fail, boards)
	}
	return nil
}

// boardLine is the station's one line a board.
func boardLine(r provision.BoardResult) string {
	result := "ok"
	switch {
	case r.Err != nil:
		result = "FAILED: " + oneLineErr(r.Err)
	case r.Reused:
		result = "ok (certificate issued before, sent again)"
	}
	if r.Err == nil && r.Note != "" {
		result += "; " + r.Note
	}
	ident := provision.IdentityString(r.Identity)
	if ident == "" {
		ident = "-"
	}
	return fmt.Sprintf("port=%s identity=%q cn=%s serial=%s tpm=%t duration=%s result=%s",
		r.Port, ident, dash(r.CN), dash(r.Serial), r.KeyInTPM, r.Duration.Round(time.Millisecond), result)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLineErr(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func usageError(fs *cmdFlags, msg string) error {
	fmt.Fprintf(fs.stderr, "simulator %s: %s\nRun 'simulator %s --help' for the flags.\n", fs.Name(), msg, fs.Name())
	return errUsage
}

func stationVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("station verify-records", "Check the hash chain of a station's records file: every line unchanged, none deleted,\n"+
		"inserted or moved, and the last one the one the head file (FILE.head) names.", stdout, stderr)
	fs.usage = "simulator station verify-records FILE"
	if err := fs.parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError(fs, "give exactly one records FILE")
	}
	path := fs.Arg(0)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("records %s: %w", path, err)
	}
	recs, err := provision.ReadRecords(path)
	if err != nil {
		return err
	}
	stored := 0
	for _, r := range recs {
		if r.Kind == provision.KindStored {
			stored++
		}
	}
	last := "-"
	if len(recs) > 0 {
		last = recs[len(recs)-1].Hash
	}
	fmt.Fprintf(stdout, "%s: %d records (%d boards stored), chain intact, last hash %s\n", path, len(recs), stored, last)
	return nil
}

func stationImport(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("station import-records", "Preauthorize every board stored in a records file (verified first) through the\n"+
		"management API, for factories that are offline when the boards are made. Boards already\n"+
		"preauthorized with the same key count as done.", stdout, stderr)
	fs.usage = "simulator station import-records FILE --preauth URL --user EMAIL --password PASSWORD"
	var pf preauthFlags
	pf.register(fs)
	// FILE may come before or after the flags.
	var file string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	if err := fs.parse(args); err != nil {
		return err
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	} else if fs.NArg() > 0 || file == "" {
		return usageError(fs, "give exactly one records FILE")
	}
	if pf.url == "" {
		return usageError(fs, "--preauth URL is required")
	}
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("records %s: %w", file, err)
	}
	recs, err := provision.ReadRecords(file)
	if err != nil {
		return err
	}
	mc, err := pf.client(ctx, getenv)
	if err != nil {
		return err
	}
	defer mc.close()
	seen := map[string]bool{}
	done, failed := 0, 0
	for _, r := range recs {
		key := provision.IdentityString(r.Identity) + "|" + r.KeyFingerprint
		if r.Kind != provision.KindStored || seen[key] {
			continue
		}
		seen[key] = true
		note, err := preauthorize(ctx, mc, r.Identity, r.PublicKey)
		if err != nil {
			failed++
			note = "FAILED: " + oneLineErr(err)
		} else {
			done++
		}
		fmt.Fprintf(stdout, "identity=%q cn=%s key=%s result=%s\n", provision.IdentityString(r.Identity), r.CN, r.KeyFingerprint, note)
	}
	fmt.Fprintf(stdout, "%d boards preauthorized, %d failed\n", done, failed)
	if failed > 0 {
		return fmt.Errorf("%d of %d boards were not preauthorized", failed, done+failed)
	}
	return nil
}
