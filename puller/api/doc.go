// Package api is the node's local HTTP API, JSON under /api/v1/, that the thaw
// CLI talks to over a unix socket (or loopback): status, images, blobs, gc and
// prefetch jobs. It holds the handlers and the matching Client; the work itself
// is done by the store, catalog and prefetcher it is given.
package api
