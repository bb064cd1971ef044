package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

// fakeUpstream is a puller.ManifestSource whose Resolve answers with desc or
// err, counting its calls. With block set, Resolve waits for release (or its
// context) first.
type fakeUpstream struct {
	calls atomic.Int64

	mu       sync.Mutex
	desc     puller.Descriptor
	err      error
	block    bool
	release  chan struct{}
	deadline time.Time // of the last Resolve's context
}

var _ puller.ManifestSource = (*fakeUpstream)(nil)

func (f *fakeUpstream) answer(desc puller.Descriptor, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desc, f.err = desc, err
}

func (f *fakeUpstream) Resolve(ctx context.Context, ref name.Reference) (puller.Descriptor, error) {
	f.calls.Add(1)
	f.mu.Lock()
	f.deadline, _ = ctx.Deadline()
	block, release := f.block, f.release
	f.mu.Unlock()
	if block {
		select {
		case <-release:
		case <-ctx.Done():
			return puller.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, ctx.Err())
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.desc, f.err
}

func (f *fakeUpstream) Manifest(context.Context, name.Repository, v1.Hash) ([]byte, string, error) {
	return nil, "", errors.New("fakeUpstream: Manifest not expected")
}

// clock is a settable time for the resolver's now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func descriptor(seed uint64) puller.Descriptor {
	_, dgst := storetest.Random(seed, 64)
	return puller.Descriptor{Digest: dgst, MediaType: puller.MediaTypeOCIIndex, Size: int64(500 + seed)}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

type resolverEnv struct {
	catalog  *catalog.Catalog
	upstream *fakeUpstream
	clock    *clock
	resolver *catalog.Resolver
}

func newResolver(t *testing.T, cfg catalog.ResolverConfig) *resolverEnv {
	t.Helper()
	e := &resolverEnv{
		catalog:  open(t, filepath.Join(t.TempDir(), "catalog.json")),
		upstream: &fakeUpstream{},
		clock:    &clock{now: time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)},
	}
	r, err := catalog.NewResolver(cfg, e.catalog, e.upstream, slog.New(slog.DiscardHandler), e.clock.Now)
	if err != nil {
		t.Fatalf("NewResolver: %v", err)
	}
	e.resolver = r
	return e
}

func TestResolverConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  catalog.ResolverConfig
		ok   bool
	}{
		{"default", catalog.DefaultResolverConfig(), true},
		{"zero ttl always asks upstream", catalog.ResolverConfig{TTL: 0, Timeout: time.Second}, true},
		{"negative ttl", catalog.ResolverConfig{TTL: -time.Second, Timeout: time.Second}, false},
		{"no timeout", catalog.ResolverConfig{TTL: time.Second}, false},
		{"negative timeout", catalog.ResolverConfig{TTL: time.Second, Timeout: -time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := catalog.NewResolver(tt.cfg, nil, &fakeUpstream{}, slog.New(slog.DiscardHandler), nil)
			if (err == nil) != tt.ok {
				t.Fatalf("NewResolver(%+v) error = %v, want ok %v", tt.cfg, err, tt.ok)
			}
		})
	}
}

func TestResolverTTL(t *testing.T) {
	cfg := catalog.DefaultResolverConfig()
	cfg.TTL = time.Minute
	e := newResolver(t, cfg)
	ref := mustRef(t, "registry.example/team/app:v1")
	first, second := descriptor(1), descriptor(2)
	e.upstream.answer(first, nil)

	steps := []struct {
		name       string
		advance    time.Duration
		upstream   puller.Descriptor // what upstream says now
		want       puller.Descriptor
		wantCached bool
		wantCalls  int64
	}{
		{"first resolution asks upstream", 0, first, first, false, 1},
		{"within the ttl from the catalog", 30 * time.Second, second, first, true, 1},
		{"just before expiry still cached", 30*time.Second - time.Nanosecond, second, first, true, 1},
		{"expired re-resolves", time.Nanosecond, second, second, false, 2},
		{"the new answer is cached", 59 * time.Second, first, second, true, 2},
	}
	for _, s := range steps {
		e.clock.Advance(s.advance)
		e.upstream.answer(s.upstream, nil)
		res, err := e.resolver.Resolve(t.Context(), ref)
		if err != nil {
			t.Fatalf("%s: Resolve: %v", s.name, err)
		}
		if res.Descriptor != s.want || res.Cached != s.wantCached || res.Stale {
			t.Fatalf("%s: Resolve = %+v, want %+v cached %v", s.name, res, s.want, s.wantCached)
		}
		if got := e.upstream.calls.Load(); got != s.wantCalls {
			t.Fatalf("%s: upstream called %d times, want %d", s.name, got, s.wantCalls)
		}
	}

	// Every upstream answer is recorded with the time it was resolved.
	img, ok := e.catalog.Get(ref.Name())
	if !ok || img.Digest != second.Digest || img.MediaType != second.MediaType || img.Size != second.Size {
		t.Fatalf("catalog has %+v, %v; want %+v", img, ok, second)
	}
	if want := e.clock.Now().Add(-59 * time.Second); !img.ResolvedAt.Equal(want) {
		t.Fatalf("ResolvedAt = %s, want %s", img.ResolvedAt, want)
	}
}

func TestResolverZeroTTLAlwaysAsks(t *testing.T) {
	cfg := catalog.DefaultResolverConfig()
	cfg.TTL = 0
	e := newResolver(t, cfg)
	ref := mustRef(t, "registry.example/team/app:v1")
	e.upstream.answer(descriptor(1), nil)
	for i := range 3 {
		res, err := e.resolver.Resolve(t.Context(), ref)
		if err != nil || res.Cached {
			t.Fatalf("Resolve #%d = %+v, %v; want an upstream answer", i, res, err)
		}
	}
	if got := e.upstream.calls.Load(); got != 3 {
		t.Fatalf("upstream called %d times, want 3", got)
	}
}

func TestResolverDigestFromCatalog(t *testing.T) {
	e := newResolver(t, catalog.DefaultResolverConfig())
	desc := descriptor(7)
	known := mustRef(t, "registry.example/team/app@"+desc.Digest.String())
	// Resolved long ago: a digest never expires.
	if err := e.catalog.Put(catalog.Image{Ref: known.Name(), Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size,
		ResolvedAt: e.clock.Now().Add(-365 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e.upstream.answer(puller.Descriptor{}, fmt.Errorf("must not be asked: %w", puller.ErrUnavailable))
	res, err := e.resolver.Resolve(t.Context(), known)
	if err != nil || res.Descriptor != desc || !res.Cached {
		t.Fatalf("Resolve(known digest) = %+v, %v; want %+v from the catalog", res, err, desc)
	}
	if got := e.upstream.calls.Load(); got != 0 {
		t.Fatalf("upstream called %d times for a digest the catalog knows", got)
	}

	// A digest the catalog does not know goes upstream, and is then known.
	other := descriptor(8)
	unknown := mustRef(t, "registry.example/team/app@"+other.Digest.String())
	e.upstream.answer(other, nil)
	for i := range 2 {
		res, err := e.resolver.Resolve(t.Context(), unknown)
		if err != nil || res.Descriptor != other {
			t.Fatalf("Resolve(unknown digest) #%d = %+v, %v", i, res, err)
		}
	}
	if got := e.upstream.calls.Load(); got != 1 {
		t.Fatalf("upstream called %d times for a new digest, want 1", got)
	}
}

func TestResolverSharesConcurrentResolutions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newResolver(t, catalog.DefaultResolverConfig())
		desc := descriptor(3)
		e.upstream.answer(desc, nil)
		e.upstream.block, e.upstream.release = true, make(chan struct{})
		ref := mustRef(t, "registry.example/team/app:v1")

		const callers = 10
		results := make(chan catalog.Resolution, callers)
		errs := make(chan error, callers)
		for range callers {
			go func() {
				res, err := e.resolver.Resolve(context.Background(), ref)
				results <- res
				errs <- err
			}()
		}
		synctest.Wait() // every caller is waiting on the one upstream call
		if got := e.upstream.calls.Load(); got != 1 {
			t.Fatalf("%d concurrent resolutions made %d upstream calls, want 1", callers, got)
		}
		close(e.upstream.release)
		for range callers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			if res := <-results; res.Descriptor != desc {
				t.Fatalf("Resolve = %+v, want %+v", res, desc)
			}
		}
		if got := e.upstream.calls.Load(); got != 1 {
			t.Fatalf("upstream called %d times, want 1", got)
		}
	})
}

func TestResolverStale(t *testing.T) {
	old := descriptor(4)
	unavailable := fmt.Errorf("GET /v2/: 503: %w", puller.ErrUnavailable)
	tests := []struct {
		name       string
		serveStale bool
		known      bool // the catalog has an expired record
		upstream   error
		wantStale  bool
		wantErr    error
	}{
		{"unavailable serves the last known digest", true, true, unavailable, true, nil},
		{"timeout serves the last known digest", true, true, fmt.Errorf("resolve: %w", context.DeadlineExceeded), true, nil},
		{"not found is not served stale", true, true, fmt.Errorf("tag v1: %w", puller.ErrNotFound), false, puller.ErrNotFound},
		{"unauthorized is not served stale", true, true, fmt.Errorf("token: %w", puller.ErrUnauthorized), false, puller.ErrUnauthorized},
		{"ServeStale off", false, true, unavailable, false, puller.ErrUnavailable},
		{"nothing known", true, false, unavailable, false, puller.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catalog.DefaultResolverConfig()
			cfg.ServeStale = tt.serveStale
			e := newResolver(t, cfg)
			ref := mustRef(t, "registry.example/team/app:v1")
			resolvedAt := e.clock.Now().Add(-time.Hour) // well past the ttl
			if tt.known {
				if err := e.catalog.Put(catalog.Image{Ref: ref.Name(), Digest: old.Digest, MediaType: old.MediaType, Size: old.Size, ResolvedAt: resolvedAt}); err != nil {
					t.Fatal(err)
				}
			}
			e.upstream.answer(puller.Descriptor{}, tt.upstream)

			res, err := e.resolver.Resolve(t.Context(), ref)
			if got := e.upstream.calls.Load(); got != 1 {
				t.Fatalf("upstream called %d times, want 1", got)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve = %+v, %v; want an error wrapping %v", res, err, tt.wantErr)
				}
				if res.Stale {
					t.Fatal("an error came with a stale resolution")
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if res.Stale != tt.wantStale || res.Cached || res.Descriptor != old {
				t.Fatalf("Resolve = %+v, want stale %v with %+v", res, tt.wantStale, old)
			}
			// A stale answer does not refresh the record.
			if img, _ := e.catalog.Get(ref.Name()); !img.ResolvedAt.Equal(resolvedAt) {
				t.Fatalf("stale answer moved ResolvedAt to %s", img.ResolvedAt)
			}
		})
	}
}

func TestResolverPassesUpstreamErrorOn(t *testing.T) {
	e := newResolver(t, catalog.DefaultResolverConfig())
	ref := mustRef(t, "registry.example/team/app:v9")
	// The upstream names the reference; the resolver adds no second prefix.
	upErr := fmt.Errorf("manifest %s: %w", ref, puller.ErrNotFound)
	e.upstream.answer(puller.Descriptor{}, upErr)
	_, err := e.resolver.Resolve(t.Context(), ref)
	if !errors.Is(err, puller.ErrNotFound) || err.Error() != upErr.Error() {
		t.Fatalf("Resolve = %v, want the upstream's error %q", err, upErr)
	}
	if _, ok := e.catalog.Get(ref.Name()); ok {
		t.Fatal("a failed resolution was recorded")
	}
}

func TestResolverTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := catalog.DefaultResolverConfig()
		cfg.Timeout = 3 * time.Second
		cfg.ServeStale = false
		e := newResolver(t, cfg)
		e.upstream.block, e.upstream.release = true, make(chan struct{}) // never released
		ref := mustRef(t, "registry.example/team/app:v1")

		// The caller's own context has no deadline; the resolver's applies.
		start := time.Now()
		_, err := e.resolver.Resolve(context.Background(), ref)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Resolve of a hanging upstream = %v, want an error wrapping context.DeadlineExceeded", err)
		}
		e.upstream.mu.Lock()
		deadline := e.upstream.deadline
		e.upstream.mu.Unlock()
		// In the bubble time is exact: the upstream got exactly Timeout.
		if want := start.Add(cfg.Timeout); !deadline.Equal(want) {
			t.Fatalf("upstream context deadline %s, want %s (start + Timeout)", deadline, want)
		}
		if elapsed := time.Since(start); elapsed != cfg.Timeout {
			t.Fatalf("Resolve returned after %s, want %s", elapsed, cfg.Timeout)
		}
	})
}
