package predictor

import "github.com/thaw-dev/thaw/metrics"

// SetJobs sets m's jobs gauge from a count per state; states missing from
// counts are set to zero. A nil m does nothing.
func SetJobs(m *metrics.Predictor, counts map[JobState]int) {
	if m == nil {
		return
	}
	for _, s := range JobStates {
		m.Jobs.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
}
