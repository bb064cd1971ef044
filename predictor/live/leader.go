package live

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/model"
	"github.com/thaw-dev/thaw/predictor/planner"
)

// leader is the planning loop. It acts only while this node leads; a node
// that gains leadership rebuilds its model from the minutes the cluster
// kept, so the model survives a leader change as far as History reaches.
type leader struct {
	s       *Service
	model   predictor.Model
	engine  *predictor.Engine
	catalog *catalog
	// minutes is the activity kept in the records, by minute.
	minutes map[int64][]AppCount
	// next is the next minute to plan on (once it ended, plus Grace).
	next int64
	// jobs in force at the last step, to count those that lapsed.
	lastJobs map[string]bool
}

func newLeader(s *Service) *leader { return &leader{s: s} }

func (l *leader) tick(ctx context.Context) {
	if !l.s.d.Cluster.Leading() {
		// Rebuild from the records when leading again: other leaders
		// merged minutes and planned meanwhile.
		l.engine, l.minutes = nil, nil
		return
	}
	now := l.s.now()
	if err := l.compact(ctx, now); err != nil {
		l.s.log.Warn("merging the nodes' activity failed", "err", err)
		return
	}
	if l.engine == nil {
		if err := l.rebuild(now); err != nil {
			l.s.log.Error("predictor model rebuild failed", "err", err)
			return
		}
	}
	// Plan on each minute that ended Grace ago; a leader far behind (it
	// was stopped) observes the minutes it missed without planning on
	// them, since their predictions are past.
	for ; l.next < predictor.Minute(now.Add(-l.s.cfg.Grace)); l.next++ {
		at := predictor.MinuteStart(l.next + 1)
		obs := observations(l.minutes[l.next])
		if now.Sub(at) > 2*time.Minute {
			l.engine.Step(at, obs, emptyView{}, nil) // keeps the model in step; plans nothing
			continue
		}
		if err := l.step(ctx, at, obs); err != nil {
			l.s.log.Warn("planning step failed", "minute", at, "err", err)
		}
	}
}

// compact merges the activity records of minutes that ended into the
// minutes' records and deletes them, in one commit per minute, so the
// records stay about one per minute and chunk, whatever the node count.
func (l *leader) compact(ctx context.Context, now time.Time) error {
	acts, err := l.s.d.Cluster.Records(ctx, kindActivity, "")
	if err != nil {
		return err
	}
	current := predictor.Minute(now)
	byMinute := map[int64][]p2p.Record{}
	for _, r := range acts {
		if m, err := recordMinute(r.Key); err == nil && m < current {
			byMinute[m] = append(byMinute[m], r)
		}
	}
	if l.minutes == nil {
		l.minutes = map[int64][]AppCount{}
		if err := l.load(ctx); err != nil {
			return err
		}
	}
	for m, rs := range byMinute {
		merged := map[predictor.AppID]*AppCount{}
		mergeApps(merged, l.minutes[m])
		for _, r := range rs {
			act, err := decodeRecord[Activity](r)
			if err != nil {
				l.s.log.Warn("activity record dropped", "err", err)
				continue
			}
			mergeApps(merged, act.Apps)
		}
		apps := sortedApps(merged)
		expires := predictor.MinuteStart(m).Add(l.s.cfg.History)
		put, err := activityRecords(kindMinute, func(chunk int) string { return minuteKey(m, chunk) }, "", expires, Activity{Minute: m, Apps: apps})
		if err != nil {
			return err
		}
		if err := l.s.d.Cluster.PutRecords(ctx, put, rs); err != nil {
			return fmt.Errorf("merge minute %d: %w", m, err)
		}
		l.minutes[m] = apps
	}
	for m := range l.minutes {
		if predictor.MinuteStart(m).Add(l.s.cfg.History).Before(now) {
			delete(l.minutes, m)
		}
	}
	return nil
}

// load reads the minutes the cluster kept.
func (l *leader) load(ctx context.Context) error {
	rs, err := l.s.d.Cluster.Records(ctx, kindMinute, "")
	if err != nil {
		return err
	}
	for _, r := range rs {
		act, err := decodeRecord[Activity](r)
		if err != nil {
			l.s.log.Warn("minute record dropped", "err", err)
			continue
		}
		l.minutes[act.Minute] = append(l.minutes[act.Minute], act.Apps...)
	}
	return nil
}

func recordMinute(key string) (int64, error) {
	head, _, _ := strings.Cut(key, "/")
	return strconv.ParseInt(head, 10, 64)
}

// rebuild makes a fresh model learn the minutes kept, up to the last one
// ended, which the next step plans on.
func (l *leader) rebuild(now time.Time) error {
	mod, err := model.NewEnsemble(l.s.cfg.Model)
	if err != nil {
		return err
	}
	l.catalog = newCatalog()
	pl, err := planner.New(l.s.cfg.Planner, l.catalog)
	if err != nil {
		return err
	}
	ec := l.s.cfg.Engine
	ec.Metrics = l.s.d.Metrics
	eng, err := predictor.NewEngine(mod, pl, ec)
	if err != nil {
		return err
	}
	last := predictor.Minute(now.Add(-l.s.cfg.Grace)) - 1
	ms := make([]int64, 0, len(l.minutes))
	for m := range l.minutes {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	for _, m := range ms {
		for _, c := range l.minutes[m] {
			l.catalog.see(c.App, c.Image)
		}
		if m < last {
			mod.Observe(predictor.MinuteStart(m), observations(l.minutes[m]))
		}
	}
	l.model, l.engine, l.next = mod, eng, last
	l.s.log.Info("predictor leading: model rebuilt from the cluster's history", "minutes", len(ms), "apps", len(l.catalog.Apps()))
	return nil
}

func observations(apps []AppCount) []predictor.Observation {
	out := make([]predictor.Observation, 0, len(apps))
	for _, c := range apps {
		out = append(out, c.observation())
	}
	return out
}

// backgroundTTL is how long a background job's record stays.
const backgroundTTL = 30 * time.Minute

// step plans at now on obs, the minute before.
func (l *leader) step(ctx context.Context, now time.Time, obs []predictor.Observation) error {
	for _, c := range l.minutes[l.next] {
		l.catalog.see(c.App, c.Image)
	}
	hints, err := l.hints(ctx, now)
	if err != nil {
		return err
	}
	l.catalog.resolve(ctx, l.s, l.s.cfg.ResolvePerStep)
	view, err := l.view(ctx)
	if err != nil {
		return err
	}
	jobs, err := l.s.jobs(ctx, "")
	if err != nil {
		return err
	}
	var active []predictor.Job
	counts := map[predictor.JobState]int{}
	current := map[string]bool{}
	for _, j := range jobs {
		if !j.Expires.After(now) {
			continue
		}
		active = append(active, j.Job)
		current[j.ID] = true
		st := j.Status.State
		if st == "" {
			st = predictor.JobPending
		}
		counts[st]++
	}
	for id := range l.lastJobs {
		if !current[id] {
			counts[predictor.JobExpired]++
		}
	}
	l.lastJobs = current
	predictor.SetJobs(l.s.d.Metrics, counts)
	if m := l.s.d.Metrics; m != nil {
		m.Apps.Set(float64(len(l.catalog.Apps())))
	}
	_, fresh := l.engine.Step(now, obs, view, active, hints...)
	if len(fresh) == 0 {
		return nil
	}
	var put []p2p.Record
	for i, j := range fresh {
		if j.Background && j.Expires.Before(now.Add(backgroundTTL)) {
			// A background job pins nothing, so the planner gives it no
			// lifetime; its record stays a while so that the node runs it
			// and the planner does not issue it again each minute.
			j.Expires = now.Add(backgroundTTL)
			fresh[i] = j
		}
		r, err := record(kindJob, j.ID, j.Node, j.Expires, j)
		if err != nil {
			return err
		}
		put = append(put, r)
	}
	for len(put) > 0 {
		n := min(len(put), 200)
		if err := l.s.d.Cluster.PutRecords(ctx, put[:n], nil); err != nil {
			return fmt.Errorf("record %d jobs: %w", len(put), err)
		}
		put = put[n:]
	}
	l.s.log.Info("prefetch jobs issued", "jobs", len(fresh), "minute", now)
	return nil
}

// hints turns the hints in force into predictions.
func (l *leader) hints(ctx context.Context, now time.Time) ([]predictor.Prediction, error) {
	rs, err := l.s.d.Cluster.Records(ctx, kindHint, "")
	if err != nil {
		return nil, err
	}
	var out []predictor.Prediction
	for _, r := range rs {
		h, err := decodeRecord[Hint](r)
		if err != nil {
			l.s.log.Warn("hint dropped", "err", err)
			continue
		}
		until := h.At.Add(h.For)
		if !until.After(now) {
			continue
		}
		l.catalog.see(predictor.AppID(h.Function), h.Image)
		per := l.s.cfg.HintRatePerInstance
		out = append(out, predictor.Prediction{App: predictor.AppID(h.Function), From: h.At, Until: until, Instances: max(1, (h.Rate+per-1)/per), Model: "hint"})
	}
	return out, nil
}

// view reads the cluster for the planner: live members with a reported
// budget, and the holders of every layer of the catalog.
func (l *leader) view(ctx context.Context) (*clusterView, error) {
	members, err := l.s.d.Cluster.Members(ctx)
	if err != nil {
		return nil, err
	}
	status, err := l.s.d.Cluster.Records(ctx, kindNode, "")
	if err != nil {
		return nil, err
	}
	budgets := map[p2p.NodeID]NodeStatus{}
	for _, r := range status {
		if st, err := decodeRecord[NodeStatus](r); err == nil {
			budgets[r.Node] = st
		}
	}
	v := &clusterView{holders: map[v1.Hash][]p2p.NodeID{}}
	for _, m := range members {
		st, ok := budgets[m.ID]
		if !m.Alive || !ok || st.Budget <= 0 {
			continue
		}
		v.nodes = append(v.nodes, predictor.NodeInfo{ID: m.ID, Budget: st.Budget, Used: st.Used})
	}
	for _, d := range l.catalog.layers() {
		bs, err := l.s.d.Cluster.Blob(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, h := range bs.Holders {
			v.holders[d] = append(v.holders[d], h.Node)
		}
	}
	return v, nil
}

type clusterView struct {
	nodes   []predictor.NodeInfo
	holders map[v1.Hash][]p2p.NodeID
}

func (v *clusterView) Nodes() []predictor.NodeInfo    { return v.nodes }
func (v *clusterView) Holders(d v1.Hash) []p2p.NodeID { return v.holders[d] }
func (v *clusterView) Has(node p2p.NodeID, d v1.Hash) bool {
	return slices.Contains(v.holders[d], node)
}

type emptyView struct{}

func (emptyView) Nodes() []predictor.NodeInfo  { return nil }
func (emptyView) Holders(v1.Hash) []p2p.NodeID { return nil }
func (emptyView) Has(p2p.NodeID, v1.Hash) bool { return false }

// catalog is the apps the leader has seen and their images, resolved to
// layers through the node's manifest path and cached.
type catalog struct {
	mu     sync.Mutex
	apps   map[predictor.AppID]string // image reference
	images map[string]resolved
}

type resolved struct {
	img predictor.Image
	at  time.Time
	err error
}

// How long a resolution holds before it is done again, and how long a
// failed one waits.
const (
	resolveTTL      = 10 * time.Minute
	resolveRetryTTL = time.Minute
)

var _ predictor.Catalog = (*catalog)(nil)

func newCatalog() *catalog {
	return &catalog{apps: map[predictor.AppID]string{}, images: map[string]resolved{}}
}

func (c *catalog) see(app predictor.AppID, image string) {
	if image == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apps[app] = image
}

// Image implements predictor.Catalog: apps whose image is not resolved
// (yet) are unknown to the planner.
func (c *catalog) Image(app predictor.AppID) (predictor.Image, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.images[c.apps[app]]
	if !ok || r.err != nil {
		return predictor.Image{}, false
	}
	return r.img, true
}

// Apps implements predictor.Catalog.
func (c *catalog) Apps() []predictor.AppID {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]predictor.AppID, 0, len(c.apps))
	for a := range c.apps {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

func (c *catalog) layers() []v1.Hash {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[v1.Hash]bool{}
	var out []v1.Hash
	for _, r := range c.images {
		for _, l := range r.img.Layers {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				out = append(out, l.Digest)
			}
		}
	}
	slices.SortFunc(out, func(a, b v1.Hash) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// resolve resolves up to n image references that are unresolved or stale.
func (c *catalog) resolve(ctx context.Context, s *Service, n int) {
	now := s.now()
	c.mu.Lock()
	var todo []string
	for _, ref := range c.apps {
		r, ok := c.images[ref]
		if !ok || (r.err == nil && now.Sub(r.at) > resolveTTL) || (r.err != nil && now.Sub(r.at) > resolveRetryTTL) {
			if !slices.Contains(todo, ref) {
				todo = append(todo, ref)
			}
		}
	}
	c.mu.Unlock()
	slices.Sort(todo)
	for _, ref := range todo[:min(n, len(todo))] {
		img, err := resolveImage(ctx, s, ref)
		if err != nil {
			s.log.Warn("cannot resolve a predicted app's image; it is not planned for", "image", ref, "err", err)
		}
		c.mu.Lock()
		c.images[ref] = resolved{img: img, at: now, err: err}
		c.mu.Unlock()
	}
}

// resolveImage reads ref's layers through the node's manifest path.
func resolveImage(ctx context.Context, s *Service, ref string) (predictor.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return predictor.Image{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	contents, err := s.d.Images.Contents(cctx, r, s.cfg.Platforms)
	if err != nil {
		return predictor.Image{}, err
	}
	img := predictor.Image{Name: ref}
	for _, d := range contents.Blobs {
		img.Layers = append(img.Layers, predictor.Layer{Digest: d.Digest, Size: d.Size, Repo: r.Context().String()})
	}
	return img, nil
}
