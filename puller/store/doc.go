// Package store is the node's content store: content-addressed blobs on disk,
// complete or still arriving.
//
// It owns the on-disk layout under its root, sha256 verification and atomic
// commit, partial blobs that can be read by range while they download and are
// resumed after a restart, the disk quota with LRU eviction, and pins. It does
// not know where bytes come from (see puller/fetch) nor about images or tags
// (see puller/catalog).
//
// Layout under the root:
//
//	blobs/sha256/<hex>          complete, verified blobs (read-only once renamed)
//	ingest/sha256/<hex>/data    a partial blob: a sparse file, its bytes at their offsets
//	ingest/sha256/<hex>/size    the announced total size, decimal
//	ingest/sha256/<hex>/ranges  the byte ranges of data present, one "start-end" line each
//	pins/sha256/<hex>           a pinned digest (empty file)
//
// An ingestion writes ranges in any order; the ranges file is replaced (write,
// fsync, rename) only after the data file was synced, so it never names a
// byte a crash lost. A partial without a ranges file (written by an older
// version) holds the first bytes of its data file. A commit hashes the bytes, checks size and digest, fsyncs the data, renames
// it into blobs/ and fsyncs the directory, so a crash leaves either a partial
// or a complete blob, never a wrong one. A complete blob's modification time
// is its LastUsed, so the eviction order survives a restart. Files ending in
// .tmp are being written; a new Store removes them.
//
// Only sha256 digests are kept: every method taking a digest rejects another
// algorithm or malformed hex with ErrInvalidDigest. One Store must own a root
// at a time. The conformance suite every implementation runs is in
// puller/store/storetest.
package store
