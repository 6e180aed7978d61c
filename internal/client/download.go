package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mender-mtls/mtls-agent/internal/retry"
)

// maxResumes is how many times Download resumes an interrupted transfer.
const maxResumes = 5

// Download fetches an artifact from its (presigned) source URI into w and
// returns the number of bytes written. The request carries no Authorization
// header (the link is signed) but uses the same TLS roots and client
// certificate as the API. Up to 3 redirects are followed, each from https to
// https and without Authorization; any other redirect ends the download
// with an error marked [retry.Permanent]. The answer must be 200 with a
// Content-Length; a transfer cut short is resumed from the original URI
// with a Range request (206 with a matching Content-Range is required) up to
// 5 times, at once after progress, with a short backoff otherwise. Exactly
// Content-Length bytes must arrive.
//
// RequestTimeout bounds the wait for each response's headers and any stall
// between reads, not the whole transfer. A write error of w ends the download
// at once. The URI's query (its signature) is never logged or put in errors.
func (c *Client) Download(ctx context.Context, uri string, w io.Writer) (int64, error) {
	u, err := url.Parse(uri)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return 0, errors.New("download: artifact URI is not an absolute http(s) URL")
	}
	safe := redactURL(u)
	wait := retry.Backoff{Base: time.Second, Max: 30 * time.Second, Rand: c.rand}
	var (
		written int64
		total   int64 = -1
		stalled int   // attempts in a row without progress
	)
	for resumes := 0; ; resumes++ {
		n, err := c.downloadOnce(ctx, u, safe, written, &total, w)
		written += n
		if err == nil {
			c.log.Info("artifact downloaded", "url", safe, "bytes", written, "resumes", resumes)
			return written, nil
		}
		var re *resumableError
		if !errors.As(err, &re) || ctx.Err() != nil {
			return written, err
		}
		if resumes == maxResumes {
			return written, fmt.Errorf("download %s: gave up after %d resumes at %d of %d bytes: %w", safe, maxResumes, written, total, re.err)
		}
		delay := time.Duration(0)
		if n > 0 {
			stalled = 0
		} else {
			delay = wait.Delay(stalled)
			stalled++
		}
		c.log.Warn("download interrupted, resuming", "url", safe, "offset", written, "total", total,
			"attempt", resumes+1, "retry_in", delay, "error", re.err)
		if !sleepCtx(ctx, delay) {
			return written, fmt.Errorf("download %s: %w", safe, ctx.Err())
		}
	}
}

// resumableError marks a download failure that a Range request may fix.
type resumableError struct{ err error }

func (e *resumableError) Error() string { return e.err.Error() }
func (e *resumableError) Unwrap() error { return e.err }

// downloadOnce makes one GET from offset (a Range request when offset > 0)
// and copies the body to w. total is -1 until the first answer sets it.
func (c *Client) downloadOnce(ctx context.Context, u *url.URL, safe string, offset int64, total *int64, w io.Writer) (n int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stall := time.AfterFunc(c.opts.RequestTimeout, cancel)
	defer stall.Stop()

	start, status := time.Now(), 0
	defer func() {
		c.observe(Event{Op: OpDownload, Status: status, Err: err, Duration: time.Since(start), Server: u.Scheme + "://" + u.Host})
	}()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("download %s: build request: %w", safe, err)
	}
	req.Header.Set("User-Agent", c.opts.UserAgent) // redirects copy it
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := c.dl.Do(req)
	if err != nil {
		if re, ok := errors.AsType[*downloadRedirectError](err); ok {
			return 0, retry.Permanent(fmt.Errorf("download %s: %w", safe, re))
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			ue.URL = safe // never the presigned query
		}
		return 0, &resumableError{fmt.Errorf("download: %w", err)}
	}
	defer resp.Body.Close()
	status = resp.StatusCode

	if err := checkDownloadAnswer(resp, offset, total); err != nil {
		return 0, fmt.Errorf("download %s: %w", safe, err)
	}
	buf := make([]byte, 32<<10)
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			stall.Reset(c.opts.RequestTimeout)
			if offset+n+int64(m) > *total {
				return n, fmt.Errorf("download %s: server sent more than its Content-Length of %d bytes", safe, *total)
			}
			wn, werr := w.Write(buf[:m])
			n += int64(wn)
			if werr != nil {
				return n, fmt.Errorf("download %s: write: %w", safe, werr)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, &resumableError{fmt.Errorf("download %s: read at %d of %d bytes: %w", safe, offset+n, *total, rerr)}
		}
	}
	if offset+n != *total {
		return n, &resumableError{fmt.Errorf("download %s: body ended at %d of %d bytes", safe, offset+n, *total)}
	}
	return n, nil
}

// checkDownloadAnswer checks the status and length headers of a download
// answer and records the total size from the first one.
func checkDownloadAnswer(resp *http.Response, offset int64, total *int64) error {
	if offset == 0 {
		if resp.StatusCode != http.StatusOK {
			return downloadStatusError(resp)
		}
		if resp.ContentLength < 0 {
			return errors.New("answer has no Content-Length (chunked or unknown length is refused)")
		}
		*total = resp.ContentLength
		return nil
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		return fmt.Errorf("server ignored the Range request at offset %d (answered 200, want 206)", offset)
	default:
		return downloadStatusError(resp)
	}
	start, end, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if !ok {
		return fmt.Errorf("206 answer has a malformed Content-Range %q", resp.Header.Get("Content-Range"))
	}
	if start != offset || size != *total || end != size-1 {
		return fmt.Errorf("206 answer covers bytes %d-%d/%d, want %d-%d/%d", start, end, size, offset, *total-1, *total)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size-offset {
		return fmt.Errorf("206 answer has Content-Length %d, want %d", resp.ContentLength, size-offset)
	}
	return nil
}

func downloadStatusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	e := &APIError{Op: OpDownload, StatusCode: resp.StatusCode, Message: strings.TrimSpace(string(b))}
	if d, ok := retry.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok &&
		(resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500) {
		e.RetryAfter = d
	}
	return e
}

// parseContentRange parses "bytes start-end/size" with a known size.
func parseContentRange(v string) (start, end, size int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	s, e, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseInt(s, 10, 64)
	end, err2 = strconv.ParseInt(e, 10, 64)
	size, err3 = strconv.ParseInt(sz, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start || size <= end {
		return 0, 0, 0, false
	}
	return start, end, size, true
}
