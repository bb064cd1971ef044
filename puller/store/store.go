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
	Present  int64 // bytes written (of a sparse partial: in all its ranges); Size when complete
	Complete bool
	Pinned   bool
	InUse    bool      // open readers or an active ingestion
	LastUsed time.Time // last Open or commit (partial: or end of an ingestion); drives eviction
}

// Blob is an open blob, complete or partial. It stays readable while open even
// if it is evicted or deleted meanwhile.
//
// A partial blob is sparse: its ingestion may write any range in any order,
// and readers see each range as soon as it is written, before the blob is
// verified. Verification is of the whole blob, at the commit.
type Blob interface {
	// ReadAt reads len(p) bytes at off. For a partial blob it blocks until
	// those bytes (only those: not the ones before off) have been written,
	// the ingestion fails (its error is returned), or the context given to
	// Open is done. The bytes of a partial blob are not verified yet: a
	// reader that needs verified bytes reads through ReadSeeker, reads the
	// whole blob in one ReadAt (which waits for the commit), or checks them
	// itself (eStargz chunks carry their own digests). Once the commit
	// refused the bytes, every read of a partial gets its error. Once an ingestion
	// ended without a commit, reads of missing bytes fail at once with its
	// error until another ingestion resumes the partial; a partial found on
	// disk at start-up, with no ingestion yet, waits for one. Reading past
	// Size returns io.EOF as io.ReaderAt requires.
	ReadAt(p []byte, off int64) (int, error)
	// Size is the blob's total size.
	Size() int64
	// Missing returns the ranges of [start, end) (clipped to the blob) not
	// written yet, in order; nil for a complete blob. A snapshot: they may
	// arrive at any moment after.
	Missing(start, end int64) []Range
	// ReadSeeker returns an io.ReadSeeker over the whole blob. For a complete
	// blob it is the *os.File itself, so an HTTP server can sendfile it (all
	// calls then share one offset). For a partial blob it is a new reader whose
	// Read returns the bytes readable now from its offset on and blocks only
	// when the byte at its offset is missing; it hands out the blob's last
	// byte only after the commit verified the digest, so a reader that reads
	// to the end never receives a whole wrong blob. Either must not be
	// closed: Close the Blob.
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
	// size. A partial blob on disk from an earlier run is resumed: Missing
	// says which ranges are still to write, Offset where the first gap is. Only one ingestion per digest
	// can be open at a time in one Store (ErrBusy otherwise); a complete blob
	// returns ErrExists. The store reserves size bytes against the quota,
	// evicting least recently used blobs, or returns an error wrapping
	// puller.ErrQuota. A size different from a partial's recorded size
	// discards the partial and starts from zero.
	Ingest(ctx context.Context, dgst v1.Hash, size int64) (Ingestion, error)
}

// Ingestion is the writing of one blob. WriteAt, Offset and Missing are safe
// for concurrent use (by several fetches of different ranges); Write is for
// one sequential writer (concurrent Writes would share its offset); Commit
// and Abort wait for the writes in flight. Readers of the same blob are
// independent of it.
//
// The store records which ranges of a partial blob are present, durably:
// a range is recorded (ingest/sha256/<hex>/ranges) only after its bytes were
// synced, every few MiB and when the ingestion ends. After a crash the
// partial resumes with the recorded ranges; bytes written after the last
// record are written again.
type Ingestion interface {
	// Offset is where Write writes next: at the start, the end of the run of
	// bytes present from offset 0 (for a new blob, 0); then advanced by
	// Write only.
	Offset() int64
	// Write writes p at Offset and advances it, as WriteAt does.
	Write(p []byte) (int, error)
	// WriteAt writes p at off and makes it visible to readers. Bytes of p
	// whose place is already present (or being written by another call) are
	// skipped, not written again: a range once written never changes before
	// the commit verifies it. Writing outside [0, size) fails with
	// puller.ErrSizeMismatch. A write error from the disk (ENOSPC) is returned
	// wrapped in puller.ErrQuota, with the count of p's bytes handled before
	// it; the partial stays consistent (what was written is recorded, the
	// rest is missing).
	WriteAt(p []byte, off int64) (int, error)
	// Missing returns the ranges of [start, end) not present yet (clipped to
	// the blob), in order.
	Missing(start, end int64) []Range
	// Commit checks that every byte is present, hashes the whole blob (the
	// bytes not hashed on the way are read back from disk; ctx bounds that)
	// and atomically makes it complete. When bytes are missing
	// (puller.ErrSizeMismatch) or the sha256 differs (puller.ErrDigestMismatch)
	// the partial is deleted and waiting readers get the error, and so does
	// the caller.
	Commit(ctx context.Context) error
	// Abort ends the ingestion with err: waiting readers get err. The bytes
	// written so far stay on disk, their ranges recorded, to be resumed later,
	// unless discard is true.
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
