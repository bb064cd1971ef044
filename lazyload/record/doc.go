// Package record finds a workload's start-up files, for thaw convert
// --record: it runs the image's entrypoint once in containerd, watches the
// container's rootfs with fanotify between the task's creation and its end, and
// returns the files opened or executed, in order, until the workload exits
// or prints its ready line.
//
// It does not convert images (lazyload/convert does) and needs root and a
// containerd with the overlayfs snapshotter.
package record
