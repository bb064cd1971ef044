package planner

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
)

// Config tunes the planner.
type Config struct {
	// Lead: predictions whose window opens within Lead of now are acted on;
	// later ones wait for a later step, so content arrives just in time and
	// holds disk for as short as it can.
	Lead time.Duration
	// PinFraction is the share of each node's budget, less what running
	// instances use and less Reserve, that pins may take; the rest stays
	// for content nobody predicted, evicted LRU. Reserve is a share of the
	// budget always left to that LRU cache: when running instances take
	// most of a disk, recency predicts the next start better than any
	// window, so pins back off.
	PinFraction, Reserve float64
	// A layer goes to every node when at least SharedMinApps predicted-hot
	// images share it, and at least SharedPerNode per node: enough that
	// every node is likely to run one of them. Fewer, and the nodes that
	// run them hold it anyway.
	SharedMinApps int
	SharedPerNode float64
	// InstancesPerNode is how many instances of one app a node is expected
	// to run: an app predicted to need n instances is prepared on
	// ceil(n / InstancesPerNode) nodes.
	InstancesPerNode int
	// FullLoad: a node whose NodeInfo.Load is at least this is chosen for
	// new content only when no other will do, since the scheduler would
	// send the instance elsewhere anyway.
	FullLoad float64
	// PinGranularity rounds every pin's expiry up to a multiple of it, so
	// that a window sliding by a minute each step does not issue a job each
	// step.
	PinGranularity time.Duration
	// Cover keeps one copy of every catalog image somewhere in the cluster
	// when there is free disk for it: background jobs, which evict nothing
	// and are evicted first. The scheduler sends an app's first instance to
	// the node holding its image, so an app never seen before starts from
	// a local copy. CoverHeadroom is the share of each node's budget such
	// jobs leave free.
	Cover         bool
	CoverHeadroom float64
}

// DefaultConfig acts 2 minutes ahead; lets pins take 60% of a node's
// budget less what is in use and a reserve of 25%; spreads layers shared by
// at least 3 hot images, and one per node, to every node; assumes 4
// instances of one app per node; rounds pins up to 5 minutes; and covers
// the catalog, leaving 10% of each node's disk free.
func DefaultConfig() Config {
	return Config{Lead: 2 * time.Minute, PinFraction: 0.6, Reserve: 0.25, SharedMinApps: 3, SharedPerNode: 1, InstancesPerNode: 4, FullLoad: 0.9, PinGranularity: 5 * time.Minute, Cover: true, CoverHeadroom: 0.1}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Lead < 0:
		return fmt.Errorf("%w: planner lead %s: want >= 0", predictor.ErrInvalidConfig, c.Lead)
	case !(c.PinFraction > 0 && c.PinFraction <= 1) || !(c.Reserve >= 0 && c.Reserve < 1):
		return fmt.Errorf("%w: planner pin fraction %g, reserve %g: want 0 < fraction <= 1 and 0 <= reserve < 1", predictor.ErrInvalidConfig, c.PinFraction, c.Reserve)
	case c.SharedMinApps < 2 || !(c.SharedPerNode >= 0):
		return fmt.Errorf("%w: planner SharedMinApps %d, SharedPerNode %g: want at least 2 and 0", predictor.ErrInvalidConfig, c.SharedMinApps, c.SharedPerNode)
	case c.InstancesPerNode < 1 || !(c.FullLoad > 0):
		return fmt.Errorf("%w: planner InstancesPerNode %d, FullLoad %g: want at least 1 and above 0", predictor.ErrInvalidConfig, c.InstancesPerNode, c.FullLoad)
	case c.PinGranularity < 0:
		return fmt.Errorf("%w: planner pin granularity %s: want >= 0", predictor.ErrInvalidConfig, c.PinGranularity)
	case !(c.CoverHeadroom >= 0 && c.CoverHeadroom < 1):
		return fmt.Errorf("%w: planner cover headroom %g: want 0 <= h < 1", predictor.ErrInvalidConfig, c.CoverHeadroom)
	}
	return nil
}

// Planner turns predictions into prefetch jobs, at layer granularity,
// within each node's budget. See the package documentation for the rules.
type Planner struct {
	cfg     Config
	catalog predictor.Catalog
}

var _ predictor.Planner = (*Planner)(nil)

// New returns a planner that finds apps' images in catalog.
func New(cfg Config, catalog predictor.Catalog) (*Planner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if catalog == nil {
		return nil, fmt.Errorf("%w: planner needs a catalog", predictor.ErrInvalidConfig)
	}
	return &Planner{cfg: cfg, catalog: catalog}, nil
}

// pin is one layer pinned on one node.
type pin struct {
	until time.Time
	size  int64
}

// nodePlan is one node during a step: its pins, from the jobs in force and
// the jobs planned so far, and its free disk.
type nodePlan struct {
	i    int
	info predictor.NodeInfo
	// cap is what pins may take; pinned what they take.
	cap, pinned int64
	pins        map[v1.Hash]pin
	// free is the disk background jobs may still fill in this step.
	free int64
}

// step is the state of one Plan call.
type step struct {
	now   time.Time
	view  predictor.ClusterView
	nodes []*nodePlan
	index map[p2p.NodeID]int
	// pinnedOn lists the nodes that pin each digest.
	pinnedOn map[v1.Hash][]int
	jobs     []predictor.Job
}

// unpinned returns the layers of ls not pinned on n until at least until,
// and the bytes pinning them would add.
func (n *nodePlan) unpinned(ls []predictor.Layer, until time.Time) ([]predictor.Layer, int64) {
	var out []predictor.Layer
	var add int64
	for _, l := range ls {
		p, ok := n.pins[l.Digest]
		if ok && !p.until.Before(until) {
			continue
		}
		out = append(out, l)
		if !ok {
			add += l.Size
		}
	}
	return out, add
}

// pin pins ls on n until until.
func (s *step) pin(n *nodePlan, ls []predictor.Layer, until time.Time) {
	for _, l := range ls {
		p, ok := n.pins[l.Digest]
		if !ok {
			n.pinned += l.Size
			p.size = l.Size
			s.pinnedOn[l.Digest] = append(s.pinnedOn[l.Digest], n.i)
		}
		if until.After(p.until) {
			p.until = until
		}
		n.pins[l.Digest] = p
	}
}

// has reports whether n holds or pins l.
func (s *step) has(n *nodePlan, l predictor.Layer) bool {
	_, pinned := n.pins[l.Digest]
	return pinned || s.view.Has(n.info.ID, l.Digest)
}

// fetchBytes is the bytes of ls that n lacks.
func (s *step) fetchBytes(n *nodePlan, ls []predictor.Layer) int64 {
	var b int64
	for _, l := range ls {
		if !s.view.Has(n.info.ID, l.Digest) {
			b += l.Size
		}
	}
	return b
}

func (s *step) issue(n *nodePlan, app predictor.AppID, layers []predictor.Layer, from, until time.Time, reason string, background bool) {
	j := newJob(s.now, n.info.ID, app, layers, from, until, reason)
	j.Background = background
	s.jobs = append(s.jobs, j)
}

// due is a prediction acted on now, with its image.
type due struct {
	predictor.Prediction
	image predictor.Image
}

// Plan implements predictor.Planner.
//
// It acts on the predictions whose window opens within Lead and has not
// closed, soonest first, so that when budget runs short it goes to what is
// needed first. Layers that enough of their images share go to every node.
// Each app's image goes to ceil(Instances/InstancesPerNode) nodes, chosen
// in this order: most of the app's own bytes already there (held or
// pinned), not nearly full, most pin budget left, then a hash of app and node
// so that apps spread over the cluster; nodes at FullLoad or above come
// last. A node that holds the whole image
// counts even when it has no pin budget left (a copy elsewhere would not
// make the image more likely to be where the instance goes); a further
// copy for a burst goes only into free disk. Each job lists the layers to
// pin on its node (those not yet pinned long enough); the node fetches the
// ones it lacks. Last, with Cover, images no node holds go where there is
// free disk.
//
// The work of a step grows with the predictions, the nodes holding their
// layers and the catalog, not with predictions × nodes: the view is asked
// for holders, and each node only once per prediction when no node holds
// enough.
func (p *Planner) Plan(now time.Time, preds []predictor.Prediction, view predictor.ClusterView, active []predictor.Job) []predictor.Job {
	infos := view.Nodes()
	if len(infos) == 0 {
		return nil
	}
	s := &step{now: now, view: view, index: make(map[p2p.NodeID]int, len(infos)), pinnedOn: map[v1.Hash][]int{}}
	for i, in := range infos {
		budget := float64(in.Budget)
		s.nodes = append(s.nodes, &nodePlan{
			i:    i,
			info: in,
			cap:  int64(p.cfg.PinFraction * max(budget-float64(in.InUse)-p.cfg.Reserve*budget, 0)),
			pins: map[v1.Hash]pin{},
			free: in.Budget - in.Used - int64(p.cfg.CoverHeadroom*budget),
		})
		s.index[in.ID] = i
	}
	for _, j := range active {
		if i, ok := s.index[j.Node]; ok && j.Expires.After(now) {
			s.pin(s.nodes[i], j.Layers, j.Expires)
		}
	}

	var dues []due
	horizon := now.Add(p.cfg.Lead)
	for _, pr := range preds {
		if !pr.From.Before(horizon) || !pr.Until.After(now) {
			continue
		}
		img, ok := p.catalog.Image(pr.App)
		if !ok || len(img.Layers) == 0 {
			continue // an app the catalog does not know: nothing to fetch
		}
		pr.Until = p.roundUp(pr.Until)
		dues = append(dues, due{pr, img})
	}
	slices.SortFunc(dues, func(a, b due) int {
		return cmp.Or(a.From.Compare(b.From), cmp.Compare(b.Instances, a.Instances), strings.Compare(string(a.App), string(b.App)))
	})

	wide := p.planShared(s, dues)
	for _, d := range dues {
		p.planApp(s, d, wide)
	}
	if p.cfg.Cover {
		p.planCover(s)
	}
	return s.jobs
}

// roundUp rounds t up to a multiple of PinGranularity.
func (p *Planner) roundUp(t time.Time) time.Time {
	g := p.cfg.PinGranularity
	if g <= 0 {
		return t
	}
	if r := t.Truncate(g); r.Before(t) {
		return r.Add(g)
	}
	return t
}

// planShared sends the layers that enough due images share to every node,
// pinned, fetched only into free disk, and returns them.
func (p *Planner) planShared(s *step, dues []due) map[v1.Hash]bool {
	type shared struct {
		layer       predictor.Layer
		apps        int
		from, until time.Time
		last        predictor.AppID
	}
	byDigest := map[v1.Hash]*shared{}
	var order []*shared
	for _, d := range dues {
		for _, l := range d.image.Layers {
			sh := byDigest[l.Digest]
			if sh == nil {
				sh = &shared{layer: l, from: d.From, until: d.Until}
				byDigest[l.Digest] = sh
				order = append(order, sh)
			} else if sh.last == d.App {
				continue // an image listing a layer twice
			}
			sh.last = d.App
			sh.apps++
			if d.From.Before(sh.from) {
				sh.from = d.From
			}
			if d.Until.After(sh.until) {
				sh.until = d.Until
			}
		}
	}
	threshold := max(p.cfg.SharedMinApps, int(math.Ceil(p.cfg.SharedPerNode*float64(len(s.nodes)))))
	var hot []*shared
	for _, sh := range order {
		if sh.apps >= threshold {
			hot = append(hot, sh)
		}
	}
	if len(hot) == 0 {
		return nil
	}
	// The most shared first: when a node's budget runs short, it holds the
	// layers most starts need.
	slices.SortStableFunc(hot, func(a, b *shared) int { return cmp.Compare(b.apps, a.apps) })
	wide := make(map[v1.Hash]bool, len(hot))
	for _, sh := range hot {
		wide[sh.layer.Digest] = true
	}
	for _, n := range s.nodes {
		var layers []predictor.Layer
		var from, until time.Time
		for _, sh := range hot {
			need, add := n.unpinned([]predictor.Layer{sh.layer}, sh.until)
			if len(need) == 0 || n.pinned+add > n.cap {
				continue
			}
			if !s.view.Has(n.info.ID, sh.layer.Digest) {
				if sh.layer.Size > n.free {
					continue
				}
				n.free -= sh.layer.Size
			}
			s.pin(n, need, sh.until)
			layers = append(layers, sh.layer)
			if from.IsZero() || sh.from.Before(from) {
				from = sh.from
			}
			if sh.until.After(until) {
				until = sh.until
			}
		}
		if len(layers) > 0 {
			s.issue(n, "", layers, from, until, "shared", true)
		}
	}
	return wide
}

// planApp prepares d's image on as many nodes as it needs: first the nodes
// that hold or pin some of its own layers, most bytes first, then the
// others.
func (p *Planner) planApp(s *step, d due, wide map[v1.Hash]bool) {
	want := int(math.Ceil(float64(d.Instances) / float64(p.cfg.InstancesPerNode)))
	want = min(max(want, 1), len(s.nodes))

	held := map[int]int64{}
	for _, l := range d.image.Layers {
		if wide[l.Digest] {
			continue
		}
		seen := map[int]bool{}
		for _, id := range s.view.Holders(l.Digest) {
			if i, ok := s.index[id]; ok && !seen[i] {
				seen[i] = true
				held[i] += l.Size
			}
		}
		for _, i := range s.pinnedOn[l.Digest] {
			if !seen[i] {
				seen[i] = true
				held[i] += l.Size
			}
		}
	}
	// Among nodes holding as many bytes: not nearly full first, then the
	// most pin budget left (which shrinks as this step assigns, so apps
	// spread instead of herding onto the node that looked emptiest when
	// the step began), then a hash of app and node.
	better := func(a, b *nodePlan) bool {
		if x, y := a.info.Load >= p.cfg.FullLoad, b.info.Load >= p.cfg.FullLoad; x != y {
			return y
		}
		if x, y := a.cap-a.pinned, b.cap-b.pinned; x != y {
			return x > y
		}
		return tieBreak(d.App, a.info.ID) < tieBreak(d.App, b.info.ID)
	}
	var cands []*nodePlan
	for i := range held {
		cands = append(cands, s.nodes[i])
	}
	slices.SortFunc(cands, func(a, b *nodePlan) int {
		if x, y := held[a.i], held[b.i]; x != y {
			return cmp.Compare(y, x)
		}
		if better(a, b) {
			return -1
		}
		return 1
	})

	placed := 0
	try := func(n *nodePlan) {
		whole := true
		for _, l := range d.image.Layers {
			if !s.has(n, l) {
				whole = false
				break
			}
		}
		need, add := n.unpinned(d.image.Layers, d.Until)
		fits := n.pinned+add <= n.cap
		switch {
		case len(need) == 0:
			placed++
		case whole:
			// The image is here: pin it if the budget allows. Unpinned,
			// it is still more likely here than a copy elsewhere.
			if fits {
				s.pin(n, need, d.Until)
				s.issue(n, d.App, need, d.From, d.Until, d.Model, false)
			}
			placed++
		case !fits:
		case placed == 0:
			n.free -= s.fetchBytes(n, need)
			s.pin(n, need, d.Until)
			s.issue(n, d.App, need, d.From, d.Until, d.Model, false)
			placed++
		default:
			// A further copy, for a burst, goes only into free disk: under
			// a tight budget a spread burst costs other apps' images
			// more than it saves, as every node that runs an instance
			// keeps the image in use.
			fetch := s.fetchBytes(n, need)
			if fetch > n.free {
				return
			}
			n.free -= fetch
			s.pin(n, need, d.Until)
			s.issue(n, d.App, need, d.From, d.Until, d.Model, true)
			placed++
		}
	}
	for _, n := range cands {
		if placed == want {
			return
		}
		try(n)
	}
	// Nodes holding none of it: the best of the rest, one at a time; a
	// node without the pin budget for the image is passed over.
	tried := make([]bool, len(s.nodes))
	for i := range held {
		tried[i] = true
	}
	for placed < want {
		var best *nodePlan
		for _, n := range s.nodes {
			if !tried[n.i] && (best == nil || better(n, best)) {
				best = n
			}
		}
		if best == nil {
			return
		}
		tried[best.i] = true
		try(best)
	}
}

// planCover sends every catalog image that no node holds whole to the node
// with the most free disk (nearly full nodes last), in background jobs that
// pin nothing.
func (p *Planner) planCover(s *step) {
	// The node with the most free disk, nearly full ones last: an app's
	// first instance goes where its image is.
	most := func() *nodePlan {
		var best *nodePlan
		for _, n := range s.nodes {
			if best == nil {
				best = n
				continue
			}
			if x, y := n.info.Load >= p.cfg.FullLoad, best.info.Load >= p.cfg.FullLoad; x != y {
				if y {
					best = n
				}
				continue
			}
			if n.free > best.free {
				best = n
			}
		}
		return best
	}
	roomiest := most()
	for _, app := range p.catalog.Apps() {
		if roomiest.free <= 0 {
			return
		}
		img, ok := p.catalog.Image(app)
		if !ok || len(img.Layers) == 0 {
			continue
		}
		// Whole somewhere? Only the holders of its rarest layer can tell;
		// a layer held nowhere must come to any node.
		var rarest []p2p.NodeID
		var absent int64
		for k, l := range img.Layers {
			h := s.view.Holders(l.Digest)
			if len(h) == 0 {
				absent += l.Size
			}
			if k == 0 || len(h) < len(rarest) {
				rarest = h
			}
		}
		if absent > roomiest.free {
			continue
		}
		covered := false
		for _, id := range rarest {
			if i, ok := s.index[id]; ok && s.fetchBytes(s.nodes[i], img.Layers) == 0 {
				covered = true
				break
			}
		}
		if covered {
			continue
		}
		var missing []predictor.Layer
		var add int64
		for _, l := range img.Layers {
			if !s.view.Has(roomiest.info.ID, l.Digest) {
				missing = append(missing, l)
				add += l.Size
			}
		}
		if add > roomiest.free {
			continue
		}
		roomiest.free -= add
		s.issue(roomiest, app, missing, s.now, s.now, "cover", true)
		roomiest = most()
	}
}

func newJob(now time.Time, node p2p.NodeID, app predictor.AppID, layers []predictor.Layer, from, until time.Time, reason string) predictor.Job {
	deadline := from
	if deadline.Before(now) {
		deadline = now
	}
	name := string(app)
	if name == "" {
		name = "shared"
	}
	return predictor.Job{
		ID:       fmt.Sprintf("%s/%s/%d-%d", node, name, deadline.Unix(), until.Unix()),
		Node:     node,
		App:      app,
		Layers:   layers,
		Deadline: deadline,
		Expires:  until,
		Reason:   reason,
	}
}

func tieBreak(app predictor.AppID, node p2p.NodeID) uint64 {
	h := fnv.New64a()
	h.Write([]byte(app))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return h.Sum64()
}
