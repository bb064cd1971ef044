// Package fetch brings blobs onto the node: one fetch per digest per node,
// shared by every concurrent reader, each of which streams the bytes as they
// arrive in the content store.
//
// A fetch runs detached from the request that started it (a client that hangs
// up does not waste the bytes already moved), resumes a partial blob from
// where it stopped, retries a broken upstream stream from the last byte
// written, and gives up on a stream that makes no progress for IdleTimeout.
// The package does not verify bytes itself (the store does on commit) and does
// not know where a Source gets them.
package fetch
