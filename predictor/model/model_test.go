package model_test

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/model"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// at is minute m of the replay's day.
func at(m int64) time.Time { return predictor.MinuteStart(1_000_000 + m) }

// feed observes minutes [0, until) of a synthetic trace: active(m) gives
// app "a"'s instances in minute m (0: idle).
func feed(mod predictor.Model, until int64, timer bool, active func(m int64) int) {
	for m := range until {
		var obs []predictor.Observation
		if n := active(m); n > 0 {
			obs = append(obs, predictor.Observation{App: "a", Invocations: n, Instances: n, Timer: timer})
		}
		mod.Observe(at(m), obs)
	}
}

// window returns app a's prediction at minute now, in minutes.
func window(t *testing.T, mod predictor.Model, now int64, horizon time.Duration) (from, until int64, p predictor.Prediction, ok bool) {
	t.Helper()
	for _, p := range mod.Predict(at(now), horizon) {
		if p.App == "a" {
			return predictor.Minute(p.From) - 1_000_000, predictor.Minute(p.Until) - 1_000_000, p, true
		}
	}
	return 0, 0, predictor.Prediction{}, false
}

func TestHistogramRepresentative(t *testing.T) {
	h, err := model.NewHistogram(model.DefaultHistogramConfig())
	if err != nil {
		t.Fatal(err)
	}
	// Active every 30 minutes: idle times of 29 minutes, all in one bin.
	feed(h, 301, false, func(m int64) int { return b2i(m%30 == 0) })
	if p, _ := h.Pattern("a"); p != model.Representative {
		t.Fatalf("pattern %v, want histogram", p)
	}
	// Last active minute 300. Head = tail = bin 29: the window opens after
	// floor(29 × 0.9) = 26 minutes and closes ceil(30 × 1.1) = 33 minutes
	// after minute 301.
	if _, _, _, ok := window(t, h, 302, 10*time.Minute); ok {
		t.Error("predicted during the pre-warm gap, 25 minutes before the window")
	}
	from, until, p, ok := window(t, h, 320, 10*time.Minute)
	if !ok || from != 327 || until != 334 || p.Model != "histogram" {
		t.Errorf("window [%d, %d) by %q (%v), want [327, 334) by histogram", from, until, p.Model, ok)
	}
	if _, _, _, ok := window(t, h, 334, 10*time.Minute); ok {
		t.Error("predicted after the window closed")
	}
}

func TestHistogramOutOfBounds(t *testing.T) {
	h, _ := model.NewHistogram(model.DefaultHistogramConfig())
	// Idle for 300 minutes at a time, beyond the 4-hour range.
	feed(h, 6*301+1, false, func(m int64) int { return b2i(m%301 == 0) })
	if p, _ := h.Pattern("a"); p != model.OutOfBounds {
		t.Fatalf("pattern %v, want forecast", p)
	}
	// Last active 1806; the forecast idle time is 300: window from
	// 1807 + floor(300 × 0.85) = 2062 to 1807 + ceil(300 × 1.15) + 1 = 2153.
	from, until, p, ok := window(t, h, 2060, 10*time.Minute)
	if !ok || from != 2062 || until != 2153 || p.Model != "forecast" {
		t.Errorf("window [%d, %d) by %q (%v), want [2062, 2153) by forecast", from, until, p.Model, ok)
	}
}

func TestHistogramUncertain(t *testing.T) {
	for _, tc := range []struct {
		name   string
		active func(m int64) int
		until  int64
	}{
		// Two idle times, fewer than MinSamples.
		{"few samples", func(m int64) int { return b2i(m == 0 || m == 50 || m == 100) }, 101},
		// Idle times spread evenly over the range: a flat histogram.
		{"flat histogram", func() func(int64) int {
			next, gap := int64(0), int64(1)
			return func(m int64) int {
				if m != next {
					return 0
				}
				next += gap + 1
				gap = gap%230 + 7
				return 1
			}
		}(), 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := model.DefaultHistogramConfig()
			cfg.KeepAlive = 20 * time.Minute
			h, _ := model.NewHistogram(cfg)
			last := int64(-1)
			feed(h, tc.until, false, func(m int64) int {
				n := tc.active(m)
				if n > 0 {
					last = m
				}
				return n
			})
			if p, _ := h.Pattern("a"); p != model.Uncertain {
				t.Fatalf("pattern %v, want keepalive", p)
			}
			from, until, _, ok := window(t, h, last+1, time.Hour)
			if !ok || from != last+1 || until != last+21 {
				t.Errorf("window [%d, %d) (%v), want [%d, %d): no pre-warm, 20 minutes", from, until, ok, last+1, last+21)
			}
			cfg.KeepAlive = 0
			h, _ = model.NewHistogram(cfg)
			feed(h, tc.until, false, tc.active)
			if _, _, _, ok := window(t, h, last+1, time.Hour); ok {
				t.Error("predicted an uncertain app without a keep-alive")
			}
		})
	}
}

func TestHistogramNarrowing(t *testing.T) {
	cfg := model.DefaultHistogramConfig()
	cfg.MinPrewarm = time.Minute
	h, _ := model.NewHistogram(cfg)
	// Busy every minute: the window opens at once; MinPrewarm drops it.
	feed(h, 60, false, func(int64) int { return 1 })
	if _, _, _, ok := window(t, h, 60, time.Hour); ok {
		t.Error("predicted a window without pre-warm gap")
	}

	// Every 30 minutes the window is [L+27, L+34): 7 minutes wide.
	for _, tc := range []struct {
		max  time.Duration
		want bool
	}{{0, true}, {7 * time.Minute, true}, {6 * time.Minute, false}} {
		cfg := model.DefaultHistogramConfig()
		cfg.MaxWindow = tc.max
		h, _ := model.NewHistogram(cfg)
		feed(h, 301, false, func(m int64) int { return b2i(m%30 == 0) })
		if _, _, _, ok := window(t, h, 320, 10*time.Minute); ok != tc.want {
			t.Errorf("MaxWindow %s: predicted %v, want %v", tc.max, ok, tc.want)
		}
	}
}

func TestPeriodic(t *testing.T) {
	for _, tc := range []struct {
		name   string
		timer  bool
		until  int64
		active func(m int64) int
		period time.Duration // 0: none
		// next window expected at minute now
		now, from, till int64
	}{
		{"every 15 minutes", false, 100, func(m int64) int { return b2i(m%15 == 3) }, 15 * time.Minute, 100, 107, 110},
		{"hourly timer, two repeats suffice", true, 150, func(m int64) int { return b2i(m%60 == 10) }, time.Hour, 185, 189, 192},
		{"hourly, without the timer hint, not yet", false, 150, func(m int64) int { return b2i(m%60 == 10) }, 0, 0, 0, 0},
		{"two timers at :00 and :20 of every hour", true, 250, func(m int64) int { return b2i(m%60 == 0 || m%60 == 20) }, time.Hour, 250, 259, 262},
		{"runs of three minutes every 30", false, 200, func(m int64) int { return b2i(m%30 < 3) }, 30 * time.Minute, 200, 209, 212},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := model.NewPeriodic(model.DefaultPeriodicConfig())
			if err != nil {
				t.Fatal(err)
			}
			feed(p, tc.until, tc.timer, tc.active)
			got, ok := p.Period("a", at(tc.until))
			if tc.period == 0 {
				if ok {
					t.Fatalf("period %s, want none", got)
				}
				return
			}
			if !ok || got != tc.period {
				t.Fatalf("period %s (%v), want %s", got, ok, tc.period)
			}
			from, till, pr, ok := window(t, p, tc.now, 10*time.Minute)
			if !ok || from != tc.from || till != tc.till || pr.Model != "periodic" {
				t.Errorf("window [%d, %d) (%v), want [%d, %d)", from, till, ok, tc.from, tc.till)
			}
		})
	}
}

func TestPeriodicJitterAndLapse(t *testing.T) {
	p, _ := model.NewPeriodic(model.DefaultPeriodicConfig())
	// Every 20 minutes, a minute late every other time: period 20 ± 1, or
	// 40 with two phases; either way the next onset (200) is predicted.
	feed(p, 195, false, func(m int64) int { return b2i(m%40 == 0 || m%40 == 21) })
	if got, ok := p.Period("a", at(195)); !ok || (got != 40*time.Minute && (got < 19*time.Minute || got > 21*time.Minute)) {
		t.Fatalf("period %s (%v), want 20 ± 1 or 40 minutes", got, ok)
	}
	if from, until, _, ok := window(t, p, 195, 10*time.Minute); !ok || from > 200 || until <= 200 {
		t.Errorf("window [%d, %d) (%v) misses the onset at 200", from, until, ok)
	}
	// Random activity has no period.
	r, _ := model.NewPeriodic(model.DefaultPeriodicConfig())
	rng := rand.New(rand.NewPCG(1, 2))
	feed(r, 2000, false, func(int64) int { return b2i(rng.IntN(37) == 0) })
	if got, ok := r.Period("a", at(2000)); ok {
		t.Errorf("random activity: period %s", got)
	}
	// A timer that stops is no longer predicted after MaxMisses periods.
	s, _ := model.NewPeriodic(model.DefaultPeriodicConfig())
	feed(s, 100, false, func(m int64) int { return b2i(m%10 == 0 && m < 60) })
	if _, ok := s.Period("a", at(65)); !ok {
		t.Fatal("no period while the timer runs")
	}
	if _, ok := s.Period("a", at(100)); ok {
		t.Error("still periodic four periods after the last onset")
	}
	if _, _, _, ok := window(t, s, 100, 10*time.Minute); ok {
		t.Error("still predicted after the timer stopped")
	}
}

func TestBurst(t *testing.T) {
	b, err := model.NewBurst(model.DefaultBurstConfig())
	if err != nil {
		t.Fatal(err)
	}
	// Instances climb 1, 2, 4, 6, 8: the trend projects well above 8.
	counts := []int{1, 2, 4, 6, 8}
	feed(b, int64(len(counts)), false, func(m int64) int { return counts[m] })
	from, until, p, ok := window(t, b, int64(len(counts)), 10*time.Minute)
	if !ok || p.Instances <= 8 || from != 5 || until != 8 || p.Model != "burst" {
		t.Fatalf("got [%d, %d) %d instances (%v), want more than 8 over the next 3 minutes", from, until, p.Instances, ok)
	}
	// A single steady instance needs no spreading.
	s, _ := model.NewBurst(model.DefaultBurstConfig())
	feed(s, 30, false, func(int64) int { return 1 })
	if _, _, _, ok := window(t, s, 30, 10*time.Minute); ok {
		t.Error("predicted a steady single instance")
	}
	// A steady 5 is predicted at 5 (with headroom), not more.
	f, _ := model.NewBurst(model.DefaultBurstConfig())
	feed(f, 30, false, func(int64) int { return 5 })
	if _, _, p, ok := window(t, f, 30, 10*time.Minute); !ok || p.Instances != 6 {
		t.Errorf("steady 5: got %d (%v), want 6 (5 × 1.1 rounded up)", p.Instances, ok)
	}
	// An app that went quiet is not predicted.
	feed(f, 40, false, func(m int64) int { return b2i(m < 30) * 5 })
	if _, _, _, ok := window(t, f, 40, 10*time.Minute); ok {
		t.Error("predicted an idle app")
	}
}

func TestKeepAlive(t *testing.T) {
	k, err := model.NewKeepAlive(10 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	feed(k, 21, false, func(m int64) int { return b2i(m == 20) })
	from, until, _, ok := window(t, k, 21, time.Hour)
	if !ok || from != 21 || until != 31 {
		t.Errorf("window [%d, %d) (%v), want [21, 31)", from, until, ok)
	}
	if _, _, _, ok := window(t, k, 31, time.Hour); ok {
		t.Error("predicted after the keep-alive")
	}
}

func TestEnsemble(t *testing.T) {
	e, err := model.NewEnsemble(model.DefaultEnsembleConfig())
	if err != nil {
		t.Fatal(err)
	}
	// Every 15 minutes, with a burst of instances each time.
	feed(e, 100, true, func(m int64) int {
		switch m % 15 {
		case 3:
			return 2
		case 4:
			return 12
		}
		return 0
	})
	from, until, p, ok := window(t, e, 100, 10*time.Minute)
	if !ok || p.Model != "periodic" || from != 107 || until != 110 || p.Instances != 12 {
		t.Errorf("got [%d, %d) %d instances by %q (%v), want the periodic window [107, 110) with 12", from, until, p.Instances, p.Model, ok)
	}
	// During a climb the burst model raises the instance count.
	e2, _ := model.NewEnsemble(model.DefaultEnsembleConfig())
	counts := []int{1, 3, 6, 10}
	feed(e2, 4, false, func(m int64) int { return counts[m] })
	if _, _, p, ok := window(t, e2, 4, 10*time.Minute); !ok || p.Instances <= 10 || p.Model != "burst" {
		t.Errorf("got %d instances by %q (%v), want more than 10 by burst", p.Instances, p.Model, ok)
	}
}

func TestConfigsValidate(t *testing.T) {
	hist := func(f func(*model.HistogramConfig)) error {
		c := model.DefaultHistogramConfig()
		f(&c)
		_, err := model.NewHistogram(c)
		return err
	}
	per := func(f func(*model.PeriodicConfig)) error {
		c := model.DefaultPeriodicConfig()
		f(&c)
		_, err := model.NewPeriodic(c)
		return err
	}
	burst := func(f func(*model.BurstConfig)) error {
		c := model.DefaultBurstConfig()
		f(&c)
		_, err := model.NewBurst(c)
		return err
	}
	_, keepErr := model.NewKeepAlive(0)
	for name, err := range map[string]error{
		"bin of 30s":        hist(func(c *model.HistogramConfig) { c.Bin = 30 * time.Second }),
		"range not of bins": hist(func(c *model.HistogramConfig) { c.Range = 90 * time.Second }),
		"head after tail":   hist(func(c *model.HistogramConfig) { c.Head = 0.99; c.Tail = 0.5 }),
		"margin of 1":       hist(func(c *model.HistogramConfig) { c.Margin = 1 }),
		"no samples":        hist(func(c *model.HistogramConfig) { c.MinSamples = 0 }),
		"alpha 0":           hist(func(c *model.HistogramConfig) { c.ForecastAlpha = 0 }),
		"negative keep":     hist(func(c *model.HistogramConfig) { c.KeepAlive = -time.Minute }),
		"min period 2m":     per(func(c *model.PeriodicConfig) { c.MinPeriod = 2 * time.Minute }),
		"short history":     per(func(c *model.PeriodicConfig) { c.History = 2 }),
		"score 0":           per(func(c *model.PeriodicConfig) { c.MinScore = 0 }),
		"headroom 0.5":      burst(func(c *model.BurstConfig) { c.Headroom = 0.5 }),
		"beta 2":            burst(func(c *model.BurstConfig) { c.Beta = 2 }),
		"keep-alive 0":      keepErr,
	} {
		if !errors.Is(err, predictor.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
	if err := model.DefaultEnsembleConfig().Validate(); err != nil {
		t.Errorf("default ensemble: %v", err)
	}
}

// Predict must not change a model: asking twice gives the same answer.
func TestPredictIsPure(t *testing.T) {
	e, _ := model.NewEnsemble(model.DefaultEnsembleConfig())
	rng := rand.New(rand.NewPCG(3, 4))
	for m := range int64(500) {
		var obs []predictor.Observation
		for _, app := range []predictor.AppID{"a", "b", "c", "d"} {
			if rng.IntN(5) == 0 {
				n := 1 + rng.IntN(9)
				obs = append(obs, predictor.Observation{App: app, Invocations: n, Instances: n})
			}
		}
		e.Observe(at(m), obs)
		first := e.Predict(at(m+1), 10*time.Minute)
		second := e.Predict(at(m+1), 10*time.Minute)
		if len(first) != len(second) {
			t.Fatalf("minute %d: %d then %d predictions", m, len(first), len(second))
		}
		for i := range first {
			if first[i] != second[i] {
				t.Fatalf("minute %d: %+v then %+v", m, first[i], second[i])
			}
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
