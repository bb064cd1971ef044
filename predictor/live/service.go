package live

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/model"
	"github.com/thaw-dev/thaw/predictor/planner"
	"github.com/thaw-dev/thaw/puller/prefetch"
)

// Cluster is what the predictor needs of the peer network (p2p/cluster's
// Node): the replicated records, the members with their liveness (as the
// leader knows it) and the holders of blobs.
type Cluster interface {
	p2p.RecordStore
	Members(ctx context.Context) ([]p2p.Member, error)
	Blob(ctx context.Context, dgst v1.Hash) (p2p.BlobState, error)
}

// Images reads what an image reference names now, without fetching its
// layers (puller/prefetch's Prefetcher).
type Images interface {
	Contents(ctx context.Context, ref name.Reference, plat prefetch.Platforms) (prefetch.Contents, error)
}

// Blobs brings one blob onto the node (puller/fetch's Fetcher): cached
// reports it was there already.
type Blobs interface {
	Ensure(ctx context.Context, repo name.Repository, dgst v1.Hash) (cached bool, err error)
}

// Store is what the job executor needs of the node's content store.
type Store interface {
	// Pin protects a blob, present or not yet, from eviction; Unpin
	// releases it. Both are idempotent.
	Pin(ctx context.Context, dgst v1.Hash) error
	Unpin(ctx context.Context, dgst v1.Hash) error
	// Usage is the bytes used and the quota (0: none).
	Usage() (used, quota int64)
}

// Config tunes the live predictor.
type Config struct {
	// Node is this node's ID in the cluster.
	Node p2p.NodeID
	// Budget is the disk this node offers to content, in bytes; 0 takes
	// the store's quota. A node with neither takes no planned jobs
	// (manual ones still run).
	Budget int64
	// History is how long the cluster keeps per-minute activity, and so
	// what a new leader's model learns from: 4 hours, the hybrid
	// histogram's range.
	History time.Duration
	// Flush is how often a node hands its counts to the cluster.
	Flush time.Duration
	// Grace is how long after a minute ends the leader waits for the
	// nodes' counts before it plans on it.
	Grace time.Duration
	// Poll is how often a node looks for its jobs.
	Poll time.Duration
	// LeaseFile keeps the pins the node's jobs hold and when each lapses,
	// so that a restart releases lapsed pins.
	LeaseFile string
	// HintRatePerInstance: a hint of r invocations a minute asks for
	// ceil(r / HintRatePerInstance) instances.
	HintRatePerInstance int
	// ResolvePerStep bounds the image references the leader resolves in
	// one planning step.
	ResolvePerStep int
	Intake         AggregatorConfig
	Model          model.EnsembleConfig
	Planner        planner.Config
	Engine         predictor.EngineConfig
	Platforms      prefetch.Platforms
}

// DefaultConfig keeps 4 hours of history, flushes every 10 s, plans 15 s
// after each minute and polls for jobs every 5 s.
func DefaultConfig() Config {
	return Config{
		History:             4 * time.Hour,
		Flush:               10 * time.Second,
		Grace:               15 * time.Second,
		Poll:                5 * time.Second,
		HintRatePerInstance: 60,
		ResolvePerStep:      20,
		Intake:              DefaultAggregatorConfig(),
		Model:               model.DefaultEnsembleConfig(),
		Planner:             planner.DefaultConfig(),
		Engine:              predictor.DefaultEngineConfig(),
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", predictor.ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Node == "":
		return bad("no node ID")
	case c.History < 10*time.Minute:
		return bad("history %s: want at least 10 minutes", c.History)
	case c.Flush <= 0 || c.Flush > time.Minute || c.Poll <= 0:
		return bad("flush %s, poll %s: want 0 < flush <= 1m and poll > 0", c.Flush, c.Poll)
	case c.Grace < c.Flush || c.Grace >= time.Minute:
		return bad("grace %s: want at least the flush interval (%s) and under a minute", c.Grace, c.Flush)
	case c.HintRatePerInstance < 1 || c.ResolvePerStep < 1:
		return bad("hint rate per instance %d, resolve per step %d: want at least 1", c.HintRatePerInstance, c.ResolvePerStep)
	case c.Budget < 0:
		return bad("budget %d: want >= 0", c.Budget)
	}
	if err := c.Planner.Validate(); err != nil {
		return err
	}
	return c.Engine.Validate()
}

// Deps are the Service's collaborators.
type Deps struct {
	Cluster Cluster
	Images  Images
	Blobs   Blobs
	Store   Store
	Metrics *metrics.Predictor // may be nil
	Log     *slog.Logger
}

// Service is the predictor in a daemon: the event intake, the leader's
// planning loop and this node's job executor.
type Service struct {
	cfg    Config
	d      Deps
	log    *slog.Logger
	intake *Aggregator
	exec   *executor
	lead   *leader
	now    func() time.Time
	seq    sync.Mutex
	flushN int64
	start  int64
}

// New returns a Service; Run starts it.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Cluster == nil || d.Images == nil || d.Blobs == nil || d.Store == nil {
		return nil, fmt.Errorf("%w: the live predictor needs a cluster, images, blobs and a store", predictor.ErrInvalidConfig)
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	intake, err := NewAggregator(cfg.Intake, d.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, d: d, log: d.Log.With("component", "predictor"), intake: intake, now: time.Now}
	s.start = s.now().UnixNano()
	leases, err := openLeases(cfg.LeaseFile)
	if err != nil {
		return nil, err
	}
	s.exec = newExecutor(s, leases)
	s.lead = newLeader(s)
	return s, nil
}

// Run runs the flush, planning and job loops until ctx ends, then hands
// over what the intake still holds.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	loop := func(every time.Duration, f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				f(ctx)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	loop(s.cfg.Flush, s.flush)
	loop(s.cfg.Flush, s.lead.tick)
	loop(s.cfg.Poll, s.exec.tick)
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.flushUntil(fctx, s.now().Add(time.Minute)) // the current minute too
	s.exec.wait()
	return nil
}

// Add counts events (already validated) from source; see Aggregator.Add.
func (s *Service) Add(source string, events []Event, starts bool) error {
	return s.intake.Add(source, events, starts)
}

// flush hands the minutes that ended to the cluster.
func (s *Service) flush(ctx context.Context) { s.flushUntil(ctx, s.now()) }

func (s *Service) flushUntil(ctx context.Context, until time.Time) {
	acts := s.intake.Flush(until)
	if len(acts) == 0 {
		return
	}
	var put []p2p.Record
	for _, act := range acts {
		s.seq.Lock()
		s.flushN++
		n := s.flushN
		s.seq.Unlock()
		expires := predictor.MinuteStart(act.Minute).Add(s.cfg.History)
		rs, err := activityRecords(kindActivity, func(chunk int) string {
			return fmt.Sprintf("%012d/%s/%d.%d.%d", act.Minute, s.cfg.Node, s.start, n, chunk)
		}, s.cfg.Node, expires, act)
		if err != nil {
			s.log.Error("activity dropped", "err", err)
			continue
		}
		put = append(put, rs...)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.d.Cluster.PutRecords(cctx, put, nil); err != nil {
		s.log.Warn("handing activity to the cluster failed; keeping it for the next flush", "minutes", len(acts), "err", err)
		s.intake.Restore(acts)
	}
}
