package live

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/predictor"
)

// Errors of the event intake; the API answers them with 429.
var (
	// ErrFlood: events arrive faster than the node's rate limit.
	ErrFlood = errors.New("event rate limit exceeded")
	// ErrTooManyApps: the node already tracks as many apps as it may until
	// its next flush.
	ErrTooManyApps = errors.New("too many apps")
)

// AppCount is one app's activity in one minute, on one node or (after the
// leader merged them) on the cluster.
type AppCount struct {
	App   predictor.AppID `json:"app"`
	Image string          `json:"image"`
	// Invocations a platform reported; Starts are containers that started.
	Invocations int `json:"invocations,omitempty"`
	Starts      int `json:"starts,omitempty"`
}

// add merges o (same app) into c.
func (c *AppCount) add(o AppCount) {
	c.Invocations += o.Invocations
	c.Starts += o.Starts
	if o.Image != "" {
		c.Image = o.Image
	}
}

// mergeApps adds apps into m, one entry per app.
func mergeApps(m map[predictor.AppID]*AppCount, apps []AppCount) {
	for _, c := range apps {
		if have, ok := m[c.App]; ok {
			have.add(c)
		} else {
			m[c.App] = &c
		}
	}
}

// sortedApps is m's entries sorted by app.
func sortedApps(m map[predictor.AppID]*AppCount) []AppCount {
	out := make([]AppCount, 0, len(m))
	for _, c := range m {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(x, y AppCount) int { return cmp.Compare(x.App, y.App) })
	return out
}

// observation is what the models learn from c: a platform's invocation
// count where there is one, else the starts; instances are the starts
// (at least 1 when the app was active), an approximation of the
// concurrent instances the replay computes from durations.
func (c AppCount) observation() predictor.Observation {
	return predictor.Observation{App: c.App, Invocations: max(c.Invocations, c.Starts), Instances: max(1, c.Starts)}
}

// Activity is the value of an activity record: apps active in one minute.
type Activity struct {
	Minute int64      `json:"minute"`
	Apps   []AppCount `json:"apps"`
}

// AggregatorConfig bounds an Aggregator.
type AggregatorConfig struct {
	// Rate and Burst limit events per second taken by the node.
	Rate  float64
	Burst int
	// MaxApps bounds the apps counted between two flushes; with the
	// minutes a flush may span, it bounds the memory the intake holds.
	MaxApps int
}

// DefaultAggregatorConfig takes 1000 events a second (bursts of 5000) and
// 10,000 apps between flushes.
func DefaultAggregatorConfig() AggregatorConfig {
	return AggregatorConfig{Rate: 1000, Burst: 5000, MaxApps: 10000}
}

type binKey struct {
	minute int64
	app    predictor.AppID
}

// Aggregator counts one node's activity per app per minute until Flush
// hands it to the cluster. It is safe for concurrent use and bounded: past
// the rate limit or the app cap, events are refused and counted, never
// queued.
type Aggregator struct {
	cfg     AggregatorConfig
	limiter *rate.Limiter
	m       *metrics.Predictor

	mu   sync.Mutex
	bins map[binKey]*AppCount
	apps map[predictor.AppID]int // bins per app
}

// NewAggregator returns an empty Aggregator; m may be nil.
func NewAggregator(cfg AggregatorConfig, m *metrics.Predictor) (*Aggregator, error) {
	if cfg.Rate <= 0 || cfg.Burst < 1 || cfg.MaxApps < 1 {
		return nil, fmt.Errorf("%w: event intake rate %g, burst %d, apps %d: want all positive", predictor.ErrInvalidConfig, cfg.Rate, cfg.Burst, cfg.MaxApps)
	}
	return &Aggregator{cfg: cfg, limiter: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst), m: m, bins: map[binKey]*AppCount{}, apps: map[predictor.AppID]int{}}, nil
}

// Add counts validated events from source (a metrics label: containerd,
// api). It takes all or none of them: a batch over the rate limit fails
// with ErrFlood, one that would pass the app cap with ErrTooManyApps.
// starts says the counts are container starts, not invocations.
func (a *Aggregator) Add(source string, events []Event, starts bool) error {
	if !a.limiter.AllowN(time.Now(), len(events)) {
		a.drop("rate", len(events))
		return fmt.Errorf("%w: %d events refused (limit %g/s, burst %d)", ErrFlood, len(events), a.cfg.Rate, a.cfg.Burst)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	fresh := map[predictor.AppID]bool{}
	for _, e := range events {
		app := predictor.AppID(e.Function)
		if a.apps[app] == 0 {
			fresh[app] = true
		}
	}
	if len(a.apps)+len(fresh) > a.cfg.MaxApps {
		a.drop("apps", len(events))
		return fmt.Errorf("%w: %d apps tracked, %d more would pass the cap of %d", ErrTooManyApps, len(a.apps), len(fresh), a.cfg.MaxApps)
	}
	for _, e := range events {
		app := predictor.AppID(e.Function)
		for m, n := range e.minutes() {
			k := binKey{m, app}
			c, ok := a.bins[k]
			if !ok {
				c = &AppCount{App: app}
				a.bins[k] = c
				a.apps[app]++
			}
			add := AppCount{Image: e.Image, Invocations: n}
			if starts {
				add = AppCount{Image: e.Image, Starts: n}
			}
			c.add(add)
		}
	}
	if a.m != nil {
		a.m.Events.WithLabelValues(source).Add(float64(len(events)))
	}
	return nil
}

func (a *Aggregator) drop(reason string, n int) {
	if a.m != nil {
		a.m.EventsDropped.WithLabelValues(reason).Add(float64(n))
	}
}

// Flush takes the counts of the minutes that started before until, oldest
// first, apps sorted within a minute, and forgets them. Later minutes stay
// to be completed.
func (a *Aggregator) Flush(until time.Time) []Activity {
	last := predictor.Minute(until) - 1
	a.mu.Lock()
	byMinute := map[int64][]AppCount{}
	for k, c := range a.bins {
		if k.minute > last {
			continue
		}
		byMinute[k.minute] = append(byMinute[k.minute], *c)
		delete(a.bins, k)
		if a.apps[k.app]--; a.apps[k.app] == 0 {
			delete(a.apps, k.app)
		}
	}
	a.mu.Unlock()
	out := make([]Activity, 0, len(byMinute))
	for m, apps := range byMinute {
		slices.SortFunc(apps, func(x, y AppCount) int { return cmp.Compare(x.App, y.App) })
		out = append(out, Activity{Minute: m, Apps: apps})
	}
	slices.SortFunc(out, func(x, y Activity) int { return cmp.Compare(x.Minute, y.Minute) })
	return out
}

// Restore puts activity back that a flush could not hand over (the leader
// was unreachable), within the app cap; what does not fit is dropped and
// counted.
func (a *Aggregator) Restore(acts []Activity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, act := range acts {
		for _, c := range act.Apps {
			k := binKey{act.Minute, c.App}
			b, ok := a.bins[k]
			if !ok {
				if a.apps[c.App] == 0 && len(a.apps) >= a.cfg.MaxApps {
					a.drop("apps", 1)
					continue
				}
				b = &AppCount{App: c.App}
				a.bins[k] = b
				a.apps[c.App]++
			}
			b.add(c)
		}
	}
}
