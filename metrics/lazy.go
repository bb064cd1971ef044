package metrics

import "github.com/prometheus/client_golang/prometheus"

// Kinds of lazily fetched bytes, the values of the "kind" label.
const (
	LazyDemand     = "demand"     // ranges a reader waits for
	LazyBackground = "background" // the rest of a lazily opened blob, filled in at a bounded rate
)

// Lazy holds the metrics of lazy loading: blobs read by range before they
// are complete.
type Lazy struct {
	// FetchedBytes: bytes of lazily opened blobs brought onto the node, by
	// kind (demand, background).
	FetchedBytes *prometheus.CounterVec
	// RangeFetchDuration: time to bring one range request for readers from
	// the source.
	RangeFetchDuration prometheus.Histogram
	// RangeFirstByte: mirror range requests (GET with Range), from the
	// request to the first byte of the answer.
	RangeFirstByte prometheus.Histogram
	// RangeDuration: mirror range requests, from the request to the last
	// byte: how long a lazy reader waited for a region (the eStargz
	// prioritized region is one such read).
	RangeDuration prometheus.Histogram
}

// NewLazy creates and registers the lazy loading metrics on reg.
func NewLazy(reg prometheus.Registerer) *Lazy {
	m := &Lazy{
		FetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_lazy_fetched_bytes_total",
			Help: "Bytes of lazily read blobs fetched onto the node, by kind: demand (a reader waits for them) or background (the rest, at a bounded rate).",
		}, []string{"kind"}),
		RangeFetchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_lazy_range_fetch_duration_seconds",
			Help:    "Time to fetch one range that readers wait for from the source.",
			Buckets: latencyBuckets,
		}),
		RangeFirstByte: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_mirror_range_first_byte_seconds",
			Help:    "Mirror blob requests with a Range header, from the request to the first byte of the answer.",
			Buckets: latencyBuckets,
		}),
		RangeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thaw_mirror_range_duration_seconds",
			Help:    "Mirror blob requests with a Range header, from the request to the last byte of the answer.",
			Buckets: latencyBuckets,
		}),
	}
	// Both kinds exist from the start, so a rate over them is 0, not absent.
	m.FetchedBytes.WithLabelValues(LazyDemand)
	m.FetchedBytes.WithLabelValues(LazyBackground)
	reg.MustRegister(m.FetchedBytes, m.RangeFetchDuration, m.RangeFirstByte, m.RangeDuration)
	return m
}
