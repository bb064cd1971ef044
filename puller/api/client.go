package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
)

// Client talks to a daemon's API.
type Client struct {
	http *http.Client
	base string
	addr string
}

// NewClient returns a client for the API at addr: a unix socket path (with a
// slash in it) or host:port.
func NewClient(addr string) *Client {
	tr := &http.Transport{}
	base := "http://" + addr
	if strings.Contains(addr, "/") {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
		base = "http://thaw"
	}
	return &Client{http: &http.Client{Transport: tr}, base: base, addr: addr}
}

// Get decodes the JSON answer of GET path into out, for endpoints mounted
// with Server.Handle.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// Post sends in as JSON to path and decodes the JSON answer into out, for
// endpoints mounted with Server.Handle.
func (c *Client) Post(ctx context.Context, path string, in, out any) error {
	return c.do(ctx, http.MethodPost, path, in, out)
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/api/v1/status", nil, &s)
}

// Images lists the images the daemon knows.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var out []Image
	return out, c.do(ctx, http.MethodGet, "/api/v1/images", nil, &out)
}

// Blobs lists the blobs in the daemon's store.
func (c *Client) Blobs(ctx context.Context) ([]Blob, error) {
	var out []Blob
	return out, c.do(ctx, http.MethodGet, "/api/v1/blobs", nil, &out)
}

// GC evicts blobs down to the request's target.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResult, error) {
	var out GCResult
	return out, c.do(ctx, http.MethodPost, "/api/v1/gc", req, &out)
}

// Prefetch starts a prefetch job. Without req.Wait it returns the queued job;
// with it, it calls onMessage for every progress line and returns when the
// job ends, with the job's error if it failed.
func (c *Client) Prefetch(ctx context.Context, req PrefetchRequest, onMessage func(PrefetchMessage)) (Job, error) {
	resp, err := c.send(ctx, http.MethodPost, "/api/v1/prefetch", req)
	if err != nil {
		return Job{}, err
	}
	defer resp.Body.Close()
	if !req.Wait {
		var j Job
		if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
			return Job{}, fmt.Errorf("decode prefetch answer: %w", err)
		}
		return j, nil
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m PrefetchMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return Job{}, fmt.Errorf("decode prefetch progress: %w", err)
		}
		if m.Error != "" {
			return Job{}, errors.New(m.Error)
		}
		if onMessage != nil {
			onMessage(m)
		}
	}
	if err := sc.Err(); err != nil {
		return Job{}, fmt.Errorf("prefetch progress stream: %w", err)
	}
	return Job{Images: req.Images, State: "done"}, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s answer: %w", path, err)
	}
	return nil
}

// send performs a request and turns a non-2xx answer into an error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no thaw daemon answers at %s (start one with `thaw daemon`, or point --api at it): %w", c.addr, err)
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e errorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("daemon: %s", e.Error)
		}
		return nil, fmt.Errorf("daemon: %s %s: %s", method, path, resp.Status)
	}
	return resp, nil
}
