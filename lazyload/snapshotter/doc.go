// Package snapshotter embeds the stargz snapshotter
// (github.com/containerd/stargz-snapshotter) in the thaw daemon: containerd
// reaches it as a proxy snapshotter on a unix socket, and it mounts eStargz
// layers as FUSE file systems whose reads become range requests to the node
// mirror (MirrorHosts), so lazily loaded bytes go through the content store
// and the peer network like whole blobs do.
//
// It owns the snapshotter's socket, root directory and mounts, and unmounts
// and removes them when it stops. It does not serve ranges (puller/mirror
// does) and does not decide which layers are lazy: containerd asks for a
// remote snapshot, and a layer that is not eStargz fails to mount, which
// makes containerd pull it whole (through the mirror as usual).
package snapshotter
