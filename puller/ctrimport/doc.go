// Package ctrimport imports images from the node's store into containerd, so
// that `ctr images ls` (and the CRI) list them and `ctr run` needs no pull.
//
// It drives containerd's own Go client: a pull whose only registry host is the
// node mirror, so every byte comes out of thaw's store over loopback, and
// containerd writes its content store and unpacks into its snapshotter as in
// any pull. It does not fetch from registries itself.
package ctrimport
