package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

var _ puller.RangeSource = (*Registry)(nil)

// BlobSize asks the origin for a blob's size with HEAD.
func (r *Registry) BlobSize(ctx context.Context, repo name.Repository, dgst v1.Hash) (int64, error) {
	repo = r.withInsecure(repo)
	size, err := r.blobSize(ctx, repo, dgst)
	if err != nil {
		return 0, fail(ctx, repo.RegistryStr(), fmt.Sprintf("size of blob %s in %s", dgst, repo), err)
	}
	return size, nil
}

// FetchRange asks for "Range: bytes=<off>-<off+n-1>" and checks that the
// 206 answer is exactly that range. An origin that ignores the range and
// answers 200 with the whole blob is used for a range at offset 0 (the
// first n bytes of the answer); for a later range the answer is closed and
// the error wraps puller.ErrNoRanges, since skipping to off would transfer
// the blob's start once per range.
func (r *Registry) FetchRange(ctx context.Context, repo name.Repository, dgst v1.Hash, off, n int64) (io.ReadCloser, error) {
	what := fmt.Sprintf("fetch bytes %d-%d of blob %s from %s", off, off+n-1, dgst, repo)
	if off < 0 || n <= 0 || off+n < off {
		return nil, fmt.Errorf("%s: invalid range", what)
	}
	repo = r.withInsecure(repo)
	body, err := r.openRange(ctx, repo, dgst, off, n)
	if err != nil {
		return nil, fail(ctx, repo.RegistryStr(), what, err)
	}
	return &blobReader{ctx: ctx, body: body, host: repo.RegistryStr(), what: "read " + strings.TrimPrefix(what, "fetch ")}, nil
}

func (r *Registry) openRange(ctx context.Context, repo name.Repository, dgst v1.Hash, off, n int64) (io.ReadCloser, error) {
	rangeHeader := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	resp, err := r.getBlob(ctx, repo, dgst, rangeHeader)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			resp.Body.Close()
		}
	}()
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		return nil, unsatisfiable(resp, off+n-1, rangeHeader)
	}
	if resp.StatusCode == http.StatusOK {
		switch {
		case resp.ContentLength >= 0 && off+n > resp.ContentLength:
			return nil, fmt.Errorf("%w: range %s is past the blob's %d bytes", puller.ErrSizeMismatch, rangeHeader, resp.ContentLength)
		case off > 0:
			r.log.DebugContext(ctx, "origin ignored a range request", "repository", repo.Name(), "digest", dgst.String())
			return nil, fmt.Errorf("origin answered range %s with the whole blob: %w", rangeHeader, puller.ErrNoRanges)
		}
		ok = true
		return exactly(resp.Body, n), nil
	}
	cr, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return nil, fmt.Errorf("origin's 206 answer: %w", err)
	}
	switch {
	case cr.first != off || cr.last != off+n-1:
		return nil, fmt.Errorf("origin sent bytes %d-%d, asked for %s", cr.first, cr.last, rangeHeader)
	case resp.ContentLength >= 0 && resp.ContentLength != n:
		return nil, fmt.Errorf("origin's Content-Length %d disagrees with its Content-Range %d-%d",
			resp.ContentLength, cr.first, cr.last)
	}
	ok = true
	return exactly(resp.Body, n), nil
}

// exactly reads n bytes of body: fewer is io.ErrUnexpectedEOF.
func exactly(body io.ReadCloser, n int64) io.ReadCloser {
	return &exactReader{body: body, left: n}
}

type exactReader struct {
	body io.ReadCloser
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.body.Read(p)
	e.left -= int64(n)
	switch {
	case e.left == 0:
		return n, io.EOF
	case errors.Is(err, io.EOF):
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (e *exactReader) Close() error { return e.body.Close() }
