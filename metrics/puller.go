package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Sources of bytes, the values of the "source" label.
const (
	SourceCache    = "cache"    // already complete in the node's store
	SourceUpstream = "upstream" // fetched from the origin registry
	SourcePeer     = "peer"     // fetched from another thaw node
)

// latencyBuckets spans a cached manifest (sub-millisecond) to a large layer
// pulled over a slow link (minutes).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Puller holds the metrics of the node's image pipeline: the mirror, the
// fetcher and the content store.
type Puller struct {
	// RequestDuration: mirror requests by kind (manifest, blob), method, HTTP
	// code and source, from request to the last byte written.
	RequestDuration *prometheus.HistogramVec
	// PullDuration: time to have a whole blob on the node, by source.
	PullDuration *prometheus.HistogramVec
	// Bytes: bytes delivered to clients of the mirror, by source.
	Bytes *prometheus.CounterVec
	// FetchedBytes: bytes brought onto the node, by source (upstream, peer).
	FetchedBytes *prometheus.CounterVec
	// CacheRequests: blob and manifest lookups by kind and result (hit, miss).
	CacheRequests *prometheus.CounterVec
	// InFlight: blob fetches running now.
	InFlight prometheus.Gauge
	// UpstreamErrors: failed upstream calls by kind of error.
	UpstreamErrors *prometheus.CounterVec
	// StaleServed: tag resolutions answered from the last known digest because
	// the upstream was unavailable.
	StaleServed prometheus.Counter
	// Lazy: blobs read by range before they are complete.
	Lazy *Lazy
}

// NewPuller creates and registers the pipeline metrics on reg.
func NewPuller(reg prometheus.Registerer) *Puller {
	m := &Puller{
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "thaw_mirror_request_duration_seconds",
			Help:    "Mirror request latency, from request to last byte, by kind, method, code and source.",
			Buckets: latencyBuckets,
		}, []string{"kind", "method", "code", "source"}),
		PullDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "thaw_pull_duration_seconds",
			Help:    "Time to bring a whole blob onto the node, by source.",
			Buckets: latencyBuckets,
		}, []string{"source"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_served_bytes_total",
			Help: "Bytes served to mirror clients, by the source the bytes came from.",
		}, []string{"source"}),
		FetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_fetched_bytes_total",
			Help: "Bytes fetched onto the node, by source.",
		}, []string{"source"}),
		CacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_cache_requests_total",
			Help: "Store lookups by kind (manifest, blob) and result (hit, miss).",
		}, []string{"kind", "result"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "thaw_fetches_in_flight",
			Help: "Blob fetches running now.",
		}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_upstream_errors_total",
			Help: "Failed upstream registry calls by kind of error.",
		}, []string{"kind"}),
		StaleServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_stale_tag_resolutions_total",
			Help: "Tags answered with the last known digest because the upstream was unavailable.",
		}),
	}
	reg.MustRegister(m.RequestDuration, m.PullDuration, m.Bytes, m.FetchedBytes,
		m.CacheRequests, m.InFlight, m.UpstreamErrors, m.StaleServed)
	m.Lazy = NewLazy(reg)
	return m
}

// RegisterStore registers gauges that read the store's usage when scraped.
func RegisterStore(reg prometheus.Registerer, usage func() (used, quota int64)) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "thaw_store_bytes",
			Help: "Bytes used by the content store, complete blobs plus reservations for partial ones.",
		}, func() float64 { u, _ := usage(); return float64(u) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "thaw_store_quota_bytes",
			Help: "The content store's disk quota (0: unlimited).",
		}, func() float64 { _, q := usage(); return float64(q) }),
	)
}

// RegisterRuntime registers the Go runtime and process collectors.
func RegisterRuntime(reg prometheus.Registerer) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}
