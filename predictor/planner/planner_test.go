package planner_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/planner"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const MB = 1_000_000

func layer(name string, size int64) predictor.Layer {
	sum := sha256.Sum256([]byte(name))
	return predictor.Layer{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, Size: size}
}

// catalog: apps "app-i" on runtime i%runtimes, each image = base + own layer.
type catalog map[predictor.AppID]predictor.Image

func newCatalog(apps, runtimes int, base, own int64) catalog {
	c := catalog{}
	for i := range apps {
		id := predictor.AppID(fmt.Sprintf("app-%02d", i))
		c[id] = predictor.Image{Name: string(id), Layers: []predictor.Layer{
			layer(fmt.Sprintf("base-%d", i%runtimes), base),
			layer(string(id), own),
		}}
	}
	return c
}

func (c catalog) Image(app predictor.AppID) (predictor.Image, bool) {
	im, ok := c[app]
	return im, ok
}

func (c catalog) Apps() []predictor.AppID {
	var ids []predictor.AppID
	for id := range c {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// cluster is an in-memory ClusterView; apply makes jobs' layers held.
type cluster struct {
	infos []predictor.NodeInfo
	held  map[p2p.NodeID]map[v1.Hash]int64
}

func newCluster(nodes int, budget int64) *cluster {
	c := &cluster{held: map[p2p.NodeID]map[v1.Hash]int64{}}
	for i := range nodes {
		id := p2p.NodeID(fmt.Sprintf("n%d", i))
		c.infos = append(c.infos, predictor.NodeInfo{ID: id, Budget: budget})
		c.held[id] = map[v1.Hash]int64{}
	}
	return c
}

func (c *cluster) Nodes() []predictor.NodeInfo { return c.infos }

func (c *cluster) Has(node p2p.NodeID, d v1.Hash) bool {
	_, ok := c.held[node][d]
	return ok
}

func (c *cluster) Holders(d v1.Hash) []p2p.NodeID {
	var out []p2p.NodeID
	for _, in := range c.infos {
		if c.Has(in.ID, d) {
			out = append(out, in.ID)
		}
	}
	return out
}

func (c *cluster) hold(node p2p.NodeID, ls ...predictor.Layer) {
	for _, l := range ls {
		c.held[node][l.Digest] = l.Size
	}
	c.refresh()
}

func (c *cluster) refresh() {
	for i, in := range c.infos {
		var used int64
		for _, s := range c.held[in.ID] {
			used += s
		}
		c.infos[i].Used = used
	}
}

func (c *cluster) apply(jobs []predictor.Job) {
	for _, j := range jobs {
		for _, l := range j.Layers {
			c.held[j.Node][l.Digest] = l.Size
		}
	}
	c.refresh()
}

var t0 = time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)

func pred(app string, from, until time.Duration, instances int) predictor.Prediction {
	return predictor.Prediction{App: predictor.AppID(app), From: t0.Add(from), Until: t0.Add(until), Instances: instances, Model: "test"}
}

func jobsOn(jobs []predictor.Job, node p2p.NodeID) []predictor.Job {
	var out []predictor.Job
	for _, j := range jobs {
		if j.Node == node {
			out = append(out, j)
		}
	}
	return out
}

func noCover() planner.Config {
	c := planner.DefaultConfig()
	c.Cover = false
	return c
}

// pinnedBytes is the bytes of distinct layers the jobs in force pin on
// node at now.
func pinnedBytes(jobs []predictor.Job, node p2p.NodeID, now time.Time) int64 {
	seen := map[v1.Hash]bool{}
	var n int64
	for _, j := range jobs {
		if j.Node != node || !j.Expires.After(now) {
			continue
		}
		for _, l := range j.Layers {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				n += l.Size
			}
		}
	}
	return n
}

// The budget is never exceeded: over many steps of random predictions,
// the pins in force on a node stay within PinFraction of its budget less
// what is in use and the reserve, and background jobs fetch only into
// free disk.
func TestBudgetNeverExceeded(t *testing.T) {
	cat := newCatalog(60, 4, 150*MB, 80*MB)
	cfg := planner.DefaultConfig()
	p, err := planner.New(cfg, cat)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(6, 2000*MB)
	rng := rand.New(rand.NewPCG(7, 8))
	var active []predictor.Job
	ids := cat.Apps()
	issued, full := 0, 0
	defer func() {
		// The test means something only if jobs were issued and budgets
		// filled up.
		if issued < 100 || full < 10 {
			t.Errorf("%d jobs issued, %d node-steps at the pin limit: the test exercised too little", issued, full)
		}
	}()
	for step := range 300 {
		now := t0.Add(time.Duration(step) * time.Minute)
		for i := range c.infos {
			c.infos[i].InUse = int64(rng.IntN(600)) * MB
			c.infos[i].Load = rng.Float64()
		}
		var preds []predictor.Prediction
		for range rng.IntN(25) {
			from := time.Duration(step+rng.IntN(4)) * time.Minute
			preds = append(preds, pred(string(ids[rng.IntN(len(ids))]), from, from+time.Duration(1+rng.IntN(40))*time.Minute, 1+rng.IntN(12)))
		}
		before := map[p2p.NodeID]int64{}
		for _, in := range c.infos {
			before[in.ID] = pinnedBytes(active, in.ID, now)
		}
		jobs := p.Plan(now, preds, c, active)
		for _, in := range c.infos {
			limit := int64(cfg.PinFraction * max(float64(in.Budget-in.InUse)-cfg.Reserve*float64(in.Budget), 0))
			got := pinnedBytes(append(slices.Clone(active), jobs...), in.ID, now)
			if got > max(limit, before[in.ID]) {
				t.Fatalf("step %d node %s: %d bytes pinned, over %d (and %d before)", step, in.ID, got, limit, before[in.ID])
			}
			if got > limit-80*MB {
				full++
			}
			var fetched int64
			for _, j := range jobsOn(jobs, in.ID) {
				if !j.Background {
					continue
				}
				for _, l := range j.Layers {
					if !c.Has(in.ID, l.Digest) {
						fetched += l.Size
					}
				}
			}
			if free := in.Budget - in.Used - int64(cfg.CoverHeadroom*float64(in.Budget)); fetched > max(free, 0) {
				t.Fatalf("step %d node %s: background jobs fetch %d bytes into %d free", step, in.ID, fetched, free)
			}
		}
		issued += len(jobs)
		c.apply(jobs)
		// Nodes evict whatever no pin holds, down to half their budget.
		for _, in := range c.infos {
			pinned := map[v1.Hash]bool{}
			for _, j := range append(slices.Clone(active), jobs...) {
				if j.Node == in.ID && j.Expires.After(now) {
					for _, l := range j.Layers {
						pinned[l.Digest] = true
					}
				}
			}
			for d := range c.held[in.ID] {
				if !pinned[d] && rng.IntN(3) == 0 {
					delete(c.held[in.ID], d)
				}
			}
		}
		c.refresh()
		active = slices.DeleteFunc(append(active, jobs...), func(j predictor.Job) bool { return !j.Expires.After(now.Add(time.Minute)) })
	}
}

// Pins in force count: a node whose budget the pins already fill gets no
// new job, the app goes to another node, and once the pins expire the node
// takes jobs again. A prediction the pins already cover issues nothing.
func TestPinsRespected(t *testing.T) {
	cat := newCatalog(4, 4, 100*MB, 200*MB)
	cfg := noCover()
	cfg.Reserve = 0
	cfg.PinFraction = 0.5
	p, _ := planner.New(cfg, cat)
	c := newCluster(2, 1000*MB) // pins may take 500 MB a node
	a0, a1 := cat["app-00"], cat["app-01"]
	c.hold("n0", a0.Layers...)
	c.hold("n0", a1.Layers...)
	active := []predictor.Job{{ID: "old", Node: "n0", App: "app-00", Layers: a0.Layers, Deadline: t0, Expires: t0.Add(10 * time.Minute), Reason: "test"}}

	// app-01 is held by n0, but its 300 MB do not fit beside app-00's pins:
	// held, it is not copied elsewhere, only left unpinned.
	jobs := p.Plan(t0, []predictor.Prediction{pred("app-01", 0, 5*time.Minute, 1)}, c, active)
	if len(jobs) != 0 {
		t.Fatalf("got %+v, want no job: n0 holds app-01 but has no pin budget left", jobs)
	}
	// app-02, held nowhere, goes to n1.
	jobs = p.Plan(t0, []predictor.Prediction{pred("app-02", 0, 5*time.Minute, 1)}, c, active)
	if len(jobs) != 1 || jobs[0].Node != "n1" {
		t.Fatalf("got %+v, want one job on n1", jobs)
	}
	// app-00 until 8 minutes: the pin in force (10 minutes) covers it.
	if jobs := p.Plan(t0, []predictor.Prediction{pred("app-00", 0, 8*time.Minute, 1)}, c, active); len(jobs) != 0 {
		t.Errorf("got %+v, want nothing: the pins in force cover it", jobs)
	}
	// Until 20 minutes: a job extends the pins on n0, fetching nothing.
	jobs = p.Plan(t0, []predictor.Prediction{pred("app-00", 0, 20*time.Minute, 1)}, c, active)
	if len(jobs) != 1 || jobs[0].Node != "n0" || !jobs[0].Expires.Equal(t0.Add(20*time.Minute)) {
		t.Errorf("got %+v, want an extension on n0 to 20 minutes", jobs)
	}
	// After the old pins expire, n0 pins app-01 where it is.
	later := t0.Add(11 * time.Minute)
	jobs = p.Plan(later, []predictor.Prediction{pred("app-01", 11*time.Minute, 15*time.Minute, 1)}, c, active)
	if len(jobs) != 1 || jobs[0].Node != "n0" {
		t.Errorf("got %+v, want app-01 pinned on n0 once the old pins lapsed", jobs)
	}
}

// Layers that many hot images share go to every node; each app's own layer
// goes only to the nodes it needs.
func TestSharedLayersGoWide(t *testing.T) {
	cat := newCatalog(12, 2, 100*MB, 50*MB) // runtimes 0 and 1, six apps each
	p, _ := planner.New(noCover(), cat)
	c := newCluster(4, 4000*MB)
	var preds []predictor.Prediction
	for i := range 12 {
		if i%2 == 0 || i < 3 { // all six of runtime 0, two of runtime 1
			preds = append(preds, pred(fmt.Sprintf("app-%02d", i), 0, 10*time.Minute, 1))
		}
	}
	jobs := p.Plan(t0, preds, c, nil)
	base0, base1 := cat["app-00"].Layers[0].Digest, cat["app-01"].Layers[0].Digest
	onNodes := map[v1.Hash]map[p2p.NodeID]bool{}
	for _, j := range jobs {
		for _, l := range j.Layers {
			if onNodes[l.Digest] == nil {
				onNodes[l.Digest] = map[p2p.NodeID]bool{}
			}
			onNodes[l.Digest][j.Node] = true
		}
		if j.Reason == "shared" && (!j.Background || j.App != "") {
			t.Errorf("shared job %+v: want a background job of no app", j)
		}
	}
	if len(onNodes[base0]) != 4 {
		t.Errorf("runtime 0's base layer, shared by 6 hot images, on %d nodes, want all 4", len(onNodes[base0]))
	}
	if len(onNodes[base1]) > 2 {
		t.Errorf("runtime 1's base layer, shared by 2 hot images (fewer than one per node), on %d nodes, want only where those go", len(onNodes[base1]))
	}
	for _, pr := range preds {
		own := cat[pr.App].Layers[1].Digest
		if len(onNodes[own]) != 1 {
			t.Errorf("%s's own layer on %d nodes, want 1", pr.App, len(onNodes[own]))
		}
	}
}

// An app's image goes where it already is, and to as many nodes as its
// predicted instances need.
func TestNodesForInstances(t *testing.T) {
	cat := newCatalog(2, 1, 100*MB, 100*MB)
	p, _ := planner.New(noCover(), cat)
	c := newCluster(5, 4000*MB)
	c.hold("n3", cat["app-00"].Layers...)
	jobs := p.Plan(t0, []predictor.Prediction{pred("app-00", 0, 5*time.Minute, 1)}, c, nil)
	if len(jobs) != 1 || jobs[0].Node != "n3" {
		t.Fatalf("got %+v, want app-00 pinned on n3, which holds it", jobs)
	}
	// 10 instances, 4 a node: three nodes, n3 among them; the copies beyond
	// the first go only into free disk, in background.
	jobs = p.Plan(t0, []predictor.Prediction{pred("app-00", 0, 5*time.Minute, 10)}, c, nil)
	nodes := map[p2p.NodeID]bool{}
	for _, j := range jobs {
		nodes[j.Node] = true
		if j.Node != "n3" && !j.Background {
			t.Errorf("copy on %s is not a background job", j.Node)
		}
	}
	if len(nodes) != 3 || !nodes["n3"] {
		t.Errorf("on %v, want 3 nodes including n3", nodes)
	}
	// Predictions that open beyond Lead wait.
	if jobs := p.Plan(t0, []predictor.Prediction{pred("app-01", 5*time.Minute, 9*time.Minute, 1)}, c, nil); len(jobs) != 0 {
		t.Errorf("got %+v for a window 5 minutes away, want nothing yet (lead 2 minutes)", jobs)
	}
	// Unknown apps are skipped.
	if jobs := p.Plan(t0, []predictor.Prediction{pred("nobody", 0, time.Minute, 1)}, c, nil); len(jobs) != 0 {
		t.Errorf("got %+v for an unknown app", jobs)
	}
}

// Cover puts one copy of every image no node holds where disk is free.
func TestCover(t *testing.T) {
	cat := newCatalog(6, 2, 100*MB, 100*MB)
	p, _ := planner.New(planner.DefaultConfig(), cat)
	c := newCluster(3, 1000*MB)
	c.hold("n0", cat["app-00"].Layers...)
	jobs := p.Plan(t0, nil, c, nil)
	covered := map[predictor.AppID]p2p.NodeID{}
	for _, j := range jobs {
		if !j.Background || j.Reason != "cover" || j.Expires.After(t0) {
			t.Errorf("cover job %+v: want a background job that pins nothing", j)
		}
		covered[j.App] = j.Node
	}
	if _, ok := covered["app-00"]; ok || len(covered) != 5 {
		t.Errorf("covered %v, want the 5 apps n0 does not hold", covered)
	}
	// No free disk, no cover.
	full := newCluster(3, 1000*MB)
	for i := range full.infos {
		full.infos[i].Used = 950 * MB
	}
	if jobs := p.Plan(t0, nil, full, nil); len(jobs) != 0 {
		t.Errorf("got %d jobs on full disks", len(jobs))
	}
}

// Plan is a pure function: the same arguments give the same jobs.
func TestPlanDeterministic(t *testing.T) {
	cat := newCatalog(30, 3, 100*MB, 60*MB)
	p, _ := planner.New(planner.DefaultConfig(), cat)
	c := newCluster(7, 3000*MB)
	var preds []predictor.Prediction
	for i := range 20 {
		preds = append(preds, pred(fmt.Sprintf("app-%02d", i), time.Duration(i%3)*time.Minute, 20*time.Minute, 1+i%9))
	}
	a, b := p.Plan(t0, preds, c, nil), p.Plan(t0, slices.Clone(preds), c, nil)
	if fmt.Sprint(a) != fmt.Sprint(b) || len(a) == 0 {
		t.Errorf("two plans differ or are empty:\n%v\n%v", a, b)
	}
}

func TestConfigValidate(t *testing.T) {
	for name, f := range map[string]func(*planner.Config){
		"pin fraction 0":    func(c *planner.Config) { c.PinFraction = 0 },
		"reserve 1":         func(c *planner.Config) { c.Reserve = 1 },
		"shared by one":     func(c *planner.Config) { c.SharedMinApps = 1 },
		"no instances":      func(c *planner.Config) { c.InstancesPerNode = 0 },
		"negative lead":     func(c *planner.Config) { c.Lead = -time.Second },
		"headroom 1":        func(c *planner.Config) { c.CoverHeadroom = 1 },
		"negative rounding": func(c *planner.Config) { c.PinGranularity = -time.Second },
	} {
		c := planner.DefaultConfig()
		f(&c)
		if _, err := planner.New(c, catalog{}); !errors.Is(err, predictor.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := planner.New(planner.DefaultConfig(), nil); !errors.Is(err, predictor.ErrInvalidConfig) {
		t.Errorf("nil catalog: got %v", err)
	}
}
