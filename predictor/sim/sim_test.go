package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/trace"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// slice loads testdata/azure2019-slice: 160 functions of the shared trace
// over its first 4 hours.
func slice(t *testing.T, cfg Config) *Workload {
	t.Helper()
	inv, err := trace.LoadInvocations("testdata/azure2019-slice/invocations.csv")
	if err != nil {
		t.Fatal(err)
	}
	d, err := trace.LoadDurations("testdata/azure2019-slice/durations.csv")
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWorkload(inv, d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// sliceConfig is the default cluster scaled to the slice's 156 apps (a
// third of the shared trace's): a third of the nodes.
func sliceConfig() Config {
	cfg := DefaultConfig()
	cfg.Nodes = 7
	return cfg
}

// On a slice of the real trace thaw misses at most half as often as LRU,
// and leaves at most a quarter as many prefetched bytes unused as
// pre-pulling everything: the targets, on a fixture small enough
// for the race detector. Misses only, not time.
func TestReplaySliceBeatsLRU(t *testing.T) {
	cfg := sliceConfig()
	w := slice(t, cfg)
	reg := prometheus.NewRegistry()
	results, err := Run(context.Background(), cfg, w, Policies(cfg), reg)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := WriteTable(&table, results); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	thaw, _ := Find(results, "thaw")
	lru, _ := Find(results, "lru")
	pre, _ := Find(results, "prepull-all")
	if lru.Starts == 0 || thaw.Starts != lru.Starts {
		t.Fatalf("starts: thaw %d, lru %d", thaw.Starts, lru.Starts)
	}
	if lru.Misses == 0 || 2*thaw.Misses > lru.Misses {
		t.Errorf("thaw missed %d starts, lru %d: want at most half", thaw.Misses, lru.Misses)
	}
	if 4*thaw.UnusedBytes > pre.UnusedBytes {
		t.Errorf("thaw left %d prefetched bytes unused, prepull-all %d: want at most a quarter", thaw.UnusedBytes, pre.UnusedBytes)
	}
	if thaw.Hits == 0 || thaw.Jobs == 0 || thaw.Predictions == 0 {
		t.Errorf("thaw: %d hits, %d jobs, %d predictions; want some of each", thaw.Hits, thaw.Jobs, thaw.Predictions)
	}
	// The metrics say the same as the results.
	label := map[string]string{"policy": "thaw"}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_hits_total", label); int(got) != thaw.Hits {
		t.Errorf("hits metric %v, result %d", got, thaw.Hits)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_waste_bytes_total", label); int64(got) != thaw.UnusedBytes {
		t.Errorf("waste metric %v, result %d", got, thaw.UnusedBytes)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_bytes_total", label); int64(got) != thaw.PrefetchBytes {
		t.Errorf("prefetch metric %v, result %d", got, thaw.PrefetchBytes)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_prefetch_jobs_issued_total", label); int(got) != thaw.Jobs {
		t.Errorf("jobs metric %v, result %d", got, thaw.Jobs)
	}
	if got := metricstest.Sum(t, reg, "thaw_predictor_predictions_total", map[string]string{"policy": "hybrid-histogram"}); got == 0 {
		t.Error("no predictions counted for hybrid-histogram")
	}
}

// Every minute of every policy: no node holds more than its budget unless
// a start found everything else in use (counted), instances fit the slots,
// and the cluster's books balance.
func TestReplayInvariants(t *testing.T) {
	cfg := sliceConfig()
	cfg.DiskBudget = 2 * GB // tight, so that eviction and pins are busy
	w := slice(t, cfg)
	for _, p := range Policies(cfg) {
		t.Run(p.Name, func(t *testing.T) {
			over := 0
			res, err := replay(context.Background(), cfg, w, p, nil, func(c *cluster, minute int) {
				holders := make([]int32, len(w.layers))
				for _, n := range c.nodes {
					var used int64
					for _, l := range n.present {
						st := &n.layers[l]
						if !st.present || st.inUse < 0 {
							t.Fatalf("minute %d %s: layer %d listed present: %+v", minute, n.id, l, *st)
						}
						used += w.layers[l].Size
						holders[l]++
					}
					if used != n.used {
						t.Fatalf("minute %d %s: used %d, layers add up to %d", minute, n.id, n.used, used)
					}
					if n.used > cfg.DiskBudget {
						over++
					}
					if n.running < 0 {
						t.Fatalf("minute %d %s: %d running", minute, n.id, n.running)
					}
				}
				for l, h := range holders {
					if int32(len(c.holders[l])) != h {
						t.Fatalf("minute %d: layer %d has %d holders, listed %v", minute, l, h, c.holders[l])
					}
					for _, id := range c.holders[l] {
						if !holds(c, id, int32(l)) {
							t.Fatalf("minute %d: layer %d lists holder %s, which does not hold it", minute, l, id)
						}
					}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if over > 0 && res.OverBudget == 0 {
				t.Errorf("%d node-minutes over budget, none counted", over)
			}
			if res.Misses > res.Starts || res.Hits > res.Starts || res.UnusedBytes > res.PrefetchBytes {
				t.Errorf("inconsistent result %+v", res)
			}
		})
	}
}

// The same replay twice gives the same results.
func TestReplayDeterministic(t *testing.T) {
	cfg := sliceConfig()
	cfg.Warmup = 0
	w := slice(t, cfg)
	a, err := Run(context.Background(), cfg, w, Policies(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Run(context.Background(), cfg, w, Policies(cfg), nil)
	for i := range a {
		a[i].Elapsed, b[i].Elapsed = 0, 0
		if a[i] != b[i] {
			t.Errorf("%s: %+v then %+v", a[i].Policy, a[i], b[i])
		}
	}
}

func TestWorkload(t *testing.T) {
	in := "HashOwner,HashApp,HashFunction,Trigger,1,2,3\n" +
		"o,a,f1,http,120,0,1\n" +
		"o,a,f2,timer,0,1,0\n" +
		"o,b,g,http,1,0,0\n" +
		"o,z,quiet,http,0,0,0\n"
	inv, err := trace.ReadInvocations(strings.NewReader(in), "t.csv")
	if err != nil {
		t.Fatal(err)
	}
	d, err := trace.ReadDurations(strings.NewReader("HashApp,HashFunction,Average\na,f1,1500\n"), "d.csv")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.IdleApps = 2
	w, err := NewWorkload(inv, d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Apps) != 2 || w.Apps[0].ID != "a" || w.Apps[1].ID != "b" || w.Functions != 4 || w.WithDuration != 1 {
		t.Fatalf("apps %v, %d functions, %d with durations; want a and b (z never runs), 4, 1", w.Apps, w.Functions, w.WithDuration)
	}
	a := w.Apps[0]
	// 120 invocations of 1.5 s in a minute: 3 instances; f2's one
	// invocation of the default 1 s: 1 instance.
	if fmt.Sprint(a.Instances) != "[3 1 1]" || fmt.Sprint(a.Invocations) != "[120 1 1]" || fmt.Sprint(a.Timer) != "[false true false]" {
		t.Errorf("a: instances %v, invocations %v, timer %v", a.Instances, a.Invocations, a.Timer)
	}
	if len(a.Image.Layers) != 3 || a.Image.Size() <= 0 {
		t.Errorf("a's image %+v", a.Image)
	}
	apps := w.Catalog().Apps()
	if len(apps) != 4 || len(w.Idle) != 2 {
		t.Errorf("catalog %v, want a, b and two idle apps", apps)
	}
	if _, ok := w.Catalog().Image("z"); ok {
		t.Error("an app without invocations in the catalog")
	}

	// An app's image depends only on the seed and its ID: the same in a
	// trace with other apps.
	inv2, _ := trace.ReadInvocations(strings.NewReader("HashApp,HashFunction,1\na,f1,1\nc,h,2\n"), "t2.csv")
	w2, _ := NewWorkload(inv2, nil, cfg)
	im, _ := w2.Catalog().Image("a")
	if fmt.Sprint(im) != fmt.Sprint(a.Image) {
		t.Errorf("a's image differs between traces: %v, %v", im, a.Image)
	}
	cfg.Seed = 2
	w3, _ := NewWorkload(inv2, nil, cfg)
	if im3, _ := w3.Catalog().Image("a"); fmt.Sprint(im3) == fmt.Sprint(im) {
		t.Error("another seed drew the same image")
	}

	quiet, _ := trace.ReadInvocations(strings.NewReader("HashApp,HashFunction,1\nz,q,0\n"), "q.csv")
	if _, err := NewWorkload(quiet, nil, DefaultConfig()); !errors.Is(err, ErrEmptyTrace) {
		t.Errorf("a trace without invocations: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*Config){
		"no nodes":          func(c *Config) { c.Nodes = 0 },
		"no disk":           func(c *Config) { c.DiskBudget = 0 },
		"no bandwidth":      func(c *Config) { c.Bandwidth = 0 },
		"no slots":          func(c *Config) { c.Slots = 0 },
		"no runtimes":       func(c *Config) { c.Runtimes = 0 },
		"negative layer":    func(c *Config) { c.CodeLayer = -1 },
		"scale-down of 30s": func(c *Config) { c.ScaleDown = 30 * time.Second },
		"warm-up of 90s":    func(c *Config) { c.Warmup = 90 * time.Second },
		"keep-alive 0":      func(c *Config) { c.KeepAlive = 0 },
		"bad planner":       func(c *Config) { c.Planner.PinFraction = 2 },
		"negative idle":     func(c *Config) { c.IdleApps = -1 },
	} {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); !errors.Is(err, predictor.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestRunCancelled(t *testing.T) {
	cfg := sliceConfig()
	w := slice(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, cfg, w, Policies(cfg), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

// holds reports whether node id of c holds layer l.
func holds(c *cluster, id p2p.NodeID, l int32) bool {
	for _, n := range c.nodes {
		if n.id == id {
			return n.layers[l].present
		}
	}
	return false
}
