package predictor

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the predictor's Prometheus metrics. Whoever drives the
// predictor moves them: the Engine counts predictions and jobs issued; the
// executor of jobs (the cluster later, the simulator now) reports job states,
// hits and waste.
type Metrics struct {
	// Predictions made, by model.
	Predictions *prometheus.CounterVec
	// Jobs: prefetch jobs in each state at the last step (expired: those
	// whose pins lapsed at it).
	Jobs *prometheus.GaugeVec
	// JobsIssued: prefetch jobs the planner issued, by reason.
	JobsIssued *prometheus.CounterVec
	// PrefetchBytes: bytes brought onto nodes by prefetch jobs.
	PrefetchBytes prometheus.Counter
	// Hits: instance starts that found prefetched content (content a job
	// brought that no start had used yet).
	Hits prometheus.Counter
	// WasteBytes: prefetched bytes removed (or still unused when counted)
	// without any start having used them.
	WasteBytes prometheus.Counter
}

// NewMetrics creates the predictor's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Predictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_predictor_predictions_total",
			Help: "Predictions made, by model.",
		}, []string{"model"}),
		Jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "thaw_predictor_prefetch_jobs",
			Help: "Prefetch jobs in each state.",
		}, []string{"state"}),
		JobsIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_predictor_prefetch_jobs_issued_total",
			Help: "Prefetch jobs issued by the planner, by reason (model, or shared for shared layers).",
		}, []string{"reason"}),
		PrefetchBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_predictor_prefetch_bytes_total",
			Help: "Bytes brought onto nodes by prefetch jobs.",
		}),
		Hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_predictor_prefetch_hits_total",
			Help: "Instance starts that found prefetched content.",
		}),
		WasteBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "thaw_predictor_prefetch_waste_bytes_total",
			Help: "Prefetched bytes evicted or expired without any start using them.",
		}),
	}
	reg.MustRegister(m.Predictions, m.Jobs, m.JobsIssued, m.PrefetchBytes, m.Hits, m.WasteBytes)
	for _, s := range JobStates {
		m.Jobs.WithLabelValues(string(s))
	}
	return m
}

// SetJobs sets the jobs gauge from a count per state; states missing from
// counts are set to zero.
func (m *Metrics) SetJobs(counts map[JobState]int) {
	if m == nil {
		return
	}
	for _, s := range JobStates {
		m.Jobs.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
}
