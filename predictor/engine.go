package predictor

import (
	"fmt"
	"time"

	"github.com/thaw-dev/thaw/metrics"
)

// EngineConfig tunes an Engine.
type EngineConfig struct {
	// Horizon is how far ahead the models are asked to look each step.
	Horizon time.Duration
	// Metrics, when not nil, counts predictions and jobs.
	Metrics *metrics.Predictor
}

// DefaultEngineConfig looks 10 minutes ahead.
func DefaultEngineConfig() EngineConfig {
	return EngineConfig{Horizon: 10 * time.Minute}
}

// Validate reports a configuration that cannot work.
func (c EngineConfig) Validate() error {
	if c.Horizon < time.Minute {
		return fmt.Errorf("%w: engine horizon %s: want at least a minute", ErrInvalidConfig, c.Horizon)
	}
	return nil
}

// Engine is one planning step, the same in a daemon and in a replay: feed
// the minute that ended to the model, ask it what comes, and let the planner
// turn that into jobs. It keeps no state of its own besides the model's, so
// a leader that takes over only needs the model's inputs and the jobs in
// force.
type Engine struct {
	model   Model
	planner Planner
	cfg     EngineConfig
}

// NewEngine returns an Engine over model and planner.
func NewEngine(model Model, planner Planner, cfg EngineConfig) (*Engine, error) {
	if model == nil || planner == nil {
		return nil, fmt.Errorf("%w: engine needs a model and a planner", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Engine{model: model, planner: planner, cfg: cfg}, nil
}

// Step runs at now, the start of a minute: obs is the activity of the
// minute before (see Model.Observe), active the jobs still in force, extra
// predictions made outside the model (hints an operator or a platform
// gave). An app keeps one prediction: extra's, unless the model's expects
// more instances. It returns the predictions and the new jobs. Not safe for
// concurrent use.
func (e *Engine) Step(now time.Time, obs []Observation, view ClusterView, active []Job, extra ...Prediction) ([]Prediction, []Job) {
	e.model.Observe(now.Add(-time.Minute), obs)
	preds := merge(e.model.Predict(now, e.cfg.Horizon), extra)
	jobs := e.planner.Plan(now, preds, view, active)
	if m := e.cfg.Metrics; m != nil {
		for _, p := range preds {
			m.Predictions.WithLabelValues(p.Model).Inc()
		}
		for _, j := range jobs {
			m.JobsIssued.WithLabelValues(j.Reason).Inc()
		}
	}
	return preds, jobs
}

// merge adds extra to preds, one prediction per app (see Step).
func merge(preds, extra []Prediction) []Prediction {
	if len(extra) == 0 {
		return preds
	}
	at := make(map[AppID]int, len(preds))
	for i, p := range preds {
		at[p.App] = i
	}
	for _, x := range extra {
		i, ok := at[x.App]
		switch {
		case !ok:
			at[x.App] = len(preds)
			preds = append(preds, x)
		case x.Instances >= preds[i].Instances:
			preds[i] = x
		}
	}
	return preds
}
