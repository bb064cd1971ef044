// Package convert turns an image into eStargz
// (github.com/containerd/stargz-snapshotter/estargz), layer by layer and in
// parallel, with the start-up files of a workload first in each layer, and
// annotates every layer with its TOC digest and uncompressed size so that the
// stargz snapshotter can verify and mount it lazily. Verify checks a built
// layer against its TOC digest, chunk by chunk.
//
// It does not run workloads or talk to containerd; reading and writing
// images goes through go-containerregistry (Copy).
package convert
