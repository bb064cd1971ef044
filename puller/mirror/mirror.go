package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/store"
)

// Resolver resolves manifest references to descriptors (catalog.Resolver).
type Resolver interface {
	Resolve(ctx context.Context, ref name.Reference) (catalog.Resolution, error)
}

// Blobs gives the mirror its bytes (fetch.Fetcher).
type Blobs interface {
	// Open returns a blob, complete or arriving, and where its bytes come from.
	Open(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Blob, string, error)
	// Manifest returns a verified manifest, its media type and its source.
	Manifest(ctx context.Context, repo name.Repository, dgst v1.Hash) ([]byte, string, string, error)
}

// LazyBlobs is implemented by Blobs that can open a blob for reads of
// ranges without bringing it in from its first byte (fetch.Fetcher). The
// mirror uses it for requests with a Range header, and for HEAD.
type LazyBlobs interface {
	// OpenLazy returns a blob whose ReadAt fetches the missing bytes it
	// needs first; the rest arrives in the background.
	OpenLazy(ctx context.Context, repo name.Repository, dgst v1.Hash) (store.Blob, string, error)
}

// wanter is implemented by blobs that LazyBlobs opened (fetch.Wanter).
type wanter interface {
	// Want starts fetching [start, end) without waiting for it.
	Want(start, end int64)
}

// Config tunes the mirror.
type Config struct {
	// DefaultRegistry is the upstream for requests without ?ns=.
	DefaultRegistry string
	// Timeout bounds the wait for the first byte of a blob or a manifest
	// (resolution included); the transfer after it is not bounded.
	Timeout time.Duration
}

// DefaultConfig: docker.io by default, 15 s to start answering.
func DefaultConfig() Config {
	return Config{DefaultRegistry: name.DefaultRegistry, Timeout: 15 * time.Second}
}

// Mirror is the registry mirror http.Handler.
type Mirror struct {
	cfg      Config
	resolver Resolver
	blobs    Blobs
	metrics  *metrics.Puller
	log      *slog.Logger
}

// New returns the mirror handler.
func New(cfg Config, r Resolver, b Blobs, m *metrics.Puller, log *slog.Logger) (*Mirror, error) {
	if cfg.DefaultRegistry == "" || cfg.Timeout <= 0 {
		return nil, fmt.Errorf("mirror: default registry and a positive timeout are required (got %+v)", cfg)
	}
	if _, err := name.NewRegistry(cfg.DefaultRegistry); err != nil {
		return nil, fmt.Errorf("mirror: default registry: %w", err)
	}
	return &Mirror{cfg: cfg, resolver: r, blobs: b, metrics: m, log: log}, nil
}

// ServeHTTP implements http.Handler.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &responseWriter{ResponseWriter: w, code: http.StatusOK, source: "none"}
	kind := "invalid"
	defer func() {
		m.metrics.RequestDuration.WithLabelValues(kind, r.Method, strconv.Itoa(rw.code), rw.source).Observe(time.Since(start).Seconds())
		if rw.source != "none" {
			m.metrics.Bytes.WithLabelValues(rw.source).Add(float64(rw.written))
		}
	}()
	rw.Header().Set("Docker-Distribution-API-Version", "registry/2.0")

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(rw, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, errMethod))
		return
	}
	req, err := ParseRequest(r.URL.Path, r.URL.Query(), m.cfg.DefaultRegistry)
	if err != nil {
		writeError(rw, err)
		return
	}
	kind = string(req.Kind)
	switch req.Kind {
	case KindBase:
		rw.Header().Set("Content-Type", "application/json")
		rw.Header().Set("Content-Length", "2")
		rw.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			io.WriteString(rw, "{}")
		}
	case KindManifest:
		m.serveManifest(rw, r, req)
	case KindBlob:
		m.serveBlob(rw, r, req)
	}
}

func (m *Mirror) serveManifest(w *responseWriter, r *http.Request, req Request) {
	ctx, cancel := context.WithTimeout(r.Context(), m.cfg.Timeout)
	defer cancel()
	dgst := req.Digest
	if req.Tag != "" {
		res, err := m.resolver.Resolve(ctx, req.Reference())
		if err != nil {
			writeError(w, err)
			return
		}
		resolved := "upstream"
		switch {
		case res.Stale:
			m.metrics.StaleServed.Inc()
			resolved = "stale"
		case res.Cached:
			resolved = "cache"
		}
		w.Header().Set(ResolvedHeader, resolved)
		dgst = res.Digest
	}
	body, mediaType, source, err := m.blobs.Manifest(ctx, req.Repo, dgst)
	if err != nil {
		m.log.Info("manifest not served", "ref", req.Reference().Name(), "err", err)
		writeError(w, err)
		return
	}
	w.source = source
	h := w.Header()
	h.Set(SourceHeader, source)
	h.Set("Content-Type", mediaType)
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("Etag", `"`+dgst.String()+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

func (m *Mirror) serveBlob(w *responseWriter, r *http.Request, req Request) {
	start := time.Now()
	// The timeout covers opening the blob (the first answer of the source);
	// the reads of an arriving blob that follow are bounded by the request and
	// the fetcher's idle timeout. So the blob's context outlives Open, and the
	// timer only cancels it if Open is still waiting when it fires.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	timer := time.AfterFunc(m.cfg.Timeout, cancel)
	rangeHeader := r.Header.Get("Range")
	open := m.blobs.Open
	lazy, canLazy := m.blobs.(LazyBlobs)
	if canLazy && (rangeHeader != "" || r.Method == http.MethodHead) {
		// Serve the bytes asked for as soon as they are here, not after the
		// blob's start.
		open = lazy.OpenLazy
	}
	if rangeHeader != "" && r.Method == http.MethodGet {
		w.firstByte = func() { m.metrics.Lazy.RangeFirstByte.Observe(time.Since(start).Seconds()) }
		defer func() {
			if w.code == http.StatusPartialContent {
				m.metrics.Lazy.RangeDuration.Observe(time.Since(start).Seconds())
			}
		}()
	}
	blob, source, err := open(ctx, req.Repo, req.Digest)
	if !timer.Stop() && err == nil {
		blob.Close()
		err = fmt.Errorf("blob %s: no answer within %s: %w", req.Digest, m.cfg.Timeout, puller.ErrUnavailable)
	}
	if err != nil {
		if ctx.Err() != nil && r.Context().Err() == nil {
			err = fmt.Errorf("blob %s: no answer within %s: %w", req.Digest, m.cfg.Timeout, puller.ErrUnavailable)
		}
		m.log.Info("blob not served", "repo", req.Repo.String(), "digest", req.Digest.String(), "err", err)
		writeError(w, err)
		return
	}
	defer blob.Close()
	w.source = source
	h := w.Header()
	h.Set(SourceHeader, source)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", req.Digest.String())
	h.Set("Etag", `"`+req.Digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	content := blob.ReadSeeker()
	if wb, ok := blob.(wanter); ok && !blob.Complete() {
		// ServeContent answers 206 with these ranges: they are fetched in
		// parallel from now, and read through ReadAt, which waits for
		// exactly their bytes (unverified yet, as ranges are). An answer
		// with the whole blob keeps the sequential reader, which releases
		// the last byte only once the blob is verified.
		wanted := wantedRanges(rangeHeader, blob.Size())
		if ir := r.Header.Get("If-Range"); ir != "" && ir != h.Get("Etag") {
			wanted = nil
		}
		for _, rg := range wanted {
			wb.Want(rg.Start, rg.End)
		}
		if len(wanted) > 0 {
			content = io.NewSectionReader(blob, 0, blob.Size())
		}
	}
	http.ServeContent(w, r, "", time.Time{}, content)
}

// SourceHeader names, on every manifest and blob answer, where its bytes came
// from: cache (the node's store) or the fetcher's source (upstream, peer).
const SourceHeader = "X-Thaw-Source"

// ResolvedHeader says, on answers to a manifest asked by tag, how the tag was
// resolved: upstream (asked the registry), cache (within the tag TTL) or stale
// (the registry was unavailable; the last known digest).
const ResolvedHeader = "X-Thaw-Resolved"

// errMethod: the mirror is read-only.
var errMethod = errors.New("the mirror is read-only")

// ociError is one entry of the OCI distribution error body.
type ociError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers with the OCI error body and status that err maps to.
func writeError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "UNKNOWN"
	switch {
	case errors.Is(err, errMethod):
		status, code = http.StatusMethodNotAllowed, "UNSUPPORTED"
	case errors.Is(err, errNotFound):
		status, code = http.StatusNotFound, "NOT_FOUND"
	case errors.Is(err, errNameInvalid), errors.Is(err, errNSInvalid):
		status, code = http.StatusBadRequest, "NAME_INVALID"
	case errors.Is(err, errTagInvalid):
		status, code = http.StatusBadRequest, "TAG_INVALID"
	case errors.Is(err, errDigestInvalid):
		status, code = http.StatusBadRequest, "DIGEST_INVALID"
	case errors.Is(err, puller.ErrNotFound):
		status, code = http.StatusNotFound, "NOT_FOUND"
	case errors.Is(err, puller.ErrUnauthorized):
		status, code = http.StatusUnauthorized, "UNAUTHORIZED"
	case errors.Is(err, puller.ErrTooLarge):
		status, code = http.StatusRequestEntityTooLarge, "SIZE_INVALID"
	case errors.Is(err, puller.ErrDigestMismatch):
		status, code = http.StatusBadGateway, "DIGEST_INVALID"
	case errors.Is(err, puller.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		status, code = http.StatusServiceUnavailable, "UNAVAILABLE"
	case errors.Is(err, puller.ErrQuota):
		status, code = http.StatusInsufficientStorage, "UNAVAILABLE"
	}
	if status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", "GET, HEAD")
	}
	body, _ := json.Marshal(struct {
		Errors []ociError `json:"errors"`
	}{[]ociError{{Code: code, Message: err.Error()}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// responseWriter records the status, the bytes written and their source. It
// implements io.ReaderFrom so that a complete blob (an *os.File) still goes
// out with sendfile.
type responseWriter struct {
	http.ResponseWriter
	code    int
	written int64
	source  string
	// firstByte, if set, is called before the first byte of the body.
	firstByte func()
}

func (w *responseWriter) wrote(n int64) {
	if w.written == 0 && n > 0 && w.firstByte != nil {
		w.firstByte()
		w.firstByte = nil
	}
	w.written += n
}

func (w *responseWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.wrote(int64(n))
	return n, err
}

func (w *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.firstByte != nil {
		// The copy may be a sendfile: its start stands for the first byte.
		w.firstByte()
		w.firstByte = nil
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.written += n
	return n, err
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
