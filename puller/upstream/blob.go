package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
)

// errOpenRangeRefused: the origin answered 416 to "bytes=<offset>-" without
// saying the blob's size, as go-containerregistry's own registry does since it
// only understands closed ranges.
var errOpenRangeRefused = errors.New("origin refused an open-ended range")

// FetchBlob streams a blob from offset on and returns its total size. It
// follows redirects to blob storage. A resume (offset > 0) asks for
// "Range: bytes=<offset>-"; when the origin ignores the range and sends the
// whole blob (200), the first offset bytes are read and discarded, which
// costs bandwidth but still hands back exactly the bytes asked for. When the
// origin refuses the open-ended range without telling the size (as
// go-containerregistry's registry does), FetchBlob learns the size with HEAD
// and asks for "bytes=<offset>-<size-1>". An offset equal to the size gives an
// empty body; a larger one wraps puller.ErrSizeMismatch. An answer without a
// known total size is an error. Errors reading the returned body
// are classified like the others (a connection lost mid-blob wraps
// puller.ErrUnavailable), so the caller can resume from where it got to.
func (r *Registry) FetchBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	what := fmt.Sprintf("fetch blob %s from %s", dgst, repo)
	if offset < 0 {
		return nil, 0, fmt.Errorf("%s: negative offset %d", what, offset)
	}
	repo = r.withInsecure(repo)
	rangeHeader := ""
	if offset > 0 {
		rangeHeader = fmt.Sprintf("bytes=%d-", offset)
	}
	body, size, err := r.openBlob(ctx, repo, dgst, offset, rangeHeader)
	if errors.Is(err, errOpenRangeRefused) {
		// Learn the size, then ask for the closed range.
		r.log.DebugContext(ctx, "origin refused an open-ended range, asking for a closed one",
			"repository", repo.Name(), "digest", dgst.String())
		var total int64
		total, err = r.blobSize(ctx, repo, dgst)
		switch {
		case err != nil: // reported below
		case offset == total:
			return http.NoBody, total, nil
		case offset > total:
			err = fmt.Errorf("%w: offset %d is past the blob's %d bytes", puller.ErrSizeMismatch, offset, total)
		default:
			body, size, err = r.openBlob(ctx, repo, dgst, offset, fmt.Sprintf("bytes=%d-%d", offset, total-1))
		}
	}
	if err != nil {
		return nil, 0, fail(ctx, repo.RegistryStr(), what, err)
	}
	return &blobReader{ctx: ctx, body: body, host: repo.RegistryStr(), what: "read blob " + dgst.String() + " from " + repo.String()}, size, nil
}

// getBlob sends one blob GET with rangeHeader (if any) and returns the
// answer if it is 200 or 206 with the bytes as stored, or 416; any other
// answer is closed and returned as an error.
func (r *Registry) getBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, rangeHeader string) (*http.Response, error) {
	header := http.Header{"Accept-Encoding": {"identity"}}
	if rangeHeader != "" {
		header.Set("Range", rangeHeader)
	}
	resp, err := r.do(ctx, repo, http.MethodGet, "/blobs/"+dgst.String(), header)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
		if enc := resp.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
			resp.Body.Close()
			return nil, fmt.Errorf("origin sent the blob with Content-Encoding %q although asked for identity", enc)
		}
	case http.StatusRequestedRangeNotSatisfiable:
	default:
		return nil, errorAnswer(resp) // closes it
	}
	return resp, nil
}

// openBlob sends one blob GET and checks the answer against offset.
func (r *Registry) openBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64, rangeHeader string) (io.ReadCloser, int64, error) {
	resp, err := r.getBlob(ctx, repo, dgst, rangeHeader)
	if err != nil {
		return nil, 0, err
	}
	ok := false
	defer func() {
		if !ok {
			resp.Body.Close()
		}
	}()

	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		if cr, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil && cr.first < 0 && cr.size == offset {
			return http.NoBody, offset, nil // resuming a blob that is already complete
		}
		return nil, 0, unsatisfiable(resp, offset, rangeHeader)
	}

	if resp.StatusCode == http.StatusOK {
		size := resp.ContentLength
		if size < 0 {
			return nil, 0, errors.New("origin did not say the blob's size (no Content-Length)")
		}
		if offset > size {
			return nil, 0, fmt.Errorf("%w: offset %d is past the blob's %d bytes", puller.ErrSizeMismatch, offset, size)
		}
		if offset > 0 {
			r.log.DebugContext(ctx, "origin ignored the range, discarding the blob's start",
				"repository", repo.Name(), "digest", dgst.String(), "offset", offset)
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				return nil, 0, fmt.Errorf("skip to offset %d: %w", offset, err)
			}
		}
		ok = true
		return resp.Body, size, nil
	}

	if offset == 0 && rangeHeader == "" {
		return nil, 0, errors.New("origin answered 206 Partial Content to a request without a range")
	}
	cr, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return nil, 0, fmt.Errorf("origin's 206 answer: %w", err)
	}
	switch {
	case cr.first < 0:
		return nil, 0, fmt.Errorf("origin's 206 answer has an unsatisfied Content-Range %q", resp.Header.Get("Content-Range"))
	case cr.first != offset:
		return nil, 0, fmt.Errorf("origin sent bytes from %d, asked from %d", cr.first, offset)
	case cr.size < 0:
		return nil, 0, errors.New("origin did not say the blob's size (Content-Range total is *)")
	case cr.last != cr.size-1:
		return nil, 0, fmt.Errorf("origin sent bytes %d-%d of %d, not up to the end", cr.first, cr.last, cr.size)
	case resp.ContentLength >= 0 && resp.ContentLength != cr.last-cr.first+1:
		return nil, 0, fmt.Errorf("origin's Content-Length %d disagrees with its Content-Range %d-%d",
			resp.ContentLength, cr.first, cr.last)
	}
	ok = true
	return resp.Body, cr.size, nil
}

// unsatisfiable explains a 416 answer: the offset is past the blob's end, or
// the origin did not understand the range.
func unsatisfiable(resp *http.Response, offset int64, rangeHeader string) error {
	cr, err := parseContentRange(resp.Header.Get("Content-Range"))
	switch {
	case err == nil && cr.first < 0 && cr.size >= 0:
		return fmt.Errorf("%w: offset %d is past the blob's %d bytes", puller.ErrSizeMismatch, offset, cr.size)
	case strings.HasSuffix(rangeHeader, "-"):
		return errOpenRangeRefused
	}
	return fmt.Errorf("origin refused range %q: %w", rangeHeader, errorAnswer(resp))
}

// blobSize asks the origin for a blob's size with HEAD.
func (r *Registry) blobSize(ctx context.Context, repo name.Repository, dgst v1.Hash) (int64, error) {
	resp, err := r.do(ctx, repo, http.MethodHead, "/blobs/"+dgst.String(), http.Header{"Accept-Encoding": {"identity"}})
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, errorAnswer(resp)
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, errors.New("origin did not say the blob's size (no Content-Length)")
	}
	return resp.ContentLength, nil
}

// blobReader classifies errors reading a blob body, so a connection lost
// mid-blob reads as puller.ErrUnavailable.
type blobReader struct {
	ctx  context.Context
	body io.ReadCloser
	host string
	what string
}

func (b *blobReader) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil && err != io.EOF {
		err = fail(b.ctx, b.host, b.what, err)
	}
	return n, err
}

func (b *blobReader) Close() error { return b.body.Close() }

// contentRange is a parsed Content-Range header (RFC 9110, section 14.4):
// "bytes first-last/size" or, in a 416 answer, "bytes */size". first and last
// are -1 for the latter; size is -1 when unknown ("*").
type contentRange struct {
	first, last, size int64
}

func parseContentRange(s string) (contentRange, error) {
	bad := func(why string) (contentRange, error) {
		return contentRange{}, fmt.Errorf("malformed Content-Range %q: %s", s, why)
	}
	if s == "" {
		return bad("missing")
	}
	unit, rest, ok := strings.Cut(s, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad(`want "bytes first-last/size"`)
	}
	rng, sizeStr, ok := strings.Cut(strings.TrimLeft(rest, " "), "/")
	if !ok {
		return bad("no /size")
	}
	cr := contentRange{first: -1, last: -1, size: -1}
	if sizeStr != "*" {
		n, err := parseDecimal(sizeStr)
		if err != nil {
			return bad("size: " + err.Error())
		}
		cr.size = n
	}
	if rng == "*" {
		if cr.size < 0 {
			return bad("neither range nor size")
		}
		return cr, nil
	}
	firstStr, lastStr, ok := strings.Cut(rng, "-")
	if !ok {
		return bad("no first-last")
	}
	var err error
	if cr.first, err = parseDecimal(firstStr); err != nil {
		return bad("first: " + err.Error())
	}
	if cr.last, err = parseDecimal(lastStr); err != nil {
		return bad("last: " + err.Error())
	}
	if cr.last < cr.first {
		return bad("last before first")
	}
	if cr.size >= 0 && cr.last >= cr.size {
		return bad("range past size")
	}
	return cr, nil
}

// parseDecimal accepts only digits: strconv.ParseInt would also take a sign.
func parseDecimal(s string) (int64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a decimal number", s)
	}
	return strconv.ParseInt(s, 10, 64)
}
