package store

import "errors"

// Errors of the store besides the shared ones in package puller (ErrNotFound,
// ErrDigestMismatch, ErrSizeMismatch, ErrQuota). Callers test them with
// errors.Is; the store wraps them with the digest they concern.
var (
	// ErrBusy: an ingestion of that digest is already open in this Store.
	// Wait for it to end (or open the partial blob and read it as it arrives).
	ErrBusy = errors.New("blob is being ingested")
	// ErrExists: the blob is already complete; there is nothing to ingest.
	ErrExists = errors.New("blob already exists")
	// ErrInvalidDigest: the digest is not a sha256 digest of 64 lowercase hex
	// characters, the only kind the store keeps.
	ErrInvalidDigest = errors.New("invalid digest")
)
