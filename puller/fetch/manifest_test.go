package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/thaw-dev/thaw/metrics/metricstest"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/store/storetest"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// fakeManifests is a puller.ManifestSource serving fixed manifests, counting
// calls. With release set, Manifest waits for it (or its context) first.
type fakeManifests struct {
	calls   atomic.Int64
	byHash  map[v1.Hash][]byte
	mt      string
	err     error
	release chan struct{}
}

var _ puller.ManifestSource = (*fakeManifests)(nil)

func (f *fakeManifests) Resolve(context.Context, name.Reference) (puller.Descriptor, error) {
	return puller.Descriptor{}, errors.New("fakeManifests: Resolve not expected")
}

func (f *fakeManifests) Manifest(ctx context.Context, _ name.Repository, dgst v1.Hash) ([]byte, string, error) {
	f.calls.Add(1)
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("manifest %s: %w", dgst, ctx.Err())
		}
	}
	if f.err != nil {
		return nil, "", fmt.Errorf("manifest %s: %w", dgst, f.err)
	}
	b, ok := f.byHash[dgst]
	if !ok {
		return nil, "", fmt.Errorf("manifest %s: %w", dgst, puller.ErrNotFound)
	}
	return b, f.mt, nil
}

// randomManifest returns an image manifest, its digest and media type.
func randomManifest(t *testing.T) ([]byte, v1.Hash, string) {
	t.Helper()
	img, err := random.Image(100, 2)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	return raw, storetest.Digest(raw), string(mt)
}

func TestManifestStoredThenServedFromCache(t *testing.T) {
	raw, dgst, mediaType := randomManifest(t)
	src := &fakeManifests{byHash: map[v1.Hash][]byte{dgst: raw}, mt: mediaType}
	e := newEnv(t, fetch.DefaultConfig(), nil, newFakeSource(0), src)

	for i, wantSource := range []string{metrics.SourceUpstream, metrics.SourceCache} {
		b, mt, source, err := e.fetcher.Manifest(t.Context(), repo, dgst)
		if err != nil {
			t.Fatalf("Manifest #%d: %v", i+1, err)
		}
		// From the store, the media type is detected from the bytes.
		if !bytes.Equal(b, raw) || mt != mediaType || source != wantSource {
			t.Fatalf("Manifest #%d = %d bytes (equal %v), %q, source %q; want source %q",
				i+1, len(b), bytes.Equal(b, raw), mt, source, wantSource)
		}
		if n, complete := present(t, e.store, dgst); !complete || n != int64(len(raw)) {
			t.Fatalf("after Manifest #%d the store has %d bytes, complete %v", i+1, n, complete)
		}
	}
	if got := src.calls.Load(); got != 1 {
		t.Fatalf("manifest source called %d times, want 1", got)
	}
	for result, want := range map[string]float64{"hit": 1, "miss": 1} {
		if got := metricstest.Sum(t, e.reg, "thaw_cache_requests_total", map[string]string{"kind": "manifest", "result": result}); got != want {
			t.Errorf("manifest cache %s = %v, want %v", result, got, want)
		}
	}
}

func TestManifestErrors(t *testing.T) {
	raw, dgst, _ := randomManifest(t)
	tests := []struct {
		name     string
		err      error
		wantKind string
	}{
		{"not found", puller.ErrNotFound, "not_found"},
		{"unavailable", puller.ErrUnavailable, "server"},
		{"too large", puller.ErrTooLarge, "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeManifests{byHash: map[v1.Hash][]byte{dgst: raw}, err: tt.err}
			e := newEnv(t, fetch.DefaultConfig(), nil, newFakeSource(0), src)
			_, _, _, err := e.fetcher.Manifest(t.Context(), repo, dgst)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Manifest = %v, want an error wrapping %v", err, tt.err)
			}
			if n, _ := present(t, e.store, dgst); n != -1 {
				t.Fatalf("a failed manifest left %d bytes in the store", n)
			}
			if got := metricstest.Sum(t, e.reg, "thaw_upstream_errors_total", map[string]string{"kind": tt.wantKind}); got != 1 {
				t.Fatalf("thaw_upstream_errors_total{kind=%q} = %v, want 1", tt.wantKind, got)
			}
		})
	}
}

func TestManifestConcurrentCallsShareOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		raw, dgst, mt := randomManifest(t)
		src := &fakeManifests{byHash: map[v1.Hash][]byte{dgst: raw}, mt: mt, release: make(chan struct{})}
		e := newEnv(t, fetch.DefaultConfig(), nil, newFakeSource(0), src)

		const callers = 6
		errs := make(chan error, callers)
		for range callers {
			go func() {
				b, _, _, err := e.fetcher.Manifest(context.Background(), repo, dgst)
				if err == nil && !bytes.Equal(b, raw) {
					err = errors.New("wrong bytes")
				}
				errs <- err
			}()
		}
		synctest.Wait()
		if got := src.calls.Load(); got != 1 {
			t.Fatalf("%d concurrent Manifest calls made %d source calls, want 1", callers, got)
		}
		close(src.release)
		for range callers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
}

// The fetch of a manifest is shared; one caller giving up must not fail the
// others waiting on it. (Blob fetches are detached for this reason.)
func TestManifestCallerCancelDoesNotFailOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		raw, dgst, mt := randomManifest(t)
		src := &fakeManifests{byHash: map[v1.Hash][]byte{dgst: raw}, mt: mt, release: make(chan struct{})}
		e := newEnv(t, fetch.DefaultConfig(), nil, newFakeSource(0), src)

		first, cancelFirst := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() {
			_, _, _, err := e.fetcher.Manifest(first, repo, dgst)
			firstErr <- err
		}()
		synctest.Wait() // the first caller's fetch is in flight
		secondErr := make(chan error, 1)
		go func() {
			_, _, _, err := e.fetcher.Manifest(context.Background(), repo, dgst)
			secondErr <- err
		}()
		synctest.Wait()
		cancelFirst() // the first client hangs up
		<-firstErr
		synctest.Wait()
		close(src.release)
		if err := <-secondErr; err != nil {
			t.Fatalf("a caller that did not give up got %v because another caller did", err)
		}
	})
}

// Against a real registry: every blob of an image arrives complete and
// verified, and the manifest is fetched once.
func TestFetchFromRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0))))
	defer srv.Close()
	img, err := random.Image(300<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	up, err := upstream.New(upstream.DefaultConfig(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	e := newEnv(t, fetch.DefaultConfig(), nil, up, up)

	dgst, _ := img.Digest()
	raw, _ := img.RawManifest()
	for _, wantSource := range []string{metrics.SourceUpstream, metrics.SourceCache} {
		b, _, source, err := e.fetcher.Manifest(t.Context(), ref.Context(), dgst)
		if err != nil || !bytes.Equal(b, raw) || source != wantSource {
			t.Fatalf("Manifest: %v, source %q want %q, equal %v", err, source, wantSource, bytes.Equal(b, raw))
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	var wg sync.WaitGroup
	for _, l := range layers {
		d, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		want, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		total += int64(len(want))
		wg.Go(func() {
			b, source, err := e.fetcher.Open(t.Context(), ref.Context(), d)
			if err != nil {
				t.Errorf("Open(%s): %v", d, err)
				return
			}
			defer b.Close()
			// The sequential reader gets the last byte once the blob is
			// verified and committed.
			got, err := io.ReadAll(b.ReadSeeker())
			// The fetch may have finished before Open looked again: then the
			// blob is complete and reported from the cache.
			if err != nil || !bytes.Equal(got, want) || source != metrics.SourceUpstream && source != metrics.SourceCache {
				t.Errorf("layer %s: %v, source %q, %d bytes, equal %v", d, err, source, len(got), bytes.Equal(got, want))
			}
		})
	}
	wg.Wait()
	for _, l := range layers {
		d, _ := l.Digest()
		if cached, err := e.fetcher.Ensure(t.Context(), ref.Context(), d); !cached || err != nil {
			t.Errorf("Ensure(%s) after Open = %v, %v; want cached", d, cached, err)
		}
	}
	if got := metricstest.Sum(t, e.reg, "thaw_fetched_bytes_total", map[string]string{"source": "upstream"}); got != float64(total) {
		t.Fatalf("thaw_fetched_bytes_total = %v, want %d", got, total)
	}
}
