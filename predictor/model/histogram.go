package model

import (
	"fmt"
	"math"
	"time"

	"github.com/thaw-dev/thaw/predictor"
)

// HistogramConfig tunes the hybrid histogram policy. The defaults are the
// paper's.
type HistogramConfig struct {
	// Range is the longest idle time the histogram holds; longer ones are
	// out of bounds. Bin is the width of one bin, a whole number of
	// minutes. The paper: 4 hours of 1-minute bins.
	Range, Bin time.Duration
	// Head and Tail are the percentiles of idle time that open and close
	// the window when the histogram is representative (5th and 99th).
	Head, Tail float64
	// Margin widens the window on both sides: the head shrinks and the tail
	// grows by this fraction (10%).
	Margin float64
	// MinSamples is how many idle times an app needs before its histogram
	// is trusted; with fewer the app gets KeepAlive.
	MinSamples int
	// CVThreshold: the histogram is representative when the coefficient of
	// variation of its bin counts is at least this (2): the idle times
	// crowd into a few bins instead of spreading evenly.
	CVThreshold float64
	// OOBThreshold: when at least this share of idle times (0.5) is out of
	// bounds, the histogram cannot describe the app and the next idle time
	// is forecast from the series instead.
	OOBThreshold float64
	// ForecastAlpha is the smoothing factor of the forecaster (0.5) and
	// ForecastMargin the share of the forecast the window spans on each
	// side (15%, as the paper's ARIMA margin).
	ForecastAlpha, ForecastMargin float64
	// KeepAlive is what an app gets when its pattern is uncertain (too few
	// samples, or a flat histogram): no pre-warming and a window from its
	// last invocation to this long after. The paper keeps such apps for
	// the whole Range; 0 predicts nothing for them.
	KeepAlive time.Duration
	// MinPrewarm drops windows that open less than this after the app's
	// last active minute: a window that opens at once only says to keep
	// what was just used, which a node's LRU cache does anyway. 0 (the
	// paper) keeps every window.
	MinPrewarm time.Duration
	// MaxWindow drops windows longer than this: a wide window is a vague
	// prediction, and holding an image through it costs the node's cache
	// more than the misses it saves. 0 (the paper) keeps every window.
	MaxWindow time.Duration
}

// DefaultHistogramConfig returns the paper's settings: 4 hours of 1-minute
// bins, 5th and 99th percentiles with 10% margins, CV threshold 2, half the
// idle times out of bounds to switch to the forecast (15% margin), and a
// 4-hour keep-alive when uncertain; 5 idle times at least.
func DefaultHistogramConfig() HistogramConfig {
	return HistogramConfig{
		Range:          4 * time.Hour,
		Bin:            time.Minute,
		Head:           0.05,
		Tail:           0.99,
		Margin:         0.10,
		MinSamples:     5,
		CVThreshold:    2,
		OOBThreshold:   0.5,
		ForecastAlpha:  0.5,
		ForecastMargin: 0.15,
		KeepAlive:      4 * time.Hour,
	}
}

// Validate reports a configuration that cannot work.
func (c HistogramConfig) Validate() error {
	switch {
	case c.Bin < time.Minute || c.Bin%time.Minute != 0:
		return fmt.Errorf("%w: histogram bin %s: want a whole number of minutes", predictor.ErrInvalidConfig, c.Bin)
	case c.Range < c.Bin || c.Range%c.Bin != 0 || c.Range > 7*24*time.Hour:
		return fmt.Errorf("%w: histogram range %s: want a multiple of the bin (%s), at most a week", predictor.ErrInvalidConfig, c.Range, c.Bin)
	case !(c.Head >= 0 && c.Head < c.Tail && c.Tail <= 1):
		return fmt.Errorf("%w: histogram head %g and tail %g: want 0 <= head < tail <= 1", predictor.ErrInvalidConfig, c.Head, c.Tail)
	case !(c.Margin >= 0 && c.Margin < 1) || !(c.ForecastMargin >= 0 && c.ForecastMargin < 1):
		return fmt.Errorf("%w: histogram margins %g, %g: want 0 <= margin < 1", predictor.ErrInvalidConfig, c.Margin, c.ForecastMargin)
	case c.MinSamples < 1:
		return fmt.Errorf("%w: histogram MinSamples %d: want at least 1", predictor.ErrInvalidConfig, c.MinSamples)
	case !(c.CVThreshold >= 0) || !(c.OOBThreshold > 0 && c.OOBThreshold <= 1):
		return fmt.Errorf("%w: histogram CV threshold %g, out-of-bounds threshold %g: want CV >= 0 and 0 < OOB <= 1", predictor.ErrInvalidConfig, c.CVThreshold, c.OOBThreshold)
	case !(c.ForecastAlpha > 0 && c.ForecastAlpha <= 1):
		return fmt.Errorf("%w: forecast alpha %g: want 0 < alpha <= 1", predictor.ErrInvalidConfig, c.ForecastAlpha)
	case c.KeepAlive < 0 || c.MinPrewarm < 0 || c.MaxWindow < 0:
		return fmt.Errorf("%w: histogram keep-alive %s, min pre-warm %s, max window %s: want >= 0", predictor.ErrInvalidConfig, c.KeepAlive, c.MinPrewarm, c.MaxWindow)
	}
	return nil
}

// Pattern is how the hybrid policy sees an app.
type Pattern int

// The patterns: too little known or a flat histogram (Uncertain), a
// representative histogram (Histogram), idle times mostly out of bounds
// (Forecast).
const (
	Uncertain Pattern = iota
	Representative
	OutOfBounds
)

func (p Pattern) String() string {
	switch p {
	case Representative:
		return "histogram"
	case OutOfBounds:
		return "forecast"
	}
	return "keepalive"
}

// Histogram is the hybrid histogram policy of Shahrad et al., "Serverless in
// the Wild" (USENIX ATC 2020), per app, at minute resolution.
//
// An app's idle time is the number of minutes without invocations between
// two minutes with some (0 for back-to-back minutes). Idle times up to Range
// go into a histogram of Bin-wide bins; longer ones are out of bounds. After
// each active minute L the app gets a window relative to L+1:
//
//   - representative histogram (at least MinSamples idle times, fewer than
//     OOBThreshold out of bounds, bin-count CV >= CVThreshold): from the
//     Head percentile shrunk by Margin to the end of the Tail percentile's
//     bin grown by Margin. The gap before the window is the paper's
//     pre-warming window (the image need not be held), the window its
//     keep-alive.
//   - mostly out of bounds: the paper forecasts the next idle time with
//     ARIMA; this uses simple exponential smoothing of the idle-time series
//     (the minimum-MSE forecast of an ARIMA(0,1,1) process, ForecastAlpha
//     its smoothing factor), and a window of ±ForecastMargin around it.
//   - otherwise: no pre-warming and KeepAlive from L+1.
//
// MinPrewarm and MaxWindow (not in the paper) drop windows that open at
// once, leaving keep-alive to the node's LRU cache, and windows too wide to
// be worth holding an image through.
type Histogram struct {
	cfg   HistogramConfig
	nbins int
	bin   int64 // minutes
	rng   int64 // minutes
	apps  map[predictor.AppID]*histApp
}

var _ predictor.Model = (*Histogram)(nil)

type histApp struct {
	last      int64 // last active minute
	instances int   // instances in that minute
	bins      []uint32
	inRange   int
	oob       int
	sumSq     float64 // sum of squared bin counts, for the CV
	ses       float64 // smoothed idle time, minutes
	// The window in minutes after last+1, recomputed on every idle time.
	pattern    Pattern
	from, till int64
}

// NewHistogram returns a hybrid histogram policy.
func NewHistogram(cfg HistogramConfig) (*Histogram, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bin := int64(cfg.Bin / time.Minute)
	rng := int64(cfg.Range / time.Minute)
	return &Histogram{cfg: cfg, nbins: int(rng / bin), bin: bin, rng: rng, apps: map[predictor.AppID]*histApp{}}, nil
}

// Observe implements predictor.Model.
func (h *Histogram) Observe(minute time.Time, obs []predictor.Observation) {
	m := predictor.Minute(minute)
	for _, o := range obs {
		if o.Invocations <= 0 && o.Instances <= 0 {
			continue
		}
		a := h.apps[o.App]
		if a == nil {
			a = &histApp{last: m, bins: make([]uint32, h.nbins)}
			h.apps[o.App] = a
			h.decide(a)
		} else if m > a.last {
			h.add(a, m-a.last-1)
			a.last = m
		}
		a.instances = max(o.Instances, 1)
	}
}

// add records one idle time of it minutes and recomputes the window.
func (h *Histogram) add(a *histApp, it int64) {
	if a.inRange+a.oob == 0 {
		a.ses = float64(it)
	} else {
		a.ses = h.cfg.ForecastAlpha*float64(it) + (1-h.cfg.ForecastAlpha)*a.ses
	}
	if it >= h.rng {
		a.oob++
	} else {
		b := it / h.bin
		c := float64(a.bins[b])
		a.sumSq += 2*c + 1 // (c+1)^2 - c^2
		a.bins[b]++
		a.inRange++
	}
	h.decide(a)
}

// cv is the coefficient of variation of the bin counts.
func (h *Histogram) cv(a *histApp) float64 {
	if a.inRange == 0 || h.nbins < 2 {
		return 0
	}
	n := float64(h.nbins)
	mean := float64(a.inRange) / n
	variance := (a.sumSq - n*mean*mean) / (n - 1)
	return math.Sqrt(max(variance, 0)) / mean
}

// percentileBin is the first bin at which the cumulative share reaches p.
func (h *Histogram) percentileBin(a *histApp, p float64) int64 {
	var cum uint32
	for i, c := range a.bins {
		cum += c
		if float64(cum) >= p*float64(a.inRange) && cum > 0 {
			return int64(i)
		}
	}
	return int64(h.nbins - 1)
}

func (h *Histogram) decide(a *histApp) {
	total := a.inRange + a.oob
	switch {
	case total < h.cfg.MinSamples:
		a.pattern = Uncertain
	case float64(a.oob) >= h.cfg.OOBThreshold*float64(total):
		a.pattern = OutOfBounds
	case h.cv(a) >= h.cfg.CVThreshold:
		a.pattern = Representative
	default:
		a.pattern = Uncertain
	}
	switch a.pattern {
	case Representative:
		head := h.percentileBin(a, h.cfg.Head) * h.bin
		tail := (h.percentileBin(a, h.cfg.Tail) + 1) * h.bin
		a.from = int64(math.Floor(float64(head) * (1 - h.cfg.Margin)))
		a.till = int64(math.Ceil(float64(tail) * (1 + h.cfg.Margin)))
	case OutOfBounds:
		a.from = int64(math.Floor(a.ses * (1 - h.cfg.ForecastMargin)))
		a.till = int64(math.Ceil(a.ses*(1+h.cfg.ForecastMargin))) + 1
	default:
		a.from, a.till = 0, int64(h.cfg.KeepAlive/time.Minute)
	}
}

// Pattern returns how the policy currently sees app, and whether it knows
// the app at all.
func (h *Histogram) Pattern(app predictor.AppID) (Pattern, bool) {
	a := h.apps[app]
	if a == nil {
		return Uncertain, false
	}
	return a.pattern, true
}

// Window returns app's current window: the minutes [from, till) after its
// last active minute + 1, and that minute.
func (h *Histogram) window(a *histApp) (from, till int64) {
	return a.last + 1 + a.from, a.last + 1 + a.till
}

// Predict implements predictor.Model.
func (h *Histogram) Predict(now time.Time, horizon time.Duration) []predictor.Prediction {
	n := predictor.Minute(now)
	end := n + int64(horizon/time.Minute)
	var out []predictor.Prediction
	minPre := int64((h.cfg.MinPrewarm + time.Minute - 1) / time.Minute)
	maxWin := int64(h.cfg.MaxWindow / time.Minute)
	for app, a := range h.apps {
		from, till := h.window(a)
		if till <= n || from >= end || till <= from || a.from < minPre || (maxWin > 0 && till-from > maxWin) {
			continue
		}
		out = append(out, predictor.Prediction{
			App:       app,
			From:      predictor.MinuteStart(max(from, n)),
			Until:     predictor.MinuteStart(till),
			Instances: a.instances,
			Model:     a.pattern.String(),
		})
	}
	sortPredictions(out)
	return out
}
