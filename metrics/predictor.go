package metrics

import "github.com/prometheus/client_golang/prometheus"

// Predictor holds the metrics of prediction and pre-distribution. Whoever
// drives the predictor moves them: the engine counts predictions and jobs
// issued; the leader's planning loop sets the jobs by state; each node's
// job executor counts prefetched bytes, hits and waste; the event intake
// counts events taken and dropped. A replay (`thaw replay`) moves the same
// metrics in simulated time.
type Predictor struct {
	// Predictions made, by model.
	Predictions *prometheus.CounterVec
	// Jobs: prefetch jobs in each state at the last planning step.
	Jobs *prometheus.GaugeVec
	// JobsIssued: prefetch jobs the planner issued, by reason.
	JobsIssued *prometheus.CounterVec
	// PrefetchBytes: bytes brought onto nodes by prefetch jobs.
	PrefetchBytes prometheus.Counter
	// Hits: instance starts that found prefetched content (content a job
	// brought that no start had used yet).
	Hits prometheus.Counter
	// WasteBytes: prefetched bytes removed or expired without any start
	// having used them.
	WasteBytes prometheus.Counter
	// Events taken, by source (containerd, api, hint).
	Events *prometheus.CounterVec
	// EventsDropped: events refused, by reason (rate: over the rate limit;
	// apps: over the cap on apps tracked; invalid: malformed).
	EventsDropped *prometheus.CounterVec
	// Apps: apps the leader's model tracks.
	Apps prometheus.Gauge
}

// JobStates are the label values of Predictor.Jobs, in order; they match
// predictor.JobStates.
var JobStates = []string{"pending", "running", "done", "failed", "expired"}

// NewPredictor creates the predictor's metrics and registers them on reg.
func NewPredictor(reg prometheus.Registerer) *Predictor {
	m := &Predictor{
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
			Help: "Prefetch jobs issued, by reason (model, shared for shared layers, cover, manual).",
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
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_predictor_events_total",
			Help: "Events taken by the predictor, by source (containerd, api, hint).",
		}, []string{"source"}),
		EventsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_predictor_events_dropped_total",
			Help: "Events refused, by reason (rate, apps, invalid).",
		}, []string{"reason"}),
		Apps: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "thaw_predictor_apps",
			Help: "Apps the leader's model tracks.",
		}),
	}
	reg.MustRegister(m.Predictions, m.Jobs, m.JobsIssued, m.PrefetchBytes, m.Hits, m.WasteBytes, m.Events, m.EventsDropped, m.Apps)
	for _, s := range JobStates {
		m.Jobs.WithLabelValues(s)
	}
	for _, s := range []string{"containerd", "api", "hint"} {
		m.Events.WithLabelValues(s)
	}
	for _, r := range []string{"rate", "apps", "invalid"} {
		m.EventsDropped.WithLabelValues(r)
	}
	return m
}
