package store

import (
	"context"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Info describes one blob in the store.
type Info struct {
	Digest   v1.Hash
	Size     int64 // total size (announced size for a partial blob)
	Present  int64 // bytes on disk: Size when complete
	Complete bool
	Pinned   bool
	InUse    bool      // open readers or an active ingestion
	LastUsed time.Time // last Open or commit (partial: or end of an ingestion); drives eviction
}

// Blob is an open blob, complete or partial. It stays readable while open even
// if it is evicted or deleted meanwhile.
type Blob interface {
	// ReadAt reads len(p) bytes at off. For a partial blob it blocks until the
	// bytes have arrived, the ingestion fails (its error is returned), or the
	// context given to Open is done. Once an ingestion ended without a commit,
	// reads of missing bytes fail at once with its error until another
	// ingestion resumes the partial; a partial found on disk at start-up, with
	// no ingestion yet, waits for one. Reading past Size returns io.EOF as
	// io.ReaderAt requires. The last byte of a partial blob is released only after
	// the digest is verified, so a reader never receives a whole wrong blob.
	ReadAt(p []byte, off int64) (int, error)
	// Size is the blob's total size.
	Size() int64
	// ReadSeeker returns an io.ReadSeeker over the whole blob. For a complete
	// blob it is the *os.File itself, so an HTTP server can sendfile it (all
	// calls then share one offset). For a partial blob it is a new reader whose
	// Read returns the bytes readable now and blocks only when there are none.
	// Either must not be closed: Close the Blob.
	ReadSeeker() io.ReadSeeker
	// Complete reports whether the blob was verified and committed when opened.
	Complete() bool
	Close() error
}

// Provider opens blobs.
type Provider interface {
	// Open opens a complete blob, or a partial one that is present on disk or
	// being ingested. It returns an error wrapping puller.ErrNotFound when the
	// store has neither. ctx bounds the blocking reads of a partial blob.
	Open(ctx context.Context, dgst v1.Hash) (Blob, error)
}

// Ingester writes blobs.
type Ingester interface {
	// Ingest starts or resumes writing the blob of the given digest and total
	// size. A partial blob on disk from an earlier run is resumed: Offset()
	// says how many bytes are already present. Only one ingestion per digest
	// can be open at a time in one Store (ErrBusy otherwise); a complete blob
	// returns ErrExists. The store reserves size bytes against the quota,
	// evicting least recently used blobs, or returns an error wrapping
	// puller.ErrQuota. A size different from a partial's recorded size
	// discards the partial and starts from zero.
	Ingest(ctx context.Context, dgst v1.Hash, size int64) (Ingestion, error)
}

// Ingestion is one writer of one blob. Its methods are not safe for
// concurrent use; readers of the same blob are.
type Ingestion interface {
	// Offset is the number of bytes present; Write appends there.
	Offset() int64
	// Write appends p and makes it visible to readers (except the final byte,
	// see Blob.ReadAt). Writing past the announced size fails with
	// puller.ErrSizeMismatch. A write error from the disk (ENOSPC) is returned
	// wrapped in puller.ErrQuota; the partial stays consistent up to Offset.
	Write(p []byte) (int, error)
	// Commit verifies size and sha256 and atomically makes the blob complete.
	// On a mismatch the partial is deleted, waiting readers get an error
	// wrapping puller.ErrDigestMismatch (or ErrSizeMismatch), and so does the
	// caller.
	Commit(ctx context.Context) error
	// Abort ends the ingestion with err: waiting readers get err. The bytes
	// written so far stay on disk to be resumed later, unless discard is true.
	Abort(err error, discard bool)
}

// Admin lists, deletes, pins and accounts blobs.
type Admin interface {
	// Stat describes one blob; puller.ErrNotFound if absent.
	Stat(ctx context.Context, dgst v1.Hash) (Info, error)
	// List describes every blob, complete and partial.
	List(ctx context.Context) ([]Info, error)
	// Delete removes a blob (complete or partial, not one being ingested:
	// ErrBusy; an absent one: puller.ErrNotFound). Open readers keep reading
	// what they opened; those waiting for bytes of a deleted partial get an
	// error wrapping puller.ErrNotFound. A pin of the digest stays.
	Delete(ctx context.Context, dgst v1.Hash) error
	// Pin protects a blob (present or not yet) from eviction; Unpin releases it.
	// Pins are persistent. Both are idempotent.
	Pin(ctx context.Context, dgst v1.Hash) error
	Unpin(ctx context.Context, dgst v1.Hash) error
	// Usage returns the bytes used (complete blobs plus partial reservations)
	// and the quota (0: none).
	Usage() (used, quota int64)
	// Evict removes least recently used, unpinned, unused complete blobs until
	// used <= target, and (whatever the target) unpinned partial blobs with
	// no ingestion nor reader not touched for the partial max age. It returns
	// what it removed.
	Evict(ctx context.Context, target int64) ([]Info, error)
}

// ContentStore is the whole store.
type ContentStore interface {
	Provider
	Ingester
	Admin
}
