// Package lazyload is thaw's lazy loading of eStargz images: its
// sub-packages convert images to eStargz (convert) and embed the stargz
// snapshotter, whose range reads go through the node mirror (snapshotter).
// This package itself holds nothing; the mirror that serves the ranges is
// puller/mirror.
package lazyload
