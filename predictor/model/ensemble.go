package model

import (
	"fmt"
	"time"

	"github.com/thaw-dev/thaw/predictor"
)

// EnsembleConfig configures thaw's combined model.
type EnsembleConfig struct {
	Periodic  PeriodicConfig
	Histogram HistogramConfig
	Burst     BurstConfig
}

// DefaultEnsembleConfig is thaw's default: the default periodic and burst
// models, and the paper's histogram with only the windows that open after
// a pre-warm gap and last at most 20 minutes. thaw acts on returns it can
// time, not on recency: a node's LRU cache keeps what was just used anyway,
// and disk pinned for an app that may or may not come back (a keep-alive
// window, 4 hours for an uncertain app in the paper, or a wide window) is
// taken from the LRU cache, which under a tight budget costs more misses
// than the pins save.
func DefaultEnsembleConfig() EnsembleConfig {
	h := DefaultHistogramConfig()
	h.KeepAlive = 0
	h.MinPrewarm = time.Minute
	h.MaxWindow = 20 * time.Minute
	return EnsembleConfig{Periodic: DefaultPeriodicConfig(), Histogram: h, Burst: DefaultBurstConfig()}
}

// Validate reports a configuration that cannot work.
func (c EnsembleConfig) Validate() error {
	for _, err := range []error{c.Periodic.Validate(), c.Histogram.Validate(), c.Burst.Validate()} {
		if err != nil {
			return err
		}
	}
	return nil
}

// Ensemble is thaw's model: for each app the periodic prediction when the
// app has a period (it is precise to the minute), else the hybrid
// histogram's; the burst model then raises the instance count (and so the
// number of nodes) of apps whose rate is climbing, adding a prediction for
// a climbing app the others do not predict.
type Ensemble struct {
	periodic  *Periodic
	histogram *Histogram
	burst     *Burst
}

var _ predictor.Model = (*Ensemble)(nil)

// NewEnsemble returns thaw's combined model.
func NewEnsemble(cfg EnsembleConfig) (*Ensemble, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ensemble: %w", err)
	}
	p, _ := NewPeriodic(cfg.Periodic)
	h, _ := NewHistogram(cfg.Histogram)
	b, _ := NewBurst(cfg.Burst)
	return &Ensemble{periodic: p, histogram: h, burst: b}, nil
}

// Observe implements predictor.Model.
func (e *Ensemble) Observe(minute time.Time, obs []predictor.Observation) {
	e.periodic.Observe(minute, obs)
	e.histogram.Observe(minute, obs)
	e.burst.Observe(minute, obs)
}

// Predict implements predictor.Model.
func (e *Ensemble) Predict(now time.Time, horizon time.Duration) []predictor.Prediction {
	byApp := map[predictor.AppID]int{}
	out := e.periodic.Predict(now, horizon)
	for i, p := range out {
		byApp[p.App] = i
	}
	for _, p := range e.histogram.Predict(now, horizon) {
		if _, ok := byApp[p.App]; ok {
			continue
		}
		if _, periodic := e.periodic.Period(p.App, now); periodic {
			continue // its next start is known better than the histogram knows it
		}
		byApp[p.App] = len(out)
		out = append(out, p)
	}
	for _, b := range e.burst.Predict(now, horizon) {
		i, ok := byApp[b.App]
		if !ok {
			byApp[b.App] = len(out)
			out = append(out, b)
			continue
		}
		p := &out[i]
		if b.Instances > p.Instances {
			p.Instances = b.Instances
			p.Model += "+burst"
		}
		if b.From.Before(p.From) {
			p.From = b.From
		}
		if b.Until.After(p.Until) {
			p.Until = b.Until
		}
	}
	sortPredictions(out)
	return out
}
