package prefetch_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// origin is an in-process registry.
type origin struct {
	host string
}

func newOrigin(t *testing.T) *origin {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0))))
	t.Cleanup(srv.Close)
	return &origin{host: strings.TrimPrefix(srv.URL, "http://")}
}

func (o *origin) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(o.host + "/" + s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func (o *origin) pushImage(t *testing.T, repoTag string) (name.Reference, v1.Image) {
	t.Helper()
	img, err := random.Image(48<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref := o.ref(t, repoTag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

// pushIndex pushes an index with one random image per platform and returns
// the images by platform string.
func (o *origin) pushIndex(t *testing.T, repoTag string, platforms []v1.Platform) (name.Reference, v1.ImageIndex, map[string]v1.Image) {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	imgs := map[string]v1.Image{}
	for _, p := range platforms {
		img, err := random.Image(16<<10, 2)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		imgs[p.String()] = img
	}
	ref := o.ref(t, repoTag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	return ref, idx, imgs
}

// node is a prefetcher wired to real parts, as cmd/thaw wires it.
type node struct {
	store   *store.Store
	fetcher *fetch.Fetcher
	pf      *prefetch.Prefetcher
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	st, err := store.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(filepath.Join(dir, "catalog.json"))
	if err != nil {
		t.Fatal(err)
	}
	up, err := upstream.New(upstream.DefaultConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	res, err := catalog.NewResolver(catalog.DefaultResolverConfig(), cat, up, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.New(fetch.DefaultConfig(), st, up, up, metrics.NewPuller(prometheus.NewRegistry()), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		up.Close()
	})
	return &node{store: st, fetcher: f, pf: prefetch.New(res, f, st.Stat, 3)}
}

// blobs returns an image's config and layer descriptors.
func blobs(t *testing.T, img v1.Image) []v1.Descriptor {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return append([]v1.Descriptor{m.Config}, m.Layers...)
}

func size(ds []v1.Descriptor) int64 {
	var n int64
	for _, d := range ds {
		n += d.Size
	}
	return n
}

// checkStored fails unless every blob is complete in the store (stored) or
// absent from it (!stored).
func checkStored(t *testing.T, st store.Admin, ds []v1.Descriptor, stored bool) {
	t.Helper()
	for _, d := range ds {
		info, err := st.Stat(context.Background(), d.Digest)
		switch {
		case stored && (err != nil || !info.Complete || info.Size != d.Size):
			t.Errorf("blob %s: %+v, %v; want complete, %d bytes", d.Digest, info, err, d.Size)
		case !stored && !errors.Is(err, puller.ErrNotFound):
			t.Errorf("blob %s: %+v, %v; want it not fetched", d.Digest, info, err)
		}
	}
}

// events records progress events.
type events []prefetch.Event

func (e *events) add(ev prefetch.Event) { *e = append(*e, ev) }

// check verifies what every Pull's progress promises: every event is about
// the image with the image's total, one Done event per blob, and a last Done
// event without digest whose Bytes == Total.
func (e events) check(t *testing.T, res prefetch.Result, ds []v1.Descriptor, wantCached bool) {
	t.Helper()
	if len(e) == 0 {
		t.Fatal("no progress event")
	}
	done := map[string]bool{}
	for _, ev := range e {
		if ev.Image != res.Image || ev.Total != res.Bytes {
			t.Fatalf("event %+v: want image %s, total %d", ev, res.Image, res.Bytes)
		}
		if ev.Bytes < 0 || ev.Bytes > ev.Total {
			t.Fatalf("event %+v: bytes out of range", ev)
		}
		if ev.Digest != "" && ev.Done {
			if done[ev.Digest] {
				t.Fatalf("blob %s reported done twice", ev.Digest)
			}
			done[ev.Digest] = true
			if ev.Cached != wantCached {
				t.Fatalf("event %+v: want cached %v", ev, wantCached)
			}
		}
	}
	for _, d := range ds {
		if !done[d.Digest.String()] {
			t.Errorf("no done event for blob %s", d.Digest)
		}
	}
	if len(done) != len(ds) {
		t.Errorf("%d blobs reported done, want %d", len(done), len(ds))
	}
	last := e[len(e)-1]
	if !last.Done || last.Digest != "" || last.Bytes != last.Total {
		t.Fatalf("last event %+v: want Done for the image with Bytes == Total", last)
	}
}

func TestPullImage(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.pushImage(t, "team/app:v1")
	n := newNode(t)
	ds := blobs(t, img)
	dgst, _ := img.Digest()

	for round, wantCached := range []bool{false, true} {
		var evs events
		res, err := n.pf.Pull(t.Context(), ref, prefetch.Platforms{}, evs.add)
		if err != nil {
			t.Fatalf("Pull #%d: %v", round+1, err)
		}
		want := prefetch.Result{Image: ref.Name(), Digest: dgst.String(), Manifests: 1, Blobs: len(ds), Bytes: size(ds)}
		if wantCached {
			want.Cached = len(ds)
		}
		got := res
		got.Duration = 0
		if got != want {
			t.Fatalf("Pull #%d = %+v, want %+v", round+1, got, want)
		}
		if res.Duration <= 0 {
			t.Errorf("Pull #%d: duration %s", round+1, res.Duration)
		}
		checkStored(t, n.store, ds, true)
		evs.check(t, res, ds, wantCached)
	}
	// The manifest is in the store too, for the mirror to serve.
	if info, err := n.store.Stat(t.Context(), dgst); err != nil || !info.Complete {
		t.Fatalf("manifest %s: %+v, %v", dgst, info, err)
	}
}

func TestPullByDigestWithoutProgress(t *testing.T) {
	o := newOrigin(t)
	ref, img := o.pushImage(t, "team/app:v1")
	dgst, _ := img.Digest()
	byDigest := ref.Context().Digest(dgst.String())
	n := newNode(t)
	res, err := n.pf.Pull(t.Context(), byDigest, prefetch.Platforms{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != dgst.String() || res.Image != byDigest.Name() || res.Blobs != 4 {
		t.Fatalf("Pull by digest = %+v", res)
	}
	checkStored(t, n.store, blobs(t, img), true)
}

func TestPullUnknownTag(t *testing.T) {
	o := newOrigin(t)
	o.pushImage(t, "team/app:v1")
	n := newNode(t)
	_, err := n.pf.Pull(t.Context(), o.ref(t, "team/app:nope"), prefetch.Platforms{}, nil)
	if !errors.Is(err, puller.ErrNotFound) {
		t.Fatalf("Pull of a missing tag = %v, want ErrNotFound", err)
	}
}

func TestPullIndexPlatforms(t *testing.T) {
	self := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	v6 := v1.Platform{OS: "testos", Architecture: "arm", Variant: "v6"}
	v7 := v1.Platform{OS: "testos", Architecture: "arm", Variant: "v7"}
	riscv := v1.Platform{OS: "testos", Architecture: "riscv64"}
	attestation := v1.Platform{OS: "unknown", Architecture: "unknown"}
	all := []v1.Platform{self, v6, v7, riscv, attestation}

	o := newOrigin(t)
	ref, idx, imgs := o.pushIndex(t, "team/multi:v1", all)
	idxDigest, _ := idx.Digest()

	tests := []struct {
		name    string
		plat    prefetch.Platforms
		want    []v1.Platform
		wantErr error
	}{
		{name: "default is the node's platform", want: []v1.Platform{self}},
		{name: "one platform with variant", plat: prefetch.Platforms{Only: []string{"testos/arm/v7"}}, want: []v1.Platform{v7}},
		{name: "no variant matches every variant", plat: prefetch.Platforms{Only: []string{"testos/arm"}}, want: []v1.Platform{v6, v7}},
		{name: "several", plat: prefetch.Platforms{Only: []string{self.String(), "testos/riscv64"}}, want: []v1.Platform{self, riscv}},
		{name: "all", plat: prefetch.Platforms{All: true}, want: all},
		{name: "unknown platform", plat: prefetch.Platforms{Only: []string{"plan9/mips"}}, wantErr: puller.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			var evs events
			res, err := n.pf.Pull(t.Context(), ref, tt.plat, evs.add)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Pull = %+v, %v; want an error wrapping %v", res, err, tt.wantErr)
				}
				for _, img := range imgs {
					checkStored(t, n.store, blobs(t, img), false)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []v1.Descriptor
			for _, p := range tt.want {
				want = append(want, blobs(t, imgs[p.String()])...)
			}
			if res.Digest != idxDigest.String() || res.Manifests != len(tt.want) || res.Blobs != len(want) || res.Bytes != size(want) || res.Cached != 0 {
				t.Fatalf("Pull = %+v; want %d manifests, %d blobs, %d bytes", res, len(tt.want), len(want), size(want))
			}
			checkStored(t, n.store, want, true)
			for p, img := range imgs {
				if !slices.ContainsFunc(tt.want, func(w v1.Platform) bool { return w.String() == p }) {
					checkStored(t, n.store, blobs(t, img), false)
				}
			}
			evs.check(t, res, want, false)
		})
	}
}
