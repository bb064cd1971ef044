package predictor_test

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/predictor"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is a Model that remembers what it was told and predicts one app.
type recorder struct {
	minutes []time.Time
	obs     [][]predictor.Observation
}

func (r *recorder) Observe(minute time.Time, obs []predictor.Observation) {
	r.minutes = append(r.minutes, minute)
	r.obs = append(r.obs, obs)
}

func (r *recorder) Predict(now time.Time, horizon time.Duration) []predictor.Prediction {
	return []predictor.Prediction{{App: "a", From: now, Until: now.Add(horizon), Instances: 1, Model: "rec"}}
}

type onePlanner struct{ got []predictor.Prediction }

func (p *onePlanner) Plan(now time.Time, preds []predictor.Prediction, _ predictor.ClusterView, _ []predictor.Job) []predictor.Job {
	p.got = preds
	return []predictor.Job{{ID: "j", Node: "n", App: "a", Deadline: now, Expires: now.Add(time.Minute), Reason: "rec"}}
}

func TestEngineStep(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.NewPredictor(reg)
	rec, pl := &recorder{}, &onePlanner{}
	cfg := predictor.DefaultEngineConfig()
	cfg.Metrics = m
	e, err := predictor.NewEngine(rec, pl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 8, 1, 0, 0, time.UTC)
	obs := []predictor.Observation{{App: "a", Invocations: 3, Instances: 1}}
	preds, jobs := e.Step(now, obs, nil, nil)
	if len(rec.minutes) != 1 || !rec.minutes[0].Equal(now.Add(-time.Minute)) || len(rec.obs[0]) != 1 {
		t.Errorf("model observed %v %v, want the minute before now", rec.minutes, rec.obs)
	}
	if len(preds) != 1 || len(pl.got) != 1 || !preds[0].Until.Equal(now.Add(cfg.Horizon)) || len(jobs) != 1 {
		t.Errorf("preds %v, planner got %v, jobs %v", preds, pl.got, jobs)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_predictions_total", map[string]string{"model": "rec"}); got != 1 {
		t.Errorf("predictions counted %v, want 1", got)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_jobs_issued_total", nil); got != 1 {
		t.Errorf("jobs counted %v, want 1", got)
	}
	predictor.SetJobs(m, map[predictor.JobState]int{predictor.JobRunning: 2, predictor.JobDone: 5})
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_jobs", map[string]string{"state": "done"}); got != 5 {
		t.Errorf("done jobs %v, want 5", got)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_jobs", map[string]string{"state": "failed"}); got != 0 {
		t.Errorf("failed jobs %v, want 0", got)
	}
	predictor.SetJobs(nil, nil) // nil metrics: a no-op

	if _, err := predictor.NewEngine(nil, pl, cfg); !errors.Is(err, predictor.ErrInvalidConfig) {
		t.Errorf("nil model: %v", err)
	}
	cfg.Horizon = time.Second
	if _, err := predictor.NewEngine(rec, pl, cfg); !errors.Is(err, predictor.ErrInvalidConfig) {
		t.Errorf("1s horizon: %v", err)
	}
}

func TestMinute(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want int64
	}{
		{time.Unix(0, 0), 0},
		{time.Unix(59, 999), 0},
		{time.Unix(60, 0), 1},
		{time.Unix(-1, 0), -1},
		{time.Unix(-60, 0), -1},
		{time.Unix(-61, 0), -2},
	} {
		if got := predictor.Minute(tc.t); got != tc.want {
			t.Errorf("Minute(%v) = %d, want %d", tc.t.Unix(), got, tc.want)
		}
		if s := predictor.MinuteStart(tc.want); s.After(tc.t) || !s.Add(time.Minute).After(tc.t) {
			t.Errorf("MinuteStart(%d) = %v does not contain %v", tc.want, s, tc.t)
		}
	}
}

func TestImageAndJobBytes(t *testing.T) {
	ls := []predictor.Layer{{Size: 3}, {Size: 4}}
	if (predictor.Image{Layers: ls}).Size() != 7 || (predictor.Job{Layers: ls}).Bytes() != 7 {
		t.Error("sizes do not add up")
	}
}
