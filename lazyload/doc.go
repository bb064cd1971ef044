// Package lazyload will hold eStargz conversion and the embedded stargz
// snapshotter whose range reads go through the node mirror. Not built yet: see
// the lazy loading issue. The mirror already serves single and multi-range
// reads of complete and arriving blobs, which the snapshotter needs.
package lazyload
