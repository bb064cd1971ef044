package sim

import (
	"errors"
	"fmt"
	"time"

	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/model"
	"github.com/thaw-dev/thaw/predictor/planner"
)

// Config is the cluster model and the replay's settings. See the package
// documentation for what each part models.
type Config struct {
	// Nodes in the cluster.
	Nodes int
	// DiskBudget is each node's disk for image content, bytes.
	DiskBudget int64
	// Bandwidth is each node's link, bytes per second.
	Bandwidth float64
	// Slots is how many instances a node runs at once.
	Slots int
	// PerNode is how many instances of one app a node runs at most (the
	// scheduler spreads an app's instances).
	PerNode int

	// Runtimes is the number of runtimes; each is one shared base layer.
	Runtimes int
	// BaseLayer, DepsLayer and CodeLayer are the median sizes of a
	// runtime's base layer and of an app's dependency and code layers,
	// bytes. Sizes are log-normal around them (σ 0.5 for base layers, 1.0
	// for app layers), clipped to [64 KiB, 4 GiB].
	BaseLayer, DepsLayer, CodeLayer int64
	// Seed fixes the image sizes and runtimes drawn for each app.
	Seed uint64
	// IdleApps are deployed apps the trace never invokes: they are in the
	// catalog (so pre-pulls and thaw's cover fetch them) but never start.
	// A trace lists only apps with invocations; a real catalog has more.
	IdleApps int

	// ScaleDown stops an instance idle this long (the FaaS platform's
	// scale-to-zero).
	ScaleDown time.Duration
	// DefaultDuration is an invocation's duration for functions the
	// durations file does not list (or when there is none).
	DefaultDuration time.Duration
	// Warmup is replayed but not counted: caches fill and models learn
	// before measuring starts.
	Warmup time.Duration
	// KeepAlive is the window of the fixed keep-alive baseline.
	KeepAlive time.Duration

	// Engine, Planner and Model configure thaw's predictor as the replay
	// runs it; the baselines use the same engine and planner.
	Engine  predictor.EngineConfig
	Planner planner.Config
	Model   model.EnsembleConfig
}

// Sizes in bytes.
const (
	MB = 1_000_000
	GB = 1_000_000_000
)

// DefaultConfig is the cluster the replay's table is measured on: 20 nodes
// with 4 GB of image disk each and 1 Gbit/s links, 24 instance slots and at
// most 4 instances of one app per node; 5 runtimes with base layers around
// 150 MB, app layers around 60 MB (dependencies) and 5 MB (code); instances
// stop after 2 idle minutes (Knative's scale-to-zero is about as quick); the
// first hour warms up.
//
// With these sizes the 476 apps of the shared 8-hour trace need 50 GB, twelve
// times a node's disk, and the instances running at any moment keep about
// half of each disk in use: images do not fit everywhere (pre-pulling
// everything cannot win by default), yet every node has room to cache. With
// much less disk (3 GB) running instances take two thirds of it and every
// policy that pins or prefetches loses to plain LRU; with more (6-8 GB) the
// comparison looks much as at 4 GB.
func DefaultConfig() Config {
	pl := planner.DefaultConfig()
	pl.InstancesPerNode = 4
	return Config{
		Nodes:           20,
		DiskBudget:      4 * GB,
		Bandwidth:       125 * MB,
		Slots:           24,
		PerNode:         4,
		Runtimes:        5,
		BaseLayer:       150 * MB,
		DepsLayer:       60 * MB,
		CodeLayer:       5 * MB,
		Seed:            1,
		ScaleDown:       2 * time.Minute,
		DefaultDuration: time.Second,
		Warmup:          time.Hour,
		KeepAlive:       10 * time.Minute,
		Engine:          predictor.DefaultEngineConfig(),
		Planner:         pl,
		Model:           model.DefaultEnsembleConfig(),
	}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", predictor.ErrInvalidConfig, fmt.Sprintf(format, args...)))
	}
	if c.Nodes < 1 || c.Nodes > 10000 {
		bad("nodes %d: want 1 to 10000", c.Nodes)
	}
	if c.DiskBudget <= 0 {
		bad("disk budget %d: want a positive number of bytes", c.DiskBudget)
	}
	if !(c.Bandwidth > 0) {
		bad("bandwidth %g: want a positive number of bytes per second", c.Bandwidth)
	}
	if c.Slots < 1 || c.PerNode < 1 {
		bad("slots %d, per-node %d: want at least 1 each", c.Slots, c.PerNode)
	}
	if c.IdleApps < 0 || c.IdleApps > 10_000_000 {
		bad("idle apps %d: want 0 to 10000000", c.IdleApps)
	}
	if c.Runtimes < 1 || c.Runtimes > 1000 {
		bad("runtimes %d: want 1 to 1000", c.Runtimes)
	}
	if c.BaseLayer <= 0 || c.DepsLayer <= 0 || c.CodeLayer <= 0 {
		bad("layer sizes %d, %d, %d: want positive", c.BaseLayer, c.DepsLayer, c.CodeLayer)
	}
	if c.ScaleDown < time.Minute || c.ScaleDown%time.Minute != 0 {
		bad("scale-down %s: want a whole number of minutes, at least 1", c.ScaleDown)
	}
	if c.DefaultDuration <= 0 {
		bad("default duration %s: want positive", c.DefaultDuration)
	}
	if c.Warmup < 0 || c.Warmup%time.Minute != 0 {
		bad("warm-up %s: want a whole number of minutes", c.Warmup)
	}
	if c.KeepAlive < time.Minute {
		bad("keep-alive %s: want at least a minute", c.KeepAlive)
	}
	for _, err := range []error{c.Engine.Validate(), c.Planner.Validate(), c.Model.Validate()} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
