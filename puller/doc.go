// Package puller is the node's image pipeline: the contracts that tie the upstream
// registry client, the content store, the blob fetcher and the registry mirror
// together.
//
// The package itself holds only the small interfaces and types that cross those
// parts, so that each subpackage depends on this one and not on its siblings:
//
//   - store: content-addressed blobs on disk, complete and partial (ContentStore).
//   - upstream: the origin registry client built on go-containerregistry (Source).
//   - fetch: one fetch per blob per node, readers streaming as bytes arrive.
//   - catalog: tag resolution cache and the images the node knows.
//   - mirror: the read side of the OCI distribution API that containerd calls.
//   - prefetch: walking an image and pulling every blob; containerd import.
//   - api: the node's local JSON API and its client.
//
// puller does not know about peers: the p2p package implements Source and is
// handed to the fetcher by cmd/thaw.
package puller
