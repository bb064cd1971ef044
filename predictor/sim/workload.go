package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/predictor"
	"github.com/thaw-dev/thaw/predictor/trace"
)

// ErrEmptyTrace: the trace has no function with any invocation.
var ErrEmptyTrace = errors.New("trace has no invocations")

// App is one app of a workload: its image and its activity per minute.
type App struct {
	ID      predictor.AppID
	Runtime int
	Image   predictor.Image
	// Invocations and Instances per minute of the trace.
	Invocations []uint32
	Instances   []uint32
	// Timer per minute: some invocation came from a timer trigger.
	Timer []bool
	// layers are the image's layers as indices into Workload.layers.
	layers []int32
}

// Workload is a trace turned into apps with images, shared read-only by
// every policy's replay.
type Workload struct {
	// Apps are the apps the trace invokes, by ID.
	Apps []*App
	// Idle are the deployed apps it never invokes (Config.IdleApps).
	Idle []*App
	// Minutes in the trace; FirstMinute is the first one's number in its
	// day.
	Minutes, FirstMinute int
	// Functions read from the trace and how many had a duration.
	Functions, WithDuration int

	ids     []predictor.AppID
	layers  []predictor.Layer
	byHash  map[v1.Hash]int32
	byApp   map[predictor.AppID]*App
	catalog int64 // bytes of all distinct layers
}

// Catalog returns the workload's apps and images as the planner reads them.
func (w *Workload) Catalog() predictor.Catalog { return catalog{w} }

type catalog struct{ w *Workload }

// Image implements predictor.Catalog.
func (c catalog) Image(app predictor.AppID) (predictor.Image, bool) {
	a := c.w.byApp[app]
	if a == nil {
		return predictor.Image{}, false
	}
	return a.Image, true
}

// Apps implements predictor.Catalog.
func (c catalog) Apps() []predictor.AppID { return c.w.ids }

// CatalogBytes is the size of every distinct layer of every image.
func (w *Workload) CatalogBytes() int64 { return w.catalog }

// Layers is the number of distinct layers.
func (w *Workload) Layers() int { return len(w.layers) }

// NewWorkload groups inv's functions into apps (by HashApp), derives each
// app's instances per minute from its functions' durations (durations may
// be nil), and draws each app's image as cfg describes.
func NewWorkload(inv *trace.Invocations, durations *trace.Durations, cfg Config) (*Workload, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Workload{Minutes: inv.Minutes, FirstMinute: inv.FirstMinute, byHash: map[v1.Hash]int32{}, byApp: map[predictor.AppID]*App{}}
	busy := map[predictor.AppID][]float64{} // execution ms per minute
	for _, f := range inv.Functions {
		w.Functions++
		id := predictor.AppID(f.App)
		a := w.byApp[id]
		if a == nil {
			a = &App{ID: id, Invocations: make([]uint32, inv.Minutes), Instances: make([]uint32, inv.Minutes), Timer: make([]bool, inv.Minutes)}
			w.byApp[id] = a
			busy[id] = make([]float64, inv.Minutes)
		}
		ms := float64(cfg.DefaultDuration.Milliseconds())
		if d, ok := durations.Lookup(f.App, f.Function); ok {
			ms = d.Average
			w.WithDuration++
		}
		timer := strings.EqualFold(f.Trigger, "timer")
		b := busy[id]
		for m, n := range f.Counts {
			if n == 0 {
				continue
			}
			a.Invocations[m] = satAdd(a.Invocations[m], n)
			b[m] += float64(n) * ms
			a.Timer[m] = a.Timer[m] || timer
		}
	}
	for id, a := range w.byApp {
		b := busy[id]
		active := false
		for m, n := range a.Invocations {
			if n == 0 {
				continue
			}
			active = true
			inst := math.Ceil(b[m] / 60000)
			a.Instances[m] = uint32(min(max(inst, 1), math.MaxUint16))
		}
		if !active {
			delete(w.byApp, id)
			continue
		}
		w.Apps = append(w.Apps, a)
	}
	if len(w.Apps) == 0 {
		return nil, ErrEmptyTrace
	}
	slices.SortFunc(w.Apps, func(x, y *App) int { return strings.Compare(string(x.ID), string(y.ID)) })
	for i := range cfg.IdleApps {
		a := &App{ID: predictor.AppID(fmt.Sprintf("idle-%07d", i))}
		w.Idle = append(w.Idle, a)
		w.byApp[a.ID] = a
	}
	for _, a := range w.all() {
		w.ids = append(w.ids, a.ID)
	}
	slices.SortFunc(w.ids, func(x, y predictor.AppID) int { return strings.Compare(string(x), string(y)) })
	w.drawImages(cfg)
	return w, nil
}

// all are the invoked and the idle apps.
func (w *Workload) all() []*App { return append(w.Apps[:len(w.Apps):len(w.Apps)], w.Idle...) }

func satAdd(a, b uint32) uint32 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint32
}

// drawImages gives every app an image: its runtime's base layer, a
// dependency layer and a code layer. Each app's draw depends only on the
// seed and its own ID, so a slice of a trace gives its apps the same images
// as the whole trace.
func (w *Workload) drawImages(cfg Config) {
	// Runtime popularity falls as 1/rank (Zipf, s = 1).
	weights := make([]float64, cfg.Runtimes)
	var total float64
	for i := range weights {
		weights[i] = 1 / float64(i+1)
		total += weights[i]
	}
	base := make([]int32, cfg.Runtimes)
	for r := range base {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(r)))
		base[r] = w.addLayer(fmt.Sprintf("runtime/%d", r), cfg.Seed, logNormal(rng, cfg.BaseLayer, 0.5))
	}
	for _, a := range w.all() {
		h := fnv.New64a()
		h.Write([]byte(a.ID))
		rng := rand.New(rand.NewPCG(cfg.Seed, h.Sum64()))
		u := rng.Float64() * total
		a.Runtime = len(weights) - 1
		for i, wt := range weights {
			if u < wt {
				a.Runtime = i
				break
			}
			u -= wt
		}
		deps := w.addLayer(string(a.ID)+"/deps", cfg.Seed, logNormal(rng, cfg.DepsLayer, 1.0))
		code := w.addLayer(string(a.ID)+"/code", cfg.Seed, logNormal(rng, cfg.CodeLayer, 1.0))
		a.layers = []int32{base[a.Runtime], deps, code}
		a.Image = predictor.Image{Name: "sim.local/" + string(a.ID)[:min(12, len(a.ID))]}
		for _, l := range a.layers {
			a.Image.Layers = append(a.Image.Layers, w.layers[l])
		}
	}
}

func (w *Workload) addLayer(name string, seed uint64, size int64) int32 {
	sum := sha256.Sum256(fmt.Appendf(nil, "thaw-sim/%d/%s", seed, name))
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if i, ok := w.byHash[d]; ok {
		return i
	}
	i := int32(len(w.layers))
	w.layers = append(w.layers, predictor.Layer{Digest: d, Size: size})
	w.byHash[d] = i
	w.catalog += size
	return i
}

// logNormal draws a size whose median is median and whose logarithm has
// standard deviation sigma, clipped to [64 KiB, 4 GiB].
func logNormal(rng *rand.Rand, median int64, sigma float64) int64 {
	v := float64(median) * math.Exp(sigma*rng.NormFloat64())
	return int64(min(max(v, 64<<10), 4<<30))
}
