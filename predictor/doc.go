// Package predictor will ingest invocation events, model hot functions and
// plan prefetch jobs ahead of demand, and replay recorded traces. Not built
// yet: see the prediction issue. Its jobs will run through the same prefetch
// path as `thaw prefetch` (puller/prefetch).
package predictor
