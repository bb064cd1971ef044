package prefetch

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/store"
)

// Resolver resolves references (catalog.Resolver).
type Resolver interface {
	Resolve(ctx context.Context, ref name.Reference) (catalog.Resolution, error)
}

// Blobs brings manifests and blobs into the store (fetch.Fetcher).
type Blobs interface {
	Manifest(ctx context.Context, repo name.Repository, dgst v1.Hash) ([]byte, string, string, error)
	Ensure(ctx context.Context, repo name.Repository, dgst v1.Hash) (cached bool, err error)
}

// Platforms selects the manifests of an index.
type Platforms struct {
	// All takes every platform of an index.
	All bool
	// Only lists the platforms to take ("linux/amd64", "linux/arm64/v8");
	// empty means the node's own (runtime.GOOS/runtime.GOARCH).
	Only []string
}

// Event reports progress. Bytes counts bytes present of Total across the
// image's blobs known so far.
type Event struct {
	Image  string `json:"image"`
	Digest string `json:"digest,omitempty"` // the blob this event is about, if any
	Done   bool   `json:"done,omitempty"`   // this blob (or, without Digest, the image) is complete
	Cached bool   `json:"cached,omitempty"` // the blob was already on the node
	Bytes  int64  `json:"bytes"`
	Total  int64  `json:"total"`
}

// Result summarises one image's prefetch.
type Result struct {
	Image     string        `json:"image"`
	Digest    string        `json:"digest"`
	Manifests int           `json:"manifests"`
	Blobs     int           `json:"blobs"`
	Cached    int           `json:"cached"`
	Bytes     int64         `json:"bytes"`
	Duration  time.Duration `json:"duration"`
}

// Prefetcher pulls images into the store.
type Prefetcher struct {
	resolver    Resolver
	blobs       Blobs
	stat        func(ctx context.Context, dgst v1.Hash) (store.Info, error)
	concurrency int
	platform    string
}

// New returns a Prefetcher that brings concurrency blobs at a time. stat
// reports a blob's progress (store.Admin.Stat).
func New(r Resolver, b Blobs, stat func(context.Context, v1.Hash) (store.Info, error), concurrency int) *Prefetcher {
	if concurrency < 1 {
		concurrency = 1
	}
	return &Prefetcher{resolver: r, blobs: b, stat: stat, concurrency: concurrency, platform: runtime.GOOS + "/" + runtime.GOARCH}
}

// Pull brings every blob of ref (for the platforms asked) into the store.
// progress, if not nil, is called from one goroutine at a time.
func (p *Prefetcher) Pull(ctx context.Context, ref name.Reference, plat Platforms, progress func(Event)) (Result, error) {
	start := time.Now()
	if progress == nil {
		progress = func(Event) {}
	}
	repo := ref.Context()
	c, err := p.Contents(ctx, ref, plat)
	if err != nil {
		if c.Digest == (v1.Hash{}) {
			return Result{}, err
		}
		return Result{Image: ref.Name(), Digest: c.Digest.String()}, err
	}
	blobs := c.Blobs
	result := Result{Image: ref.Name(), Digest: c.Digest.String(), Manifests: c.Manifests, Blobs: len(blobs)}
	for _, d := range blobs {
		result.Bytes += d.Size
	}

	var (
		mu   sync.Mutex // serialises progress calls
		done atomic.Int64
	)
	report := func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		e.Image, e.Total = ref.Name(), result.Bytes
		progress(e)
	}
	stop := make(chan struct{})
	var ticker sync.WaitGroup
	ticker.Add(1)
	go func() { // progress of blobs in flight, from the store's partial sizes
		defer ticker.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				var partial int64
				for _, d := range blobs {
					if info, err := p.stat(ctx, d.Digest); err == nil && !info.Complete {
						partial += info.Present
					}
				}
				report(Event{Bytes: done.Load() + partial})
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.concurrency)
	var cached atomic.Int64
	for _, d := range blobs {
		g.Go(func() error {
			hit, err := p.blobs.Ensure(gctx, repo, d.Digest)
			if err != nil {
				return fmt.Errorf("blob %s: %w", d.Digest, err)
			}
			if hit {
				cached.Add(1)
			}
			report(Event{Digest: d.Digest.String(), Done: true, Cached: hit, Bytes: done.Add(d.Size)})
			return nil
		})
	}
	err = g.Wait()
	close(stop)
	ticker.Wait()
	result.Cached = int(cached.Load())
	result.Duration = time.Since(start)
	if err != nil {
		return result, fmt.Errorf("prefetch %s: %w", ref.Name(), err)
	}
	report(Event{Done: true, Bytes: result.Bytes})
	return result, nil
}

// Contents is what an image reference names now.
type Contents struct {
	// Digest is what the reference resolved to (a manifest or an index).
	Digest v1.Hash
	// Manifests is how many image manifests were selected.
	Manifests int
	// Blobs are the configs and layers of those manifests, each once,
	// in manifest order (a manifest's config, then its layers, base
	// first). Foreign layers (with URLs) are left out.
	Blobs []v1.Descriptor
}

// Contents resolves ref and reads its manifests (into the store, as a pull
// would), without fetching any blob.
func (p *Prefetcher) Contents(ctx context.Context, ref name.Reference, plat Platforms) (Contents, error) {
	res, err := p.resolver.Resolve(ctx, ref)
	if err != nil {
		return Contents{}, err
	}
	c := Contents{Digest: res.Digest}
	manifests, err := p.manifests(ctx, ref.Context(), res.Digest, plat)
	if err != nil {
		return c, fmt.Errorf("prefetch %s: %w", ref.Name(), err)
	}
	c.Manifests = len(manifests)
	seen := map[v1.Hash]bool{}
	for _, m := range manifests {
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !seen[d.Digest] && len(d.URLs) == 0 { // foreign layers stay where they are
				seen[d.Digest] = true
				c.Blobs = append(c.Blobs, d)
			}
		}
	}
	return c, nil
}

// manifests returns the image manifests under dgst for the platforms asked.
func (p *Prefetcher) manifests(ctx context.Context, repo name.Repository, dgst v1.Hash, plat Platforms) ([]*v1.Manifest, error) {
	body, mt, _, err := p.blobs.Manifest(ctx, repo, dgst)
	if err != nil {
		return nil, err
	}
	if !puller.IsIndex(mt) {
		var m v1.Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", dgst, err)
		}
		return []*v1.Manifest{&m}, nil
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, fmt.Errorf("index %s: %w", dgst, err)
	}
	want := plat.Only
	if len(want) == 0 {
		want = []string{p.platform}
	}
	var out []*v1.Manifest
	for _, d := range idx.Manifests {
		if !plat.All && !matches(d.Platform, want) {
			continue
		}
		sub, err := p.manifests(ctx, repo, d.Digest, Platforms{All: true})
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("index %s has no manifest for %v: %w", dgst, want, puller.ErrNotFound)
	}
	return out, nil
}

// matches reports whether p is one of the platforms in want. An entry without
// a variant matches every variant; attestation manifests (unknown/unknown)
// never match.
func matches(p *v1.Platform, want []string) bool {
	if p == nil {
		return false
	}
	for _, w := range want {
		wp, err := v1.ParsePlatform(w)
		if err != nil {
			continue
		}
		if wp.OS == p.OS && wp.Architecture == p.Architecture && (wp.Variant == "" || wp.Variant == p.Variant) {
			return true
		}
	}
	return false
}
