// Package mirror serves the read side of the OCI distribution API, as
// containerd calls it through hosts.toml: GET /v2/, GET and HEAD of manifests
// by tag and digest and of blobs (with single and multiple byte ranges). The
// ?ns=<registry> parameter containerd adds selects the upstream registry.
//
// The mirror is a thin HTTP layer: request parsing (ParseRequest), OCI error
// bodies, headers and metrics. Resolution is catalog.Resolver's, bytes are the
// fetch.Fetcher's. It answers writes with 405 and, when it cannot serve,
// answers quickly with an error so that containerd falls back to the next host
// (the registry itself).
//
// A GET with Range, or a HEAD, of a blob that is not complete opens it
// lazily (LazyBlobs): the ranges asked for are fetched at once and in
// parallel and served as soon as their bytes are in the store, before the
// blob's earlier bytes. Such ranges are not verified yet (eStargz readers
// verify chunks themselves); an answer with the whole blob always is.
package mirror
