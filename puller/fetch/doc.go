// Package fetch brings blobs onto the node: one fetch per digest per node,
// shared by every concurrent reader, each of which streams the bytes as they
// arrive in the content store.
//
// A fetch runs detached from the request that started it (a client that hangs
// up does not waste the bytes already moved), resumes a partial blob from
// where it stopped, retries a broken upstream stream from the last byte
// written, and gives up on a stream that makes no progress for IdleTimeout.
//
// Lazy loading (OpenLazy, lazy.go): a blob opened for range reads is ingested
// empty with the size its puller.RangeSource reports; a read fetches the
// ChunkSize-aligned chunks it needs with range requests (coalesced, at most
// RangeConcurrency in flight per node) ahead of everything else, while the
// fill brings the rest in order at BackgroundRate and commits once every
// byte is there. Ranges being written are claimed, so no byte is fetched
// twice; a whole-blob reader (Open, Ensure) lifts the rate. A Source that is
// not a RangeSource, or ignores ranges, is streamed sequentially.
//
// The package does not verify bytes itself (the store does on commit) and does
// not know where a Source gets them.
package fetch
