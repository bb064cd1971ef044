package prefetch_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

// fakeResolver answers every reference with desc.
type fakeResolver struct{ desc puller.Descriptor }

func (f fakeResolver) Resolve(context.Context, name.Reference) (catalog.Resolution, error) {
	return catalog.Resolution{Descriptor: f.desc}, nil
}

type doc struct {
	body []byte
	mt   string
}

// fakeBlobs serves manifests from docs and records Ensure calls. With gate
// set, Ensure waits for it.
type fakeBlobs struct {
	docs map[v1.Hash]doc
	gate chan struct{}
	fail map[v1.Hash]error

	mu        sync.Mutex
	ensured   []v1.Hash
	active    int
	maxActive int
}

func (f *fakeBlobs) Manifest(_ context.Context, _ name.Repository, dgst v1.Hash) ([]byte, string, string, error) {
	d, ok := f.docs[dgst]
	if !ok {
		return nil, "", "", fmt.Errorf("manifest %s: %w", dgst, puller.ErrNotFound)
	}
	return d.body, d.mt, "cache", nil
}

func (f *fakeBlobs) Ensure(ctx context.Context, _ name.Repository, dgst v1.Hash) (bool, error) {
	f.mu.Lock()
	f.ensured = append(f.ensured, dgst)
	f.active++
	f.maxActive = max(f.maxActive, f.active)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.active--
		f.mu.Unlock()
	}()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if err := f.fail[dgst]; err != nil {
		return false, err
	}
	return false, nil
}

func noStat(context.Context, v1.Hash) (store.Info, error) { return store.Info{}, puller.ErrNotFound }

func blob(seed uint64, size int) v1.Descriptor {
	_, d := storetest.Random(seed, 8)
	return v1.Descriptor{MediaType: types.OCILayer, Digest: d, Size: int64(size)}
}

func manifestDoc(t testing.TB, cfg v1.Descriptor, layers ...v1.Descriptor) (doc, v1.Hash) {
	t.Helper()
	b, err := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Config: cfg, Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	return doc{b, puller.MediaTypeOCIManifest}, storetest.Digest(b)
}

var testRef = name.MustParseReference("registry.example/team/app:v1")

// An index whose images share a layer and carry a foreign layer: the shared
// one is fetched once, the foreign one not at all.
func TestPullSkipsForeignAndDuplicateBlobs(t *testing.T) {
	cfgA, cfgB, shared, own := blob(1, 10), blob(2, 20), blob(3, 300), blob(4, 400)
	foreign := blob(5, 5000)
	foreign.URLs = []string{"https://foreign.example/layer"}
	a, aDigest := manifestDoc(t, cfgA, shared, foreign)
	b, bDigest := manifestDoc(t, cfgB, shared, own)
	idx, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Digest: aDigest, Size: int64(len(a.body)), Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: types.OCIManifestSchema1, Digest: bDigest, Size: int64(len(b.body)), Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	idxDigest := storetest.Digest(idx)
	fb := &fakeBlobs{docs: map[v1.Hash]doc{aDigest: a, bDigest: b, idxDigest: {idx, puller.MediaTypeOCIIndex}}}
	p := prefetch.New(fakeResolver{puller.Descriptor{Digest: idxDigest, MediaType: puller.MediaTypeOCIIndex}}, fb, noStat, 4)

	res, err := p.Pull(t.Context(), testRef, prefetch.Platforms{All: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifests != 2 || res.Blobs != 4 || res.Bytes != 10+20+300+400 {
		t.Fatalf("Pull = %+v; want 2 manifests, 4 blobs of 730 bytes", res)
	}
	got := map[v1.Hash]int{}
	for _, d := range fb.ensured {
		got[d]++
	}
	want := map[v1.Hash]int{cfgA.Digest: 1, cfgB.Digest: 1, shared.Digest: 1, own.Digest: 1}
	if len(got) != len(want) {
		t.Fatalf("Ensure calls %v, want %v", got, want)
	}
	for d, n := range want {
		if got[d] != n {
			t.Fatalf("Ensure(%s) called %d times, want %d (foreign %s must not be fetched)", d, got[d], n, foreign.Digest)
		}
	}
}

func TestPullConcurrencyLimit(t *testing.T) {
	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var layers []v1.Descriptor
				for i := range 8 {
					layers = append(layers, blob(uint64(10+i), 100))
				}
				m, mDigest := manifestDoc(t, blob(9, 10), layers...)
				fb := &fakeBlobs{docs: map[v1.Hash]doc{mDigest: m}, gate: make(chan struct{})}
				p := prefetch.New(fakeResolver{puller.Descriptor{Digest: mDigest}}, fb, noStat, limit)

				done := make(chan error, 1)
				go func() {
					_, err := p.Pull(context.Background(), testRef, prefetch.Platforms{}, nil)
					done <- err
				}()
				synctest.Wait()
				fb.mu.Lock()
				active := fb.active
				fb.mu.Unlock()
				if active != limit {
					t.Fatalf("%d blobs in flight, want the limit %d", active, limit)
				}
				close(fb.gate)
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				if fb.maxActive != limit || len(fb.ensured) != 9 {
					t.Fatalf("max %d in flight over %d Ensure calls; want %d over 9", fb.maxActive, len(fb.ensured), limit)
				}
			})
		})
	}
}

func TestPullBlobError(t *testing.T) {
	layer := blob(20, 100)
	m, mDigest := manifestDoc(t, blob(21, 10), layer, blob(22, 100))
	fb := &fakeBlobs{docs: map[v1.Hash]doc{mDigest: m}, fail: map[v1.Hash]error{layer.Digest: fmt.Errorf("boom: %w", puller.ErrUnavailable)}}
	p := prefetch.New(fakeResolver{puller.Descriptor{Digest: mDigest}}, fb, noStat, 1)
	var last prefetch.Event
	_, err := p.Pull(t.Context(), testRef, prefetch.Platforms{}, func(e prefetch.Event) { last = e })
	if !errors.Is(err, puller.ErrUnavailable) || !strings.Contains(err.Error(), layer.Digest.String()) {
		t.Fatalf("Pull = %v, want an error naming blob %s and wrapping ErrUnavailable", err, layer.Digest)
	}
	if last.Done && last.Digest == "" {
		t.Fatalf("a failed Pull reported the image done: %+v", last)
	}
}

func TestPullBadManifest(t *testing.T) {
	tests := []struct {
		name string
		doc  doc
	}{
		{"manifest is not json", doc{[]byte("{not json"), puller.MediaTypeOCIManifest}},
		{"index is not json", doc{[]byte("[1,2"), puller.MediaTypeOCIIndex}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := storetest.Digest(tt.doc.body)
			fb := &fakeBlobs{docs: map[v1.Hash]doc{d: tt.doc}}
			p := prefetch.New(fakeResolver{puller.Descriptor{Digest: d}}, fb, noStat, 1)
			if _, err := p.Pull(t.Context(), testRef, prefetch.Platforms{}, nil); err == nil || !strings.Contains(err.Error(), d.String()) {
				t.Fatalf("Pull of a broken document = %v, want an error naming %s", err, d)
			}
		})
	}
}

// FuzzPullDocument feeds Pull a manifest or index as a registry might send
// it: it must not panic, and when it succeeds it fetched exactly the blobs it
// counted.
func FuzzPullDocument(f *testing.F) {
	child, childDigest := manifestDoc(f, blob(30, 10), blob(31, 20))
	plat := &v1.Platform{OS: "linux", Architecture: "amd64"}
	idx, _ := json.Marshal(v1.IndexManifest{SchemaVersion: 2, Manifests: []v1.Descriptor{{Digest: childDigest, Platform: plat}}})
	f.Add(child.body, false)
	f.Add(idx, true)
	f.Add([]byte(`{}`), false)
	f.Add([]byte(`{}`), true)
	f.Add([]byte(`null`), true)
	f.Add([]byte(`{"manifests":[{"platform":null},{"digest":"sha256:`+childDigest.Hex+`","platform":{"os":"linux","architecture":"amd64"}}]}`), true)
	f.Add([]byte(`{"config":{"urls":["x"]},"layers":[{},{},{"size":-5}]}`), false)
	f.Fuzz(func(t *testing.T, body []byte, isIndex bool) {
		mt := puller.MediaTypeOCIManifest
		if isIndex {
			mt = puller.MediaTypeOCIIndex
		}
		root := storetest.Digest(append([]byte("root"), body...))
		fb := &fakeBlobs{docs: map[v1.Hash]doc{root: {body, mt}, childDigest: child}}
		for _, p := range []prefetch.Platforms{{}, {All: true}, {Only: []string{"linux/amd64", "bad"}}} {
			fb.ensured = nil
			res, err := prefetch.New(fakeResolver{puller.Descriptor{Digest: root}}, fb, noStat, 2).Pull(context.Background(), testRef, p, nil)
			if err != nil {
				continue
			}
			if len(fb.ensured) != res.Blobs {
				t.Fatalf("Pull reported %d blobs and fetched %d", res.Blobs, len(fb.ensured))
			}
		}
	})
}
