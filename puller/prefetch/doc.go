// Package prefetch pulls whole images into the node's store ahead of need:
// resolve the reference, walk the index to the platforms asked for, and bring
// every manifest, config and layer in, a few blobs at a time, reporting
// progress as it goes.
//
// It does not talk to containerd (see puller/ctrimport) and does not decide
// what to prefetch (the predictor does, later).
package prefetch
