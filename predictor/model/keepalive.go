package model

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/thaw-dev/thaw/predictor"
)

// KeepAlive is the fixed keep-alive policy that AWS Lambda (10 minutes) and
// Azure Functions (20 minutes) use for instances, applied to images: after
// each active minute an app is predicted active for Window more, so its
// image stays pinned where it ran; it never predicts a return.
type KeepAlive struct {
	window int64
	apps   map[predictor.AppID]*keepApp
}

type keepApp struct {
	last      int64
	instances int
}

var _ predictor.Model = (*KeepAlive)(nil)

// NewKeepAlive returns a fixed keep-alive of window.
func NewKeepAlive(window time.Duration) (*KeepAlive, error) {
	if window < time.Minute {
		return nil, fmt.Errorf("%w: keep-alive %s: want at least a minute", predictor.ErrInvalidConfig, window)
	}
	return &KeepAlive{window: int64(window / time.Minute), apps: map[predictor.AppID]*keepApp{}}, nil
}

// Observe implements predictor.Model.
func (k *KeepAlive) Observe(minute time.Time, obs []predictor.Observation) {
	m := predictor.Minute(minute)
	for _, o := range obs {
		if o.Invocations <= 0 && o.Instances <= 0 {
			continue
		}
		a := k.apps[o.App]
		if a == nil {
			a = &keepApp{}
			k.apps[o.App] = a
		}
		a.last, a.instances = m, max(o.Instances, 1)
	}
	for app, a := range k.apps {
		if m-a.last > k.window {
			delete(k.apps, app) // it predicts nothing for the app any more
		}
	}
}

// Predict implements predictor.Model.
func (k *KeepAlive) Predict(now time.Time, _ time.Duration) []predictor.Prediction {
	n := predictor.Minute(now)
	var out []predictor.Prediction
	for app, a := range k.apps {
		till := a.last + 1 + k.window
		if till <= n {
			continue
		}
		out = append(out, predictor.Prediction{App: app, From: predictor.MinuteStart(n), Until: predictor.MinuteStart(till), Instances: a.instances, Model: "keepalive"})
	}
	sortPredictions(out)
	return out
}

// sortPredictions orders predictions by app, so that output does not depend
// on map order and replays are deterministic.
func sortPredictions(ps []predictor.Prediction) {
	slices.SortFunc(ps, func(a, b predictor.Prediction) int { return strings.Compare(string(a.App), string(b.App)) })
}
