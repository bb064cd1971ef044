package snapshotter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/stargz-snapshotter/snapshot"

	"github.com/thaw-dev/thaw/metrics"
)

// measuredFS is the stargz file system with thaw's lazy loading metrics
// around its three calls.
type measuredFS struct {
	fs  snapshot.FileSystem
	m   *metrics.Lazyload
	log *slog.Logger

	mu      sync.Mutex
	mounted map[string]time.Time // mount point → start of its mount, until its first Check
}

var _ snapshot.FileSystem = (*measuredFS)(nil)

func measured(fs snapshot.FileSystem, m *metrics.Lazyload, log *slog.Logger) *measuredFS {
	return &measuredFS{fs: fs, m: m, log: log, mounted: map[string]time.Time{}}
}

// Mount mounts a layer lazily. An error makes containerd pull the layer
// whole, so it is logged at info: a layer silently pulled whole is the
// failure lazy loading has to make visible.
func (f *measuredFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	start := time.Now()
	err := f.fs.Mount(ctx, mountpoint, labels)
	if err != nil {
		f.m.Mounts.WithLabelValues(metrics.MountError).Inc()
		f.log.Info("layer not mounted lazily; containerd pulls it whole", "layer", labels["containerd.io/snapshot/remote/stargz.digest"], "err", err)
		return err
	}
	f.m.Mounts.WithLabelValues(metrics.MountOK).Inc()
	f.m.MountDuration.Observe(time.Since(start).Seconds())
	f.m.Mounted.Inc()
	f.mu.Lock()
	f.mounted[mountpoint] = start
	f.mu.Unlock()
	return nil
}

// Check waits for the layer's prioritized region (the stargz file system
// waits for its prefetch); the first successful Check of a mount marks the
// time that region took to arrive.
func (f *measuredFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	start := time.Now()
	err := f.fs.Check(ctx, mountpoint, labels)
	f.m.PrefetchWait.Observe(time.Since(start).Seconds())
	if err == nil {
		f.mu.Lock()
		mountStart, first := f.mounted[mountpoint]
		delete(f.mounted, mountpoint)
		f.mu.Unlock()
		if first {
			f.m.PrioritizedFetch.Observe(time.Since(mountStart).Seconds())
		}
	}
	return err
}

func (f *measuredFS) Unmount(ctx context.Context, mountpoint string) error {
	err := f.fs.Unmount(ctx, mountpoint)
	if err == nil {
		f.m.Mounted.Dec()
	}
	f.mu.Lock()
	delete(f.mounted, mountpoint)
	f.mu.Unlock()
	return err
}
