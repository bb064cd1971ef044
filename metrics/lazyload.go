package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Results of a lazy mount, the values of the "result" label.
const (
	MountOK    = "ok"    // the layer was mounted lazily
	MountError = "error" // not mounted: containerd pulls the layer whole instead
)

// Lazyload holds the metrics of the embedded stargz snapshotter. Bytes
// fetched on demand and in the background are the mirror's (the
// snapshotter's range reads all go through it).
type Lazyload struct {
	// Mounts: remote layer mounts by result. Errors are layers containerd
	// then pulls whole: not eStargz, TOC refused, mirror unreachable.
	Mounts *prometheus.CounterVec
	// MountDuration: from the mount request to a FUSE file system serving
	// the layer (resolve, fetch and verify the TOC, mount).
	MountDuration prometheus.Histogram
	// PrioritizedFetch: from a layer's mount request until its prioritized
	// region (the start-up files before the prefetch landmark) is on the
	// node, observed once per mount.
	PrioritizedFetch prometheus.Histogram
	// PrefetchWait: how long a container's start waited for the prioritized
	// regions of its layers.
	PrefetchWait prometheus.Histogram
	// Mounted: layers mounted lazily now.
	Mounted prometheus.Gauge
}

// NewLazyload creates and registers the lazy loading metrics on reg.
func NewLazyload(reg prometheus.Registerer) *Lazyload {
	m := &Lazyload{
		Mounts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_lazy_mounts_total",
			Help: "Remote (lazy) layer mounts by result; errors are layers containerd pulls whole instead.",
		}, []string{"result"}),
		MountDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_lazy_mount_duration_seconds",
			Help:    "Time to mount a layer lazily: resolve, fetch and verify its TOC, mount it.",
			Buckets: latencyBuckets,
		}),
		PrioritizedFetch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_lazy_prioritized_fetch_seconds",
			Help:    "Time from a layer's mount request until its prioritized (start-up) region is on the node.",
			Buckets: latencyBuckets,
		}),
		PrefetchWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_lazy_prefetch_wait_seconds",
			Help:    "Time a container start waited for the prioritized regions of its layers.",
			Buckets: latencyBuckets,
		}),
		Mounted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "thaw_lazy_mounted_layers",
			Help: "Layers mounted lazily now.",
		}),
	}
	reg.MustRegister(m.Mounts, m.MountDuration, m.PrioritizedFetch, m.PrefetchWait, m.Mounted)
	return m
}

// StargzGatherer gathers the stargz snapshotter's own metrics (stargz_fs_*:
// per-layer operation latencies, on-demand reads, bytes served). The library
// registers them on Prometheus's default registry, which is not thaw's; this
// picks out its families only, so that they can be served beside thaw's
// without the default registry's Go and process collectors.
func StargzGatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := prometheus.DefaultGatherer.Gather()
		var out []*dto.MetricFamily
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "stargz_") {
				out = append(out, mf)
			}
		}
		return out, err
	})
}
