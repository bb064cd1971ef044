package puller

import (
	"context"
	"errors"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Errors shared by the pipeline. Callers test them with errors.Is; every
// implementation wraps them with the digest or reference it concerns.
var (
	// ErrNotFound: the registry, store or catalog has no such blob, manifest or tag.
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: bytes did not hash to the digest they were asked for.
	// Nothing is stored and the reader gets this error instead of the last bytes.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: a blob's length differs from the size it was announced with.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrTooLarge: a manifest is over MaxManifestSize.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: the upstream could not be reached or answered with a server
	// error; a caller may serve stale data or let the runtime fall back.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrUnauthorized: the upstream refused our credentials.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrQuota: storing the blob would exceed the disk quota even after evicting
	// every evictable blob, or the disk itself is full.
	ErrQuota = errors.New("store quota exceeded")
	// ErrNoRanges: the source answered a range request with the whole blob
	// from its start; it can only stream blobs sequentially.
	ErrNoRanges = errors.New("source does not serve byte ranges")
)

// MaxManifestSize bounds manifests and indexes read from the network (4 MiB, as
// in containerd and distribution).
const MaxManifestSize = 4 << 20

// Descriptor is what a registry tells about a manifest: its digest, media type
// and size.
type Descriptor struct {
	Digest    v1.Hash
	MediaType string
	Size      int64
}

// Source delivers blob bytes from somewhere off the node: the origin registry,
// or (in p2p) peers with the origin as fallback.
type Source interface {
	// FetchBlob returns the blob's bytes from offset on, and the blob's total
	// size. offset > 0 resumes a partial download; a Source that cannot seek
	// returns an error rather than bytes from 0. The bytes are not verified here:
	// the caller hashes them and the store refuses a mismatch. The returned reader
	// must be closed. Errors wrap ErrNotFound, ErrUnavailable or ErrUnauthorized.
	FetchBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error)
}

// RangeSource is a Source that also delivers any byte range of a blob, so a
// reader of a blob's end need not wait for its start (lazy loading reads an
// eStargz layer's footer and table of contents first). The fetcher uses it
// when its Source implements it, and streams sequentially otherwise.
type RangeSource interface {
	Source
	// BlobSize returns the blob's total size without fetching its bytes.
	// Errors as FetchBlob's.
	BlobSize(ctx context.Context, repo name.Repository, dgst v1.Hash) (int64, error)
	// FetchRange returns the n bytes (n > 0) of the blob at off. The reader
	// delivers exactly n bytes, or fails (io.ErrUnexpectedEOF when the
	// source ends early); it must be closed. The bytes are not verified: the
	// store verifies the whole blob at its commit. A range past the blob's
	// end wraps ErrSizeMismatch; a source that turns out to serve whole blobs
	// only wraps ErrNoRanges (the caller falls back to FetchBlob). Other
	// errors wrap ErrNotFound, ErrUnavailable or ErrUnauthorized.
	FetchRange(ctx context.Context, repo name.Repository, dgst v1.Hash, off, n int64) (io.ReadCloser, error)
}

// ManifestSource resolves tags and reads manifests.
type ManifestSource interface {
	// Resolve returns the descriptor a reference (tag or digest) points at now.
	Resolve(ctx context.Context, ref name.Reference) (Descriptor, error)
	// Manifest returns a manifest's bytes, verified against dgst and at most
	// MaxManifestSize long, with its media type.
	Manifest(ctx context.Context, repo name.Repository, dgst v1.Hash) ([]byte, string, error)
}
