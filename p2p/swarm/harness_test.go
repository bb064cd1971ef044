package swarm_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"golang.org/x/time/rate"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/p2p"
	"github.com/thaw-dev/thaw/p2p/memcoord"
	"github.com/thaw-dev/thaw/p2p/swarm"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// origin is an in-process registry that counts the blob bytes it sends.
type origin struct {
	srv  *httptest.Server
	host string
	// sent counts blob bytes before they are written, so a client that has
	// read a blob never sees a count without it.
	sent atomic.Int64
	// limit, if set, slows blob bytes down (bytes per second), so that a
	// transfer is still running when a test breaks something.
	limit *rate.Limiter
}

func newOrigin(t testing.TB) *origin {
	o := &origin{}
	reg := registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0)))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			reg.ServeHTTP(&countingWriter{ResponseWriter: w, n: &o.sent, limit: o.limit}, r)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.srv.Close)
	o.host = strings.TrimPrefix(o.srv.URL, "http://")
	return o
}

func (o *origin) bytes() int64 { return o.sent.Load() }

// blob pushes size random bytes as a layer of repo and returns its digest.
func (o *origin) blob(t testing.TB, repo string, size int) (name.Repository, v1.Hash, []byte) {
	data := make([]byte, size)
	rand.Read(data)
	l := static.NewLayer(data, types.OCIUncompressedLayer)
	r, err := name.NewRepository(o.host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	return r, d, data
}

type countingWriter struct {
	http.ResponseWriter
	n     *atomic.Int64
	limit *rate.Limiter
}

func (c *countingWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), 32<<10)
		if c.limit != nil {
			c.limit.WaitN(context.Background(), k)
		}
		c.n.Add(int64(k))
		n, err := c.ResponseWriter.Write(p[:k])
		c.n.Add(int64(n - k))
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

// node is one in-process thaw node: store, swarm, fetcher, peer server.
type node struct {
	id      p2p.NodeID
	store   *store.Store
	swarm   *swarm.Swarm
	fetcher *fetch.Fetcher
	srv     *httptest.Server
	reg     *prometheus.Registry
	p2pm    *metrics.P2P
	// handler wraps the swarm's handler; tests replace it to inject faults.
	mu      sync.Mutex
	handler http.Handler
}

func (n *node) setHandler(h http.Handler) {
	n.mu.Lock()
	n.handler = h
	n.mu.Unlock()
}

type cluster struct {
	coord *memcoord.Cluster
	nodes []*node
}

// newCluster starts n nodes sharing one in-memory coordinator. The peer
// servers use httptest's TLS certificate, which every node's client trusts.
func newCluster(t testing.TB, n int, cfg swarm.Config) *cluster {
	return newClusterWith(t, n, cfg, func(c p2p.Coordinator) p2p.Coordinator { return c })
}

// newClusterWith is newCluster with every node's coordinator passed
// through wrap, to slow or break coordination calls.
func newClusterWith(t testing.TB, n int, cfg swarm.Config, wrap func(p2p.Coordinator) p2p.Coordinator) *cluster {
	c := &cluster{coord: memcoord.New()}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("THAW_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for i := range n {
		nd := &node{id: p2p.NodeID(fmt.Sprintf("node%d", i)), reg: prometheus.NewRegistry()}
		nd.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			nd.mu.Lock()
			h := nd.handler
			nd.mu.Unlock()
			h.ServeHTTP(w, r)
		}))
		nd.srv.StartTLS()
		t.Cleanup(nd.srv.Close)
		st, err := store.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		nd.store = st
		up, err := upstream.New(upstream.Config{DialTimeout: upstream.DefaultConfig().DialTimeout, ResponseHeaderTimeout: upstream.DefaultConfig().ResponseHeaderTimeout, IdleConnTimeout: upstream.DefaultConfig().IdleConnTimeout, UserAgent: "thaw-test", MaxIdleConnsPerHost: 64}, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		m := metrics.NewPuller(nd.reg)
		nd.p2pm = metrics.NewP2P(nd.reg)
		coord := wrap(c.coord.Join(p2p.Member{ID: nd.id, PeerAddr: strings.TrimPrefix(nd.srv.URL, "https://")}))
		client := nd.srv.Client()
		client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
		sw, err := swarm.New(cfg, coord, up, st, client, nd.p2pm, m.FetchedBytes, log.With("node", nd.id))
		if err != nil {
			t.Fatal(err)
		}
		nd.swarm = sw
		nd.setHandler(sw.Handler())
		fcfg := fetch.DefaultConfig()
		fcfg.SourceName, fcfg.CountBytes, fcfg.OnCommit = "cluster", false, sw.OnCommit
		f, err := fetch.New(fcfg, st, sw, up, m, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		nd.fetcher = f
		c.nodes = append(c.nodes, nd)
	}
	return c
}

// readAll reads a complete blob from a node's store.
func readAll(t testing.TB, n *node, d v1.Hash) []byte {
	b, err := n.store.Open(t.Context(), d)
	if err != nil {
		t.Fatalf("%s: %v", n.id, err)
	}
	defer b.Close()
	if !b.Complete() {
		t.Fatalf("%s: blob %s is not complete", n.id, d)
	}
	data, err := io.ReadAll(b.ReadSeeker())
	if err != nil {
		t.Fatal(err)
	}
	return data
}
