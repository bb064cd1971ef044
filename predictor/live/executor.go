package live

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
)

// executor runs this node's jobs: it fetches their layers, pins them
// until the job expires (leases), reports each job's state, and counts
// hits and waste.
type executor struct {
	s      *Service
	leases *leases
	sem    chan struct{}
	wg     sync.WaitGroup
	// pinMu makes a lease and its pin change together: a lapsed lease
	// released while a job extends it would otherwise lose the job's pin.
	pinMu sync.Mutex

	mu   sync.Mutex
	runs map[string]*run // by job ID
	// nodeAt is when this node last reported its disk.
	nodeAt time.Time
}

// run is one job as this node ran it.
type run struct {
	job     predictor.Job
	state   predictor.JobState
	fetched int64
	used    bool
	// failures of the job so far, and when a failed job runs again.
	failures int
	retryAt  time.Time
}

// maxJobsAtOnce bounds the jobs a node runs at once.
const maxJobsAtOnce = 2

// A failed job runs again while it is in force, after retryBase, twice
// that after a second failure, and so on up to retryMax, at most
// maxFailures times in all: a registry or a peer down for a minute should
// not cost the prediction, and a job that cannot work should not run every
// minute until it lapses.
const (
	retryBase   = 30 * time.Second
	retryMax    = 8 * time.Minute
	maxFailures = 5
)

// retryDelay is how long a job that failed failures times waits.
func retryDelay(failures int) time.Duration {
	return min(retryBase<<min(failures-1, 10), retryMax)
}

func newExecutor(s *Service, l *leases) *executor {
	return &executor{s: s, leases: l, sem: make(chan struct{}, maxJobsAtOnce), runs: map[string]*run{}}
}

func (e *executor) wait() { e.wg.Wait() }

func (e *executor) tick(ctx context.Context) {
	now := e.s.now()
	e.report(ctx, now)
	e.release(ctx, now)
	jobs, err := e.s.jobs(ctx, e.s.cfg.Node)
	if err != nil {
		e.s.log.Debug("reading this node's jobs failed", "err", err)
		return
	}
	slices.SortFunc(jobs, func(a, b JobView) int { return cmp.Or(a.Deadline.Compare(b.Deadline), cmp.Compare(a.ID, b.ID)) })
	inForce := map[string]bool{}
	for _, j := range jobs {
		if !j.Expires.After(now) {
			continue
		}
		inForce[j.ID] = true
		e.mu.Lock()
		r, known := e.runs[j.ID]
		if known && r.state == predictor.JobFailed && !r.retryAt.IsZero() && !now.Before(r.retryAt) && r.failures < maxFailures {
			e.s.log.Info("running a failed prefetch job again", "job", j.ID, "failures", r.failures)
			r.state, r.retryAt = predictor.JobPending, time.Time{}
			known = false
		}
		if !known && r == nil {
			if j.Status.State == predictor.JobDone || j.Status.State == predictor.JobFailed {
				// Ran before a restart: its pins are in the lease file. A
				// failed one runs again at the next tick.
				r := &run{job: j.Job, state: j.Status.State, fetched: j.Status.Fetched}
				if r.state == predictor.JobFailed {
					r.failures, r.retryAt = 1, now
				}
				e.runs[j.ID] = r
				known = true
			} else {
				e.runs[j.ID] = &run{job: j.Job, state: predictor.JobPending}
			}
		}
		e.mu.Unlock()
		if known {
			continue
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			select {
			case e.sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-e.sem }()
			e.execute(ctx, j.Job)
		}()
	}
	// Jobs gone or expired: what no start used was waste.
	e.mu.Lock()
	for id, r := range e.runs {
		if inForce[id] || r.state == predictor.JobRunning || r.state == predictor.JobPending {
			continue
		}
		if !r.used && r.state == predictor.JobDone && e.s.d.Metrics != nil {
			e.s.d.Metrics.WasteBytes.Add(float64(r.fetched))
		}
		delete(e.runs, id)
	}
	e.mu.Unlock()
}

// execute fetches and pins one job's layers and reports the outcome.
func (e *executor) execute(ctx context.Context, j predictor.Job) {
	e.setState(ctx, j, JobStatus{State: predictor.JobRunning})
	fetched, err := e.fetch(ctx, j)
	st := JobStatus{State: predictor.JobDone, Fetched: fetched}
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down: the job runs again after the restart
		}
		st = JobStatus{State: predictor.JobFailed, Error: err.Error(), Fetched: fetched}
		e.s.log.Warn("prefetch job failed", "job", j.ID, "err", err)
	}
	e.mu.Lock()
	if r, ok := e.runs[j.ID]; ok {
		r.state, r.fetched = st.State, fetched
		if st.State == predictor.JobFailed {
			r.failures++
			r.retryAt = e.s.now().Add(retryDelay(r.failures))
		}
	}
	e.mu.Unlock()
	if m := e.s.d.Metrics; m != nil {
		m.PrefetchBytes.Add(float64(fetched))
	}
	e.setState(ctx, j, st)
}

func (e *executor) fetch(ctx context.Context, j predictor.Job) (int64, error) {
	var fetched int64
	if j.Background {
		used, quota := e.s.d.Store.Usage()
		budget := cmp.Or(e.s.cfg.Budget, quota)
		if budget > 0 && used+j.Bytes() > int64(float64(budget)*(1-e.s.cfg.Planner.CoverHeadroom)) {
			return 0, fmt.Errorf("background job of %d bytes does not fit in the free disk (%d of %d used)", j.Bytes(), used, budget)
		}
	} else {
		// Pin first, so that the store does not evict what arrives.
		if err := e.pin(ctx, j); err != nil {
			return 0, err
		}
	}
	for _, l := range j.Layers {
		repo, err := name.NewRepository(l.Repo)
		if err != nil {
			return fetched, fmt.Errorf("layer %s: repository %q: %w", l.Digest, l.Repo, err)
		}
		cached, err := e.s.d.Blobs.Ensure(ctx, repo, l.Digest)
		if err != nil {
			return fetched, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		if !cached {
			fetched += l.Size
		}
	}
	return fetched, nil
}

func (e *executor) setState(ctx context.Context, j predictor.Job, st JobStatus) {
	st.At = e.s.now().UTC()
	r, err := record(kindJobState, j.ID, j.Node, j.Expires, st)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = e.s.d.Cluster.PutRecords(cctx, []p2p.Record{r}, nil)
		cancel()
	}
	if err != nil {
		e.s.log.Warn("reporting a job's state failed", "job", j.ID, "state", st.State, "err", err)
	}
}

// report tells the leader this node's disk budget and use, each minute.
func (e *executor) report(ctx context.Context, now time.Time) {
	if now.Sub(e.nodeAt) < time.Minute {
		return
	}
	used, quota := e.s.d.Store.Usage()
	budget := cmp.Or(e.s.cfg.Budget, quota)
	r, err := record(kindNode, string(e.s.cfg.Node), e.s.cfg.Node, now.Add(3*time.Minute), NodeStatus{Budget: budget, Used: used})
	if err == nil {
		err = e.s.d.Cluster.PutRecords(ctx, []p2p.Record{r}, nil)
	}
	if err != nil {
		e.s.log.Debug("reporting disk use failed", "err", err)
		return
	}
	e.nodeAt = now
}

func (e *executor) pin(ctx context.Context, j predictor.Job) error {
	e.pinMu.Lock()
	defer e.pinMu.Unlock()
	for _, l := range j.Layers {
		if err := e.leases.add(l.Digest, j.Expires); err != nil {
			return err
		}
		if err := e.s.d.Store.Pin(ctx, l.Digest); err != nil {
			return fmt.Errorf("pin %s: %w", l.Digest, err)
		}
	}
	return nil
}

// release unpins the layers whose leases lapsed.
func (e *executor) release(ctx context.Context, now time.Time) {
	e.pinMu.Lock()
	defer e.pinMu.Unlock()
	for _, d := range e.leases.expired(now) {
		if err := e.s.d.Store.Unpin(ctx, d); err != nil {
			e.s.log.Warn("releasing a lapsed pin failed", "digest", d, "err", err)
			continue
		}
		if err := e.leases.remove(d, now); err != nil {
			e.s.log.Warn("saving the leases failed", "err", err)
		}
	}
}

// started counts a container start of app on this node: a hit when a job
// prepared the app here.
func (e *executor) started(app predictor.AppID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	hit := false
	for _, r := range e.runs {
		if r.job.App == app && r.state == predictor.JobDone {
			r.used, hit = true, true
		}
	}
	if hit && e.s.d.Metrics != nil {
		e.s.d.Metrics.Hits.Inc()
	}
}

// leases are the pins this node's jobs hold, each until when, kept in a
// file so that a restart still releases them.
type leases struct {
	path string
	mu   sync.Mutex
	m    map[v1.Hash]time.Time
}

func openLeases(path string) (*leases, error) {
	l := &leases{path: path, m: map[v1.Hash]time.Time{}}
	if path == "" {
		return l, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pin leases: %w", err)
	}
	var saved map[string]time.Time
	if err := json.Unmarshal(b, &saved); err != nil {
		return nil, fmt.Errorf("read pin leases %s: %w (remove the file to drop them; the pins then stay until `thaw gc`)", path, err)
	}
	for k, t := range saved {
		d, err := v1.NewHash(k)
		if err != nil {
			return nil, fmt.Errorf("read pin leases %s: %w", path, err)
		}
		l.m[d] = t
	}
	return l, nil
}

// add extends d's lease to until (a lease only grows).
func (l *leases) add(d v1.Hash, until time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if until.After(l.m[d]) {
		l.m[d] = until
		return l.saveLocked()
	}
	return nil
}

func (l *leases) expired(now time.Time) []v1.Hash {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []v1.Hash
	for d, t := range l.m {
		if !t.After(now) {
			out = append(out, d)
		}
	}
	return out
}

// remove drops d's lease if it is still lapsed at now (a job may have
// extended it meanwhile).
func (l *leases) remove(d v1.Hash, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.m[d]; !ok || t.After(now) {
		return nil
	}
	delete(l.m, d)
	return l.saveLocked()
}

func (l *leases) saveLocked() error {
	if l.path == "" {
		return nil
	}
	out := make(map[string]time.Time, len(l.m))
	for d, t := range l.m {
		out[d.String()] = t
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	tmp := l.path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("save pin leases: %w", err)
	}
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("save pin leases: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("save pin leases: %w", err)
	}
	return nil
}
