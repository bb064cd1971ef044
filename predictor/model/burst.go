package model

import (
	"fmt"
	"math"
	"time"

	"github.com/thaw-dev/thaw/predictor"
)

// BurstConfig tunes the burst model.
type BurstConfig struct {
	// Alpha and Beta are the smoothing factors of level and trend (Holt's
	// linear method).
	Alpha, Beta float64
	// Horizon is how far ahead the trend is projected.
	Horizon time.Duration
	// Headroom multiplies the projected peak: a burst is rarely smooth.
	// The result is rounded, so it adds an instance only from 5 (at 1.1).
	Headroom float64
	// MinInstances: apps projected to need fewer instances than this are
	// not predicted (one instance needs no spreading; the other models keep
	// its image).
	MinInstances int
	// Forget drops an app idle this long.
	Forget time.Duration
}

// DefaultBurstConfig smooths with α=0.5, β=0.3, projects 3 minutes ahead,
// adds 10% headroom, predicts apps that will need 2 instances or more, and
// forgets apps idle for 15 minutes.
func DefaultBurstConfig() BurstConfig {
	return BurstConfig{Alpha: 0.5, Beta: 0.3, Horizon: 3 * time.Minute, Headroom: 1.1, MinInstances: 2, Forget: 15 * time.Minute}
}

// Validate reports a configuration that cannot work.
func (c BurstConfig) Validate() error {
	switch {
	case !(c.Alpha > 0 && c.Alpha <= 1) || !(c.Beta >= 0 && c.Beta <= 1):
		return fmt.Errorf("%w: burst alpha %g, beta %g: want 0 < alpha <= 1 and 0 <= beta <= 1", predictor.ErrInvalidConfig, c.Alpha, c.Beta)
	case c.Horizon < time.Minute:
		return fmt.Errorf("%w: burst horizon %s: want at least a minute", predictor.ErrInvalidConfig, c.Horizon)
	case !(c.Headroom >= 1 && c.Headroom < 100):
		return fmt.Errorf("%w: burst headroom %g: want 1 to 100", predictor.ErrInvalidConfig, c.Headroom)
	case c.MinInstances < 1:
		return fmt.Errorf("%w: burst MinInstances %d: want at least 1", predictor.ErrInvalidConfig, c.MinInstances)
	case c.Forget < time.Minute:
		return fmt.Errorf("%w: burst forget %s: want at least a minute", predictor.ErrInvalidConfig, c.Forget)
	}
	return nil
}

// Burst predicts from the trend of an app's instance count how many
// instances, hence nodes, it will need in the next minutes. Instances are
// concurrency: invocation rate × mean duration (see predictor.Observation).
//
// Each minute it updates a level and a trend with Holt's linear exponential
// smoothing (minutes without invocations count as 0 instances) and, when
// the trend rises, projects them Horizon ahead. With x the larger of that
// projection and the last count, the prediction is max(ceil(x),
// round(x × Headroom)) instances (so one steady instance stays one). Only
// apps active in the minute observed last are predicted, for the next
// Horizon.
type Burst struct {
	cfg  BurstConfig
	last int64 // last minute observed
	seen bool
	apps map[predictor.AppID]*burstApp
	buf  map[predictor.AppID]int
}

var _ predictor.Model = (*Burst)(nil)

type burstApp struct {
	level, trend float64
	lastCount    int
	lastActive   int64
}

// NewBurst returns a burst model.
func NewBurst(cfg BurstConfig) (*Burst, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Burst{cfg: cfg, apps: map[predictor.AppID]*burstApp{}, buf: map[predictor.AppID]int{}}, nil
}

// Observe implements predictor.Model.
func (b *Burst) Observe(minute time.Time, obs []predictor.Observation) {
	m := predictor.Minute(minute)
	if b.seen && m <= b.last {
		return
	}
	forget := int64(b.cfg.Forget / time.Minute)
	// Minutes skipped since the last observation count as idle, but no
	// more of them than it takes to forget an app.
	if b.seen {
		for k := b.last + 1; k < m && k <= b.last+forget; k++ {
			for _, a := range b.apps {
				b.update(a, 0)
			}
		}
	}
	b.seen, b.last = true, m
	clear(b.buf)
	for _, o := range obs {
		if o.Invocations > 0 || o.Instances > 0 {
			b.buf[o.App] = max(b.buf[o.App], o.Instances, 1)
		}
	}
	for app, n := range b.buf {
		if b.apps[app] == nil {
			b.apps[app] = &burstApp{level: float64(n), lastCount: n, lastActive: m}
		}
	}
	for app, a := range b.apps {
		n, active := b.buf[app]
		if active && a.lastActive == m {
			continue // just created
		}
		b.update(a, n)
		if active {
			a.lastActive = m
		} else if m-a.lastActive >= forget {
			delete(b.apps, app)
		}
	}
}

func (b *Burst) update(a *burstApp, n int) {
	x := float64(n)
	level := b.cfg.Alpha*x + (1-b.cfg.Alpha)*(a.level+a.trend)
	a.trend = b.cfg.Beta*(level-a.level) + (1-b.cfg.Beta)*a.trend
	a.level = level
	a.lastCount = n
}

// expected is the most instances a is projected to need over the horizon,
// before headroom.
func (b *Burst) expected(a *burstApp) float64 {
	last := float64(a.lastCount)
	if a.trend > 0 {
		return max(last, a.level+a.trend*float64(b.cfg.Horizon/time.Minute))
	}
	return last
}

// Predict implements predictor.Model.
func (b *Burst) Predict(now time.Time, horizon time.Duration) []predictor.Prediction {
	n := predictor.Minute(now)
	until := predictor.MinuteStart(n + int64(min(horizon, b.cfg.Horizon)/time.Minute))
	var out []predictor.Prediction
	for app, a := range b.apps {
		if a.lastActive != b.last || b.last != n-1 {
			continue
		}
		x := b.expected(a)
		need := max(int(math.Ceil(x-1e-9)), int(math.Round(x*b.cfg.Headroom)))
		if need < b.cfg.MinInstances {
			continue
		}
		out = append(out, predictor.Prediction{App: app, From: predictor.MinuteStart(n), Until: until, Instances: need, Model: "burst"})
	}
	sortPredictions(out)
	return out
}
