package model

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/thaw-dev/thaw/predictor"
)

// PeriodicConfig tunes periodic (timer) detection.
type PeriodicConfig struct {
	// MinPeriod and MaxPeriod bound the periods looked for. Shorter periods
	// keep an app's instances warm anyway; longer ones need more history
	// than History onsets hold.
	MinPeriod, MaxPeriod time.Duration
	// Tolerance is how far an onset may drift from its period and still
	// count (timers fire late, minutes are coarse).
	Tolerance time.Duration
	// MinRepeats is how many onsets must have followed another by the
	// period; TimerRepeats replaces it for apps with timer triggers.
	MinRepeats, TimerRepeats int
	// MinScore is the share of verifiable onsets that must have been
	// followed by another one period later.
	MinScore float64
	// History is how many onsets (first minutes of activity) are kept per
	// app.
	History int
	// MaxMisses: after this many periods in a row without the expected
	// onset the app is no longer predicted, until its next onset.
	MaxMisses int
}

// DefaultPeriodicConfig looks for periods from 3 minutes to 4 hours with
// ±1 minute of tolerance, in the last 32 onsets, with 3 repeats (2 for
// timers) and 80% of onsets confirming; two missed periods end predictions.
func DefaultPeriodicConfig() PeriodicConfig {
	return PeriodicConfig{
		MinPeriod:    3 * time.Minute,
		MaxPeriod:    4 * time.Hour,
		Tolerance:    time.Minute,
		MinRepeats:   3,
		TimerRepeats: 2,
		MinScore:     0.8,
		History:      32,
		MaxMisses:    2,
	}
}

// Validate reports a configuration that cannot work.
func (c PeriodicConfig) Validate() error {
	switch {
	case c.Tolerance < 0 || c.Tolerance%time.Minute != 0:
		return fmt.Errorf("%w: periodic tolerance %s: want a whole number of minutes", predictor.ErrInvalidConfig, c.Tolerance)
	case c.MinPeriod <= 2*c.Tolerance || c.MaxPeriod < c.MinPeriod:
		return fmt.Errorf("%w: periodic periods %s to %s: want 2×tolerance < min <= max", predictor.ErrInvalidConfig, c.MinPeriod, c.MaxPeriod)
	case c.MinRepeats < 1 || c.TimerRepeats < 1:
		return fmt.Errorf("%w: periodic repeats %d (timers %d): want at least 1", predictor.ErrInvalidConfig, c.MinRepeats, c.TimerRepeats)
	case !(c.MinScore > 0 && c.MinScore <= 1):
		return fmt.Errorf("%w: periodic score %g: want 0 < score <= 1", predictor.ErrInvalidConfig, c.MinScore)
	case c.History < c.MinRepeats+1 || c.History < c.TimerRepeats+1:
		return fmt.Errorf("%w: periodic history %d: want more onsets than repeats", predictor.ErrInvalidConfig, c.History)
	case c.MaxMisses < 1:
		return fmt.Errorf("%w: periodic MaxMisses %d: want at least 1", predictor.ErrInvalidConfig, c.MaxMisses)
	}
	return nil
}

// Periodic detects apps that start at a fixed period, as timer-triggered
// functions do, and predicts their next start to the minute.
//
// It works on onsets, the first minute of each stretch of activity. The
// period is the smallest gap d between the latest onset and an earlier one
// such that at least MinScore of the onsets that can be checked were
// followed by another onset d (± Tolerance) later, and at least MinRepeats
// were. Checking every onset, not only consecutive ones, finds the period
// of an app whose several timers share it at different phases (onsets at
// :00 and :20 of every hour: period 60, not 20). The next onsets are then
// each onset of the last period plus whole periods; the window is each
// ±Tolerance.
type Periodic struct {
	cfg  PeriodicConfig
	tol  int64
	apps map[predictor.AppID]*periodicApp
}

var _ predictor.Model = (*Periodic)(nil)

type periodicApp struct {
	onsets     []int64 // ascending, at most History
	instances  []int   // instances in each onset's minute
	lastActive int64
	period     int64 // 0: none
	timer      bool
}

// NewPeriodic returns a periodic detector.
func NewPeriodic(cfg PeriodicConfig) (*Periodic, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Periodic{cfg: cfg, tol: int64(cfg.Tolerance / time.Minute), apps: map[predictor.AppID]*periodicApp{}}, nil
}

// Observe implements predictor.Model.
func (p *Periodic) Observe(minute time.Time, obs []predictor.Observation) {
	m := predictor.Minute(minute)
	for _, o := range obs {
		if o.Invocations <= 0 && o.Instances <= 0 {
			continue
		}
		a := p.apps[o.App]
		if a == nil {
			a = &periodicApp{lastActive: m - 2}
			p.apps[o.App] = a
		}
		a.timer = a.timer || o.Timer
		if m <= a.lastActive {
			continue
		}
		if m > a.lastActive+1 {
			if len(a.onsets) == p.cfg.History {
				a.onsets = slices.Delete(a.onsets, 0, 1)
				a.instances = slices.Delete(a.instances, 0, 1)
			}
			a.onsets = append(a.onsets, m)
			a.instances = append(a.instances, max(o.Instances, 1))
			a.period = p.detect(a)
		} else if n := len(a.instances); n > 0 {
			a.instances[n-1] = max(a.instances[n-1], o.Instances)
		}
		a.lastActive = m
	}
}

// detect returns a's period in minutes, 0 for none.
func (p *Periodic) detect(a *periodicApp) int64 {
	repeats := p.cfg.MinRepeats
	if a.timer {
		repeats = p.cfg.TimerRepeats
	}
	os := a.onsets
	if len(os) < repeats+1 {
		return 0
	}
	last := os[len(os)-1]
	minP, maxP := int64(p.cfg.MinPeriod/time.Minute), int64(p.cfg.MaxPeriod/time.Minute)
	var tried int64 = -1
	for i := len(os) - 2; i >= 0; i-- {
		d := last - os[i]
		if d > maxP {
			break
		}
		if d < minP || d == tried {
			continue
		}
		tried = d
		checked, hits := 0, 0
		for _, o := range os {
			if o+d > last+p.tol {
				break // not verifiable yet
			}
			checked++
			// an onset in [o+d-tol, o+d+tol]?
			j := sort.Search(len(os), func(k int) bool { return os[k] >= o+d-p.tol })
			if j < len(os) && os[j] <= o+d+p.tol {
				hits++
			}
		}
		if hits >= repeats && float64(hits) >= p.cfg.MinScore*float64(checked) {
			return d
		}
	}
	return 0
}

// Period returns app's detected period, if it has one and has not missed
// MaxMisses periods by now.
func (p *Periodic) Period(app predictor.AppID, now time.Time) (time.Duration, bool) {
	a := p.apps[app]
	if a == nil || a.period == 0 || p.lapsed(a, predictor.Minute(now)) {
		return 0, false
	}
	return time.Duration(a.period) * time.Minute, true
}

// lapsed: the app missed MaxMisses periods in a row by minute n.
func (p *Periodic) lapsed(a *periodicApp, n int64) bool {
	last := a.onsets[len(a.onsets)-1]
	return n > last+int64(p.cfg.MaxMisses)*a.period+p.tol
}

// Predict implements predictor.Model.
func (p *Periodic) Predict(now time.Time, horizon time.Duration) []predictor.Prediction {
	n := predictor.Minute(now)
	end := n + int64(horizon/time.Minute)
	var out []predictor.Prediction
	for app, a := range p.apps {
		if a.period == 0 || p.lapsed(a, n) {
			continue
		}
		last := a.onsets[len(a.onsets)-1]
		from, till, inst := int64(-1), int64(-1), 1
		for i := len(a.onsets) - 1; i >= 0 && a.onsets[i] > last-a.period; i-- {
			o := a.onsets[i]
			// the first o + k·period, k >= 1, whose window has not passed
			k := max(1, (n-p.tol-o+a.period-1)/a.period)
			next := o + k*a.period
			if next-p.tol >= end {
				continue
			}
			lo, hi := next-p.tol, next+p.tol+1
			if from < 0 || lo < from {
				from = lo
			}
			till = max(till, hi)
			inst = max(inst, a.instances[i])
		}
		if from < 0 || till <= n {
			continue
		}
		out = append(out, predictor.Prediction{
			App:       app,
			From:      predictor.MinuteStart(max(from, n)),
			Until:     predictor.MinuteStart(till),
			Instances: inst,
			Model:     "periodic",
		})
	}
	sortPredictions(out)
	return out
}
