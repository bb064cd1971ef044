package mirror_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller/catalog"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/mirror"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// origin is an in-process registry behind a handler that tests can wrap to
// count, tamper with or break what the mirror receives.
type origin struct {
	srv  *httptest.Server
	host string

	mu      sync.Mutex
	blobGET map[string]int64 // bytes sent per blob path
	ranges  []string         // Range headers of blob requests
	wrap    func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
}

func newOrigin(t testing.TB) *origin {
	t.Helper()
	o := &origin{blobGET: map[string]int64{}}
	reg := registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0)))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		wrap := o.wrap
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			o.ranges = append(o.ranges, r.Header.Get("Range"))
		}
		o.mu.Unlock()
		if wrap != nil && wrap(w, r, reg) {
			return
		}
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			cw := &countingWriter{ResponseWriter: w}
			reg.ServeHTTP(cw, r)
			o.mu.Lock()
			o.blobGET[r.URL.Path] += cw.n
			o.mu.Unlock()
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.srv.Close)
	o.host = strings.TrimPrefix(o.srv.URL, "http://")
	return o
}

func (o *origin) setWrap(f func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	o.mu.Lock()
	o.wrap = f
	o.mu.Unlock()
}

func (o *origin) blobBytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var n int64
	for _, b := range o.blobGET {
		n += b
	}
	return n
}

// push writes a random image of layers layers of size bytes each as repo:tag.
func (o *origin) push(t *testing.T, repoTag string, size int64, layers int) (name.Reference, v1.Image) {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(o.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref, img
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// node is a mirror wired to real parts: store on disk, upstream client,
// catalog and fetcher, as cmd/thaw wires them.
type node struct {
	dir     string
	url     string
	store   *store.Store
	fetcher *fetch.Fetcher
	reg     *prometheus.Registry
	metrics *metrics.Puller
}

type nodeOptions struct {
	dir       string
	quota     int64
	resolver  catalog.ResolverConfig
	fetch     fetch.Config
	timeout   time.Duration
	defaultNS string
	// sequential hides the fetcher's OpenLazy from the mirror: every blob
	// request streams the blob from its start, as before lazy loading.
	sequential bool
}

// sequentialBlobs is a fetcher without OpenLazy.
type sequentialBlobs struct{ mirror.Blobs }

func newNode(t testing.TB, o nodeOptions) *node {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	if o.resolver == (catalog.ResolverConfig{}) {
		o.resolver = catalog.DefaultResolverConfig()
	}
	if o.fetch.IdleTimeout == 0 {
		o.fetch = fetch.DefaultConfig()
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("THAW_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st, err := store.New(o.dir+"/store", store.WithQuota(o.quota), store.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(o.dir + "/catalog.json")
	if err != nil {
		t.Fatal(err)
	}
	up, err := upstream.New(upstream.DefaultConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.NewPuller(reg)
	res, err := catalog.NewResolver(o.resolver, cat, up, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fetch.New(o.fetch, st, up, up, m, log)
	if err != nil {
		t.Fatal(err)
	}
	mcfg := mirror.DefaultConfig()
	if o.timeout > 0 {
		mcfg.Timeout = o.timeout
	}
	if o.defaultNS != "" {
		mcfg.DefaultRegistry = o.defaultNS
	}
	var blobs mirror.Blobs = f
	if o.sequential {
		blobs = sequentialBlobs{f}
	}
	mir, err := mirror.New(mcfg, res, blobs, m, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mir)
	n := &node{dir: o.dir, url: srv.URL, store: st, fetcher: f, reg: reg, metrics: m}
	t.Cleanup(func() {
		srv.Close()
		f.Close()
		up.Close()
	})
	return n
}

// get performs a request against the mirror, the way containerd would: the
// upstream registry named by ?ns=.
func (n *node) do(t *testing.T, method, path, ns string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	url := n.url + path
	if ns != "" {
		url += "?ns=" + neturl.QueryEscape(ns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		// A broken body is a result some tests look for.
		return resp, nil
	}
	return resp, body
}

func blobPath(ref name.Reference, d v1.Hash) string {
	return "/v2/" + ref.Context().RepositoryStr() + "/blobs/" + d.String()
}

func manifestPath(ref name.Reference, id string) string {
	return "/v2/" + ref.Context().RepositoryStr() + "/manifests/" + id
}

func layerBytes(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
