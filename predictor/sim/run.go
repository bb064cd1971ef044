package sim

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/model"
	"github.com/thaw-dev/thaw/predictor/planner"
)

// Policy is one way of managing the nodes' image disks that a replay
// measures.
type Policy struct {
	Name string
	// Model returns a fresh model for one replay; nil: the policy predicts
	// nothing and issues no jobs.
	Model func(cfg Config) (predictor.Model, error)
	// PrepullAll: when the replay starts, every node pulls every image, in
	// its own random order, evicting LRU what does not fit.
	PrepullAll bool
	// Cover lets the planner keep a copy of every image somewhere (see
	// planner.Config.Cover), when the planner's configuration allows it.
	Cover bool
}

// Policies returns thaw and the baselines, in the order of the table:
//
//   - lru: no prefetch; nodes evict the least recently used layers when
//     disk runs out, as kubelet's image garbage collection does.
//   - prepull-all: every image pre-pulled to every node when the replay
//     starts, within the same budget (what does not fit is evicted LRU);
//     then as lru.
//   - keepalive-<d>: the fixed keep-alive: an image stays pinned where it
//     ran for cfg.KeepAlive after its app's last invocation.
//   - hybrid-histogram: the hybrid histogram policy alone, with the paper's
//     settings, through the same planner.
//   - thaw: the periodic, histogram and burst models (model.Ensemble)
//     through the same planner.
func Policies(cfg Config) []Policy {
	return []Policy{
		{Name: "lru"},
		{Name: "prepull-all", PrepullAll: true},
		{Name: "keepalive-" + shortDuration(cfg.KeepAlive), Model: func(cfg Config) (predictor.Model, error) {
			return model.NewKeepAlive(cfg.KeepAlive)
		}},
		{Name: "hybrid-histogram", Model: func(Config) (predictor.Model, error) {
			return model.NewHistogram(model.DefaultHistogramConfig())
		}},
		{Name: "thaw", Cover: true, Model: func(cfg Config) (predictor.Model, error) {
			return model.NewEnsemble(cfg.Model)
		}},
	}
}

func shortDuration(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	if d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// Result is what one policy's replay measured: starts, misses, pull
// seconds and hits over the minutes after warm-up; bytes and jobs over the
// whole replay, warm-up included, so that a policy that fetches ahead
// during warm-up pays for it.
type Result struct {
	Policy string
	// Starts are instance starts; Misses those that found some layer of
	// their image absent or still arriving on their node.
	Starts, Misses int
	// PullSeconds: time starts waited for layers, summed (bytes still to
	// come / link bandwidth).
	PullSeconds float64
	// PrefetchBytes brought by prefetch; UnusedBytes of those, no start on
	// the node used before they were evicted or the replay ended.
	PrefetchBytes, UnusedBytes int64
	// Hits: starts that found complete prefetched content not used before.
	Hits int
	// OriginBytes came from the registry (no node held the layer), PeerBytes
	// from another node.
	OriginBytes, PeerBytes int64
	// Predictions made and jobs issued (and of those, failed: a layer did
	// not fit).
	Predictions, Jobs, FailedJobs int
	// FirstMisses are the misses of an app's first start in the replay,
	// which no prediction from the trace can avoid; SpillMisses those of
	// starts on a node without the image while another node held it (the
	// nodes holding it were full).
	FirstMisses, SpillMisses int
	// OverBudget counts demand pulls that found the disk full of content in
	// use; Unplaced, starts that found every node's slots taken.
	OverBudget, Unplaced int
	// Elapsed is the wall time of the replay.
	Elapsed time.Duration
}

// MissFraction is Misses / Starts.
func (r Result) MissFraction() float64 {
	if r.Starts == 0 {
		return 0
	}
	return float64(r.Misses) / float64(r.Starts)
}

// Run replays w under each policy and returns their results in order. The
// policies run in parallel, each in its own simulated cluster, and the
// results do not depend on how many run at once. When reg is not nil, each
// policy's predictor metrics are registered on it with a policy label (so
// one Run per Registerer).
func Run(ctx context.Context, cfg Config, w *Workload, policies []Policy, reg prometheus.Registerer) ([]Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	results := make([]Result, len(policies))
	ms := make([]*metrics.Predictor, len(policies))
	for i, p := range policies {
		if reg != nil {
			ms[i] = metrics.NewPredictor(prometheus.WrapRegistererWith(prometheus.Labels{"policy": p.Name}, reg))
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, p := range policies {
		g.Go(func() error {
			r, err := replay(ctx, cfg, w, p, ms[i], nil)
			if err != nil {
				return fmt.Errorf("policy %s: %w", p.Name, err)
			}
			results[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return results, nil
}

type instance struct {
	node     int
	lastUsed int // minute
}

type start struct {
	app int
	at  float64
}

type trackedJob struct {
	job        predictor.Job
	begin, end float64
	failed     bool
}

// replay runs one policy over the whole trace. check, when not nil, is
// called at the end of every minute (tests).
func replay(ctx context.Context, cfg Config, w *Workload, p Policy, m *metrics.Predictor, check func(c *cluster, minute int)) (Result, error) {
	began := time.Now()
	res := Result{Policy: p.Name}
	c := newCluster(cfg, w, &res)
	var engine *predictor.Engine
	if p.Model != nil {
		mod, err := p.Model(cfg)
		if err != nil {
			return res, err
		}
		pc := cfg.Planner
		pc.Cover = pc.Cover && p.Cover
		pl, err := planner.New(pc, w.Catalog())
		if err != nil {
			return res, err
		}
		ec := cfg.Engine
		ec.Metrics = m
		if engine, err = predictor.NewEngine(mod, pl, ec); err != nil {
			return res, err
		}
	}
	if m != nil {
		c.onWaste = func(b int64) { m.WasteBytes.Add(float64(b)) }
	}
	v := newView(c)
	base := time.Unix(int64(w.FirstMinute)*60, 0).UTC()
	warm := int(cfg.Warmup / time.Minute)
	scaleDown := int(cfg.ScaleDown / time.Minute)
	instances := make([][]instance, len(w.Apps))
	var obs []predictor.Observation
	var active []trackedJob
	var starts []start
	perNode := make([]int, cfg.Nodes)
	seen := make([]bool, len(w.Apps))
	for t := range w.Minutes {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		T := float64(t * 60)
		now := base.Add(time.Duration(t) * time.Minute)
		measuring := t >= warm

		// Instances idle for ScaleDown stop; their images stay on disk.
		for i, list := range instances {
			kept := list[:0]
			for _, in := range list {
				if t-in.lastUsed > scaleDown {
					c.stop(w.Apps[i], in.node, T)
					continue
				}
				kept = append(kept, in)
			}
			instances[i] = kept
		}

		if p.PrepullAll && t == 0 {
			c.prepullAll(T)
		}

		if engine != nil {
			v.refresh()
			kept := active[:0]
			counts := map[predictor.JobState]int{}
			var jobs []predictor.Job
			for _, tj := range active {
				if tj.job.Expires.After(now) {
					kept = append(kept, tj)
					jobs = append(jobs, tj.job)
					counts[jobState(tj, T)]++
				} else {
					counts[predictor.JobExpired]++
				}
			}
			active = kept
			preds, issued := engine.Step(now, obs, v, jobs)
			res.Predictions += len(preds)
			res.Jobs += len(issued)
			for _, j := range issued {
				tj := c.apply(j, T, base)
				if tj.failed {
					res.FailedJobs++
				}
				active = append(active, tj)
				counts[jobState(tj, T)]++
			}
			predictor.SetJobs(m, counts)
		}

		// This minute's starts, spread evenly over the minute per app.
		starts = starts[:0]
		obs = obs[:0]
		for i, a := range w.Apps {
			need := int(a.Instances[t])
			if need == 0 {
				continue
			}
			obs = append(obs, predictor.Observation{App: a.ID, Invocations: int(a.Invocations[t]), Instances: need, Timer: a.Timer[t]})
			list := instances[i]
			for k := range list[:min(need, len(list))] {
				list[k].lastUsed = t
			}
			for k := range need - len(list) {
				starts = append(starts, start{app: i, at: T + 60*(float64(k)+0.5)/float64(need-len(list))})
			}
		}
		slices.SortStableFunc(starts, func(a, b start) int { return cmp.Compare(a.at, b.at) })
		for _, s := range starts {
			a := w.Apps[s.app]
			clear(perNode)
			for _, in := range instances[s.app] {
				perNode[in.node]++
			}
			ni := c.place(a, s.at, perNode)
			c.startOn(a, ni, s.at, measuring, m, !seen[s.app])
			seen[s.app] = true
			instances[s.app] = append(instances[s.app], instance{node: ni, lastUsed: t})
		}
		if check != nil {
			check(c, t)
		}
	}
	c.finish(m)
	res.Elapsed = time.Since(began)
	return res, nil
}

func jobState(tj trackedJob, now float64) predictor.JobState {
	switch {
	case tj.failed:
		return predictor.JobFailed
	case tj.begin > now:
		return predictor.JobPending
	case tj.end > now:
		return predictor.JobRunning
	}
	return predictor.JobDone
}

// apply carries a job out on its node: fetch what it lacks, pin all.
func (c *cluster) apply(j predictor.Job, now float64, base time.Time) trackedJob {
	tj := trackedJob{job: j, begin: now, end: now}
	var n *node
	for _, x := range c.nodes {
		if x.id == j.Node {
			n = x
		}
	}
	if n == nil {
		tj.failed = true
		return tj
	}
	until := j.Expires.Sub(base).Seconds()
	tj.begin = max(n.linkFree, now)
	for _, l := range j.Layers {
		li, ok := c.w.byHash[l.Digest]
		if ok && j.Background {
			c.background(n, li, now, until)
			tj.end = max(tj.end, n.layers[li].readyAt)
			continue
		}
		if !ok || !c.prefetch(n, li, now, until) {
			tj.failed = true
			continue
		}
		tj.end = max(tj.end, n.layers[li].readyAt)
	}
	return tj
}

// prepullAll has every node pull every image in its own random order.
func (c *cluster) prepullAll(now float64) {
	for i, n := range c.nodes {
		rng := rand.New(rand.NewPCG(c.cfg.Seed, uint64(1000+i)))
		all := c.w.all()
		for _, ai := range rng.Perm(len(all)) {
			for _, l := range all[ai].layers {
				c.prefetch(n, l, now, 0)
			}
		}
	}
}

// place picks a node for a new instance of a at time at, as a scheduler
// with image locality would: among nodes with a free slot and fewer than
// PerNode instances of a, the one holding a's whole image (complete), then
// most of its bytes, then with the fewest instances of a, then the least
// loaded; ties broken by a hash of app and node.
func (c *cluster) place(a *App, at float64, perNode []int) int {
	best := -1
	var bestKey [4]int64
	var bestTie uint64
	for pass := 0; pass < 3 && best < 0; pass++ {
		for i, n := range c.nodes {
			if pass < 2 && n.running >= c.cfg.Slots {
				continue
			}
			if pass < 1 && perNode[i] >= c.cfg.PerNode {
				continue
			}
			var bytes int64
			complete := int64(1)
			for _, l := range a.layers {
				if st := &n.layers[l]; st.present && st.readyAt <= at {
					bytes += c.w.layers[l].Size
				} else {
					complete = 0
				}
			}
			key := [4]int64{-complete, -bytes, int64(perNode[i]), int64(n.running)}
			tie := placeTie(a.ID, i)
			if best < 0 || cmpKey(key, bestKey) < 0 || (key == bestKey && tie < bestTie) {
				best, bestKey, bestTie = i, key, tie
			}
		}
	}
	if c.nodes[best].running >= c.cfg.Slots {
		c.stats.Unplaced++
	}
	return best
}

func cmpKey(a, b [4]int64) int {
	for i := range a {
		if a[i] != b[i] {
			return cmp.Compare(a[i], b[i])
		}
	}
	return 0
}

func placeTie(app predictor.AppID, node int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(app))
	h.Write([]byte{byte(node), byte(node >> 8)})
	return h.Sum64()
}

// startOn starts an instance of a on node ni at time at: layers present are
// used, layers arriving are waited for, missing ones are pulled on demand.
func (c *cluster) startOn(a *App, ni int, at float64, measuring bool, m *metrics.Predictor, first bool) {
	n := c.nodes[ni]
	held := true // some node holds the whole image
	for _, l := range a.layers {
		held = held && len(c.holders[l]) > 0
	}
	n.running++
	miss, hit := false, false
	var wait float64 // bytes still to come, in seconds of link
	for _, l := range a.layers {
		st := &n.layers[l]
		if !st.present {
			continue
		}
		if st.readyAt > at {
			miss = true
			wait += min(st.readyAt-at, float64(c.w.layers[l].Size)/c.cfg.Bandwidth)
			st.readyAt = at + wait
		} else if st.prefetched {
			hit = true
		}
		st.prefetched = false
		st.inUse++
		c.touch(n, l, at)
	}
	for _, l := range a.layers {
		st := &n.layers[l]
		if st.present {
			continue
		}
		miss = true
		size := c.w.layers[l].Size
		c.makeRoom(n, size, at, true)
		wait += float64(size) / c.cfg.Bandwidth
		c.add(n, l, at, at+wait)
		st.inUse++
	}
	if !measuring {
		return
	}
	c.stats.Starts++
	if miss {
		c.stats.Misses++
		c.stats.PullSeconds += wait
		switch {
		case first:
			c.stats.FirstMisses++
		case held:
			c.stats.SpillMisses++
		}
	}
	if hit {
		c.stats.Hits++
		if m != nil {
			m.Hits.Inc()
		}
	}
}

// stop ends an instance of a on node ni at now.
func (c *cluster) stop(a *App, ni int, now float64) {
	n := c.nodes[ni]
	n.running--
	for _, l := range a.layers {
		n.layers[l].inUse--
		c.touch(n, l, now)
	}
}

// finish counts prefetched content no start used as unused.
func (c *cluster) finish(m *metrics.Predictor) {
	for _, n := range c.nodes {
		for _, l := range n.present {
			if st := &n.layers[l]; st.prefetched {
				c.stats.UnusedBytes += c.w.layers[l].Size
				if m != nil {
					m.WasteBytes.Add(float64(c.w.layers[l].Size))
				}
			}
		}
	}
	if m != nil {
		m.PrefetchBytes.Add(float64(c.stats.PrefetchBytes))
	}
}
