package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller/api"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/prefetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// origin is an in-process registry with one image pushed.
type origin struct {
	host string
	ref  name.Reference
	img  v1.Image
}

func newOrigin(t *testing.T) *origin {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0))))
	t.Cleanup(srv.Close)
	o := &origin{host: strings.TrimPrefix(srv.URL, "http://")}
	img, err := random.Image(32<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(o.host + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	o.ref, o.img = ref, img
	if err := remote.Write(o.ref, img); err != nil {
		t.Fatal(err)
	}
	return o
}

// blobs are the image's config and layers.
func (o *origin) blobs(t *testing.T) []v1.Descriptor {
	t.Helper()
	m, err := o.img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return append([]v1.Descriptor{m.Config}, m.Layers...)
}

// fakeImporter records the imports asked of it.
type fakeImporter struct {
	err error

	mu    sync.Mutex
	calls []importCall
}

type importCall struct {
	address, namespace, snapshotter, ref string
	plat                                 prefetch.Platforms
}

func (f *fakeImporter) Import(_ context.Context, address, namespace, snapshotter string, ref name.Reference, plat prefetch.Platforms) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, importCall{address, namespace, snapshotter, ref.Name(), plat})
	return f.err
}

type daemon struct {
	store   *store.Store
	catalog *catalog.Catalog
	server  *api.Server
	client  *api.Client
	url     string
}

type daemonOptions struct {
	importer api.Importer
	quota    int64
	unix     bool
}

// newDaemon serves the API over real parts, like cmd/thaw, on loopback TCP
// or a unix socket.
func newDaemon(t *testing.T, o daemonOptions) *daemon {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	st, err := store.New(filepath.Join(dir, "store"), store.WithQuota(o.quota))
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
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{store: st, catalog: cat}
	d.server = api.NewServer(api.Deps{
		Store:      st,
		Catalog:    cat,
		Prefetcher: prefetch.New(res, f, st.Stat, 2),
		Importer:   o.importer,
		Status:     api.Status{Version: "test", DataDir: dir, MirrorAddr: "127.0.0.1:5050"},
		Log:        log,
		Ctx:        ctx,
	})
	var srv *httptest.Server
	if o.unix {
		sock := filepath.Join(dir, "api.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: d.server}}
		srv.Start()
		d.client = api.NewClient(sock)
	} else {
		srv = httptest.NewServer(d.server)
		d.client = api.NewClient(strings.TrimPrefix(srv.URL, "http://"))
	}
	d.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		cancel()
		d.server.Wait()
		f.Close()
		up.Close()
	})
	return d
}

// post sends a raw body to the API and returns the status and decoded error.
func (d *daemon) post(t *testing.T, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(d.url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s answered %s with a body that is not a JSON error: %q", path, resp.Status, b)
		}
	}
	return resp.StatusCode, e.Error
}

// waitJob polls the status until job id is no longer running.
func (d *daemon) waitJob(t *testing.T, id string) api.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := d.client.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range st.Jobs {
			if j.ID == id && j.State != "running" {
				return j
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still running after 30s: %+v", id, st.Jobs)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func TestStatusImagesBlobsPrefetchWait(t *testing.T) {
	o := newOrigin(t)
	d := newDaemon(t, daemonOptions{quota: 1 << 30})
	ctx := t.Context()

	st, err := d.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "test" || st.MirrorAddr != "127.0.0.1:5050" || st.QuotaBytes != 1<<30 || st.StoreBytes != 0 ||
		st.Blobs != 0 || st.Partial != 0 || st.Images != 0 || len(st.Jobs) != 0 {
		t.Fatalf("status of a new daemon = %+v", st)
	}
	if imgs, err := d.client.Images(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("Images of a new daemon = %v, %v", imgs, err)
	}

	var msgs []api.PrefetchMessage
	job, err := d.client.Prefetch(ctx, api.PrefetchRequest{Images: []string{o.ref.String()}, Wait: true}, func(m api.PrefetchMessage) { msgs = append(msgs, m) })
	if err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	if job.State != "done" || !slices.Equal(job.Images, []string{o.ref.String()}) {
		t.Fatalf("Prefetch = %+v", job)
	}
	want := o.blobs(t)
	var results, events int
	var lastEvent prefetch.Event
	for _, m := range msgs {
		switch {
		case m.Result != nil:
			results++
			if m.Result.Blobs != len(want) || m.Result.Image != o.ref.Name() {
				t.Errorf("result %+v, want %d blobs of %s", m.Result, len(want), o.ref.Name())
			}
		case m.Event != nil:
			events++
			lastEvent = *m.Event
		case m.Error != "":
			t.Errorf("error message in a successful job: %s", m.Error)
		}
	}
	if results != 1 || events < len(want)+1 || !lastEvent.Done || lastEvent.Bytes != lastEvent.Total {
		t.Fatalf("%d results, %d events (last %+v); want 1 result and a final done event", results, events, lastEvent)
	}

	imgs, err := d.client.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dgst, _ := o.img.Digest()
	if len(imgs) != 1 || imgs[0].Ref != o.ref.Name() || imgs[0].Digest != dgst.String() || imgs[0].ResolvedAt.IsZero() {
		t.Fatalf("Images after prefetch = %+v, want %s at %s", imgs, o.ref.Name(), dgst)
	}

	blobs, err := d.client.Blobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]api.Blob{}
	for _, b := range blobs {
		got[b.Digest] = b
	}
	for _, w := range append(want, v1.Descriptor{Digest: dgst}) { // and the manifest
		b, ok := got[w.Digest.String()]
		if !ok || !b.Complete || b.Present != b.Size || b.LastUsed.IsZero() {
			t.Errorf("blob %s: %+v, listed %v; want complete", w.Digest, b, ok)
		}
	}
	if len(blobs) != len(want)+1 {
		t.Errorf("%d blobs listed, want %d", len(blobs), len(want)+1)
	}

	st, err = d.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	used, _ := d.store.Usage()
	if st.Blobs != len(want)+1 || st.Images != 1 || st.StoreBytes != used || used == 0 {
		t.Fatalf("status after prefetch = %+v (store uses %d)", st, used)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].State != "done" || len(st.Jobs[0].Results) != 1 || st.Jobs[0].Finished.IsZero() {
		t.Fatalf("jobs after prefetch = %+v", st.Jobs)
	}
}

func TestPrefetchBackground(t *testing.T) {
	o := newOrigin(t)
	d := newDaemon(t, daemonOptions{})
	job, err := d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{o.ref.String()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if job.ID == "" || job.State != "running" || job.Started.IsZero() {
		t.Fatalf("queued job = %+v", job)
	}
	done := d.waitJob(t, job.ID)
	if done.State != "done" || done.Error != "" || len(done.Results) != 1 || done.Results[0].Blobs != len(o.blobs(t)) {
		t.Fatalf("finished job = %+v", done)
	}
	for _, b := range o.blobs(t) {
		if info, err := d.store.Stat(t.Context(), b.Digest); err != nil || !info.Complete {
			t.Errorf("blob %s after the background job: %+v, %v", b.Digest, info, err)
		}
	}

	// A failing background job reports its error in the status.
	job, err = d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{o.host + "/team/app:missing"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	failed := d.waitJob(t, job.ID)
	if failed.State != "failed" || !strings.Contains(failed.Error, "not found") {
		t.Fatalf("job of a missing tag = %+v, want failed with not found", failed)
	}
}

func TestPrefetchWaitFailure(t *testing.T) {
	o := newOrigin(t)
	d := newDaemon(t, daemonOptions{})
	missing := o.host + "/team/app:missing"
	_, err := d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{missing}, Wait: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("waited prefetch of a missing tag = %v, want a not found error", err)
	}
	st, err := d.client.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].State != "failed" || st.Jobs[0].Error == "" {
		t.Fatalf("jobs = %+v, want one failed", st.Jobs)
	}
}

func TestBadRequests(t *testing.T) {
	d := newDaemon(t, daemonOptions{})
	tests := []struct {
		name       string
		path, body string
		wantStatus int
		wantError  string
	}{
		{"bad json", "/api/v1/prefetch", `{"images": [`, http.StatusBadRequest, "request body"},
		{"unknown field", "/api/v1/prefetch", `{"images": ["a/b:c"], "imagez": []}`, http.StatusBadRequest, `unknown field "imagez"`},
		{"wrong type", "/api/v1/prefetch", `{"images": "a/b:c"}`, http.StatusBadRequest, "request body"},
		{"no images", "/api/v1/prefetch", `{}`, http.StatusBadRequest, "no image given"},
		{"empty body", "/api/v1/prefetch", ``, http.StatusBadRequest, "no image given"},
		{"bad reference", "/api/v1/prefetch", `{"images": ["Not A Ref!"]}`, http.StatusBadRequest, "not a valid reference"},
		{"platform without arch", "/api/v1/prefetch", `{"images": ["a/b:c"], "platforms": ["linux"]}`, http.StatusBadRequest, `platform "linux"`},
		{"platform with empty os", "/api/v1/prefetch", `{"images": ["a/b:c"], "platforms": ["/amd64"]}`, http.StatusBadRequest, "want os/arch[/variant]"},
		{"platform too long", "/api/v1/prefetch", `{"images": ["a/b:c"], "platforms": ["linux/arm/v7/x"]}`, http.StatusBadRequest, "want os/arch[/variant]"},
		{"containerd without importer", "/api/v1/prefetch", `{"images": ["a/b:c"], "containerd": "/run/containerd/containerd.sock"}`, http.StatusNotImplemented, "cannot import into containerd"},
		{"gc negative target", "/api/v1/gc", `{"target": -1}`, http.StatusBadRequest, "must be >= 0"},
		{"gc unknown field", "/api/v1/gc", `{"targt": 5}`, http.StatusBadRequest, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := d.post(t, tt.path, tt.body)
			if status != tt.wantStatus || !strings.Contains(msg, tt.wantError) {
				t.Fatalf("POST %s %s = %d %q, want %d with %q", tt.path, tt.body, status, msg, tt.wantStatus, tt.wantError)
			}
		})
	}
	// None of them started a job.
	st, err := d.client.Status(t.Context())
	if err != nil || len(st.Jobs) != 0 {
		t.Fatalf("jobs after bad requests = %+v, %v", st.Jobs, err)
	}
	// The client surfaces the daemon's message.
	_, err = d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{"a/b:c"}, Platforms: []string{"linux"}}, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "daemon: ") || !strings.Contains(err.Error(), `platform "linux"`) {
		t.Fatalf("client error = %v, want the daemon's message", err)
	}
	// Methods are enforced.
	resp, err := http.Get(d.url + "/api/v1/gc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /api/v1/gc = %s", resp.Status)
	}
}

func TestPrefetchImportsIntoContainerd(t *testing.T) {
	o := newOrigin(t)
	imp := &fakeImporter{}
	d := newDaemon(t, daemonOptions{importer: imp})
	req := api.PrefetchRequest{Images: []string{o.ref.String()}, Containerd: "/run/containerd/containerd.sock", Snapshotter: "overlayfs", Wait: true}
	var imported []string
	if _, err := d.client.Prefetch(t.Context(), req, func(m api.PrefetchMessage) {
		if m.Imported != "" {
			imported = append(imported, m.Imported)
		}
	}); err != nil {
		t.Fatal(err)
	}
	want := importCall{address: req.Containerd, namespace: "k8s.io", snapshotter: "overlayfs", ref: o.ref.Name()}
	if len(imp.calls) != 1 || imp.calls[0].address != want.address || imp.calls[0].namespace != want.namespace ||
		imp.calls[0].snapshotter != want.snapshotter || imp.calls[0].ref != want.ref || imp.calls[0].plat.All || len(imp.calls[0].plat.Only) != 0 {
		t.Fatalf("imports = %+v, want one %+v", imp.calls, want)
	}
	if !slices.Equal(imported, []string{o.ref.Name()}) {
		t.Fatalf("imported messages %v", imported)
	}

	// Namespace and platforms are passed on; an import error fails the job.
	imp.err = errors.New("containerd says no")
	req.Namespace, req.Platforms, req.Snapshotter = "default", []string{"linux/amd64"}, ""
	_, err := d.client.Prefetch(t.Context(), req, nil)
	if err == nil || !strings.Contains(err.Error(), "import "+o.ref.Name()+" into containerd") || !strings.Contains(err.Error(), "containerd says no") {
		t.Fatalf("Prefetch with a failing import = %v", err)
	}
	if last := imp.calls[len(imp.calls)-1]; last.namespace != "default" || !slices.Equal(last.plat.Only, []string{"linux/amd64"}) {
		t.Fatalf("second import = %+v", last)
	}
}

func TestGC(t *testing.T) {
	o := newOrigin(t)
	d := newDaemon(t, daemonOptions{})
	if _, err := d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{o.ref.String()}, Wait: true}, nil); err != nil {
		t.Fatal(err)
	}
	stored, err := d.client.Blobs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	used, _ := d.store.Usage()

	// A target above the usage removes nothing.
	high := used + 1
	res, err := d.client.GC(t.Context(), api.GCRequest{Target: &high})
	if err != nil || res.Removed == nil || len(res.Removed) != 0 || res.StoreBytes != used {
		t.Fatalf("GC(target %d) = %+v, %v; want nothing removed", high, res, err)
	}

	// An open blob is in use and stays.
	keep := stored[0].Digest
	b, err := d.store.Open(t.Context(), v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(keep, "sha256:")})
	if err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	res, err = d.client.GC(t.Context(), api.GCRequest{Target: &zero})
	if err != nil {
		t.Fatal(err)
	}
	var freed int64
	var removed []string
	for _, r := range res.Removed {
		removed = append(removed, r.Digest)
		freed += r.Size
	}
	if len(res.Removed) != len(stored)-1 || slices.Contains(removed, keep) || res.StoreBytes != used-freed || res.StoreBytes != stored[0].Size {
		t.Fatalf("GC(target 0) removed %v (store now %d); want all but the open %s", removed, res.StoreBytes, keep)
	}
	b.Close()
	left, err := d.client.Blobs(t.Context())
	if err != nil || len(left) != 1 || left[0].Digest != keep {
		t.Fatalf("blobs after GC = %+v, %v; want only %s", left, err, keep)
	}

	// Without a target and without a quota, everything evictable goes.
	res, err = d.client.GC(t.Context(), api.GCRequest{})
	if err != nil || len(res.Removed) != 1 || res.Removed[0].Digest != keep || res.StoreBytes != 0 {
		t.Fatalf("GC() = %+v, %v; want %s removed and an empty store", res, err, keep)
	}
}

func TestGCDefaultTargetIsNinetyPercentOfQuota(t *testing.T) {
	d := newDaemon(t, daemonOptions{quota: 10_000})
	put := func(i int) {
		data := bytes.Repeat([]byte{byte(i)}, 1000)
		ing, err := d.store.Ingest(t.Context(), digestOf(data), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ing.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := ing.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		put(i)
	}
	// 5000 bytes used, the default target is 9000: nothing to do.
	res, err := d.client.GC(t.Context(), api.GCRequest{})
	if err != nil || len(res.Removed) != 0 || res.StoreBytes != 5000 {
		t.Fatalf("GC() at 50%% of the quota = %+v, %v; want nothing removed", res, err)
	}
	for i := 5; i < 10; i++ {
		put(i)
	}
	// At the quota, GC brings the store down to 90% of it.
	res, err = d.client.GC(t.Context(), api.GCRequest{})
	if err != nil || len(res.Removed) != 1 || res.StoreBytes != 9000 {
		t.Fatalf("GC() at the quota = %+v, %v; want one blob removed, 9000 bytes left", res, err)
	}
}

func digestOf(b []byte) v1.Hash {
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	return h
}

func TestClientOverUnixSocket(t *testing.T) {
	o := newOrigin(t)
	d := newDaemon(t, daemonOptions{unix: true})
	st, err := d.client.Status(t.Context())
	if err != nil || st.Version != "test" {
		t.Fatalf("Status over a unix socket = %+v, %v", st, err)
	}
	var n int
	if _, err := d.client.Prefetch(t.Context(), api.PrefetchRequest{Images: []string{o.ref.String()}, Wait: true}, func(api.PrefetchMessage) { n++ }); err != nil || n == 0 {
		t.Fatalf("Prefetch over a unix socket: %v (%d messages)", err, n)
	}
	if imgs, err := d.client.Images(t.Context()); err != nil || len(imgs) != 1 {
		t.Fatalf("Images over a unix socket = %v, %v", imgs, err)
	}
}

func TestClientNoDaemon(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name  string
		addr  string
		errno syscall.Errno
	}{
		{"missing socket", filepath.Join(t.TempDir(), "thaw.sock"), syscall.ENOENT},
		{"nothing listening", closedPort, syscall.ECONNREFUSED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := api.NewClient(tt.addr).Status(t.Context())
			if !errors.Is(err, tt.errno) || !strings.Contains(err.Error(), "no thaw daemon answers at "+tt.addr) {
				t.Fatalf("Status = %v, want the no thaw daemon answers error wrapping %v", err, tt.errno)
			}
		})
	}
}
