// Package catalog knows the images a node has seen: which digest each tag
// pointed at and when, persisted in one JSON file so that the last known digest
// survives a restart and can be served when the upstream is down.
//
// Resolver turns references into digests with a short-TTL cache in front of a
// puller.ManifestSource. The catalog does not hold manifest or blob bytes (the
// store does) and does not fetch them.
package catalog
