package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/thaw-dev/thaw/p2p/certs"
	"github.com/thaw-dev/thaw/puller/api"
)

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

type clusterNode struct {
	dir, peer, metrics string
}

// startClusterNode runs a daemon with cluster certificates from tlsDir.
func startClusterNode(t *testing.T, name, tlsDir string, join string) clusterNode {
	n := clusterNode{dir: t.TempDir(), peer: "127.0.0.1:" + freePort(t), metrics: "127.0.0.1:" + freePort(t)}
	args := []string{"--node-id", name, "--tls-dir", tlsDir, "--advertise-addr", "127.0.0.1",
		"--peer-addr", n.peer, "--raft-addr", "127.0.0.1:" + freePort(t), "--metrics-addr", n.metrics,
		// Under -race on two busy cores a Raft commit can take seconds; the
		// test is about the swarm, not about falling back on a slow leader.
		"--cluster-timeout", "20s"}
	if join != "" {
		args = append(args, "--join", join)
	}
	startDaemon(t, n.dir, args...)
	return n
}

// countingRegistry serves an in-process registry and counts blob bytes.
// A byte is counted before it is written, so a client that has read a blob
// never sees a count without it.
func countingRegistry(t *testing.T) (string, func() int64) {
	reg := registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0)))
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			w = &countingWriter{ResponseWriter: w, n: &sent}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), sent.Load
}

// countingWriter adds the bytes of each write to n before it writes them.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	k, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(k - len(b)))
	return k, err
}

// TestClusterBurstOneOriginCopy: three daemons with cluster certificates
// form a cluster (one bootstraps, two join), prefetch one image at the same
// moment, and the registry sends each blob once. A fourth daemon with a
// certificate of another CA can neither join nor take pieces: it pulls from
// the registry alone.
func TestClusterBurstOneOriginCopy(t *testing.T) {
	ca, other := t.TempDir(), t.TempDir()
	for _, dir := range []string{ca, other} {
		if err := certs.InitCA(dir); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(caDir, name string) string {
		out := t.TempDir()
		if err := certs.Issue(caDir, out, name, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	n0 := startClusterNode(t, "n0", issue(ca, "n0"), "")
	n1 := startClusterNode(t, "n1", issue(ca, "n1"), n0.peer)
	n2 := startClusterNode(t, "n2", issue(ca, "n2"), n0.peer)
	nodes := []clusterNode{n0, n1, n2}
	waitMembers(t, n0.dir, 3)
	st, err := thaw(t.Context(), "status", "--data-dir", n1.dir)
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "status", st, "cluster:   node n1, leader n0, 3 members")

	host, originBytes := countingRegistry(t)
	img, err := random.Image(4<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/burst/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	var size int64
	layers, _ := img.Layers()
	for _, l := range layers {
		s, _ := l.Size()
		size += s
	}
	cfg, _ := img.RawConfigFile()
	size += int64(len(cfg))

	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = thaw(t.Context(), "prefetch", "--data-dir", n.dir, "--wait", ref.Name())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("prefetch on n%d: %v", i, err)
		}
	}
	if got := originBytes(); got != size {
		t.Fatalf("the registry sent %d blob bytes for %d bytes of blobs to 3 nodes", got, size)
	}
	var peer float64
	for _, n := range nodes {
		peer += metricValue(t, n.metrics, `thaw_fetched_bytes_total{source="peer"}`)
	}
	if peer < float64(2*size) {
		t.Fatalf("peers moved %v bytes, want at least %d", peer, 2*size)
	}

	// An outsider: right registry, wrong CA.
	before := originBytes()
	out := startClusterNode(t, "intruder", issue(other, "intruder"), n0.peer)
	if _, err := thaw(t.Context(), "prefetch", "--data-dir", out.dir, "--wait", ref.Name()); err != nil {
		t.Fatalf("the outsider could not pull from the registry alone: %v", err)
	}
	if got := metricValue(t, out.metrics, `thaw_fetched_bytes_total{source="peer"}`); got != 0 {
		t.Fatalf("a node with a foreign certificate got %v bytes from peers", got)
	}
	if got := originBytes() - before; got != size {
		t.Fatalf("the outsider took %d bytes from the registry, want %d", got, size)
	}
	var p peersAnswer
	s, err := thaw(t.Context(), "peers", "--data-dir", n0.dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Members {
		if m.ID == "intruder" {
			t.Fatal("the node with a foreign certificate joined the cluster")
		}
	}

	// `thaw peers remove` reaches the leader, which refuses a live node.
	if _, err := thaw(t.Context(), "peers", "remove", "n1", "--data-dir", n0.dir); err == nil || !strings.Contains(err.Error(), "alive") {
		t.Fatalf("thaw peers remove of a live node: %v, want a refusal saying it is alive", err)
	}
	waitMembers(t, n0.dir, 3)
}

// waitMembers polls `thaw peers` until n members are listed.
func waitMembers(t *testing.T, dir string, n int) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := thaw(t.Context(), "peers", "--data-dir", dir, "--json")
		var p peersAnswer
		if err == nil && json.Unmarshal([]byte(s), &p) == nil && len(p.Members) == n && p.Leader != "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster did not reach %d members: %s %v", n, s, err)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// metricValue reads one sample from a daemon's /metrics (0 if absent).
func metricValue(t *testing.T, addr, series string) float64 {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestPrefetchOnNodes: `thaw prefetch --nodes` on one node of a cluster
// brings an image to the nodes named, pinned, through jobs in the cluster's
// replicated state; `thaw jobs` lists them done; a name that is not a
// member is refused; `thaw hint` is recorded and a bad one refused.
func TestPrefetchOnNodes(t *testing.T) {
	ca := t.TempDir()
	if err := certs.InitCA(ca); err != nil {
		t.Fatal(err)
	}
	issue := func(name string) string {
		out := t.TempDir()
		if err := certs.Issue(ca, out, name, []string{"127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	n0 := startClusterNode(t, "n0", issue("n0"), "")
	n1 := startClusterNode(t, "n1", issue("n1"), n0.peer)
	n2 := startClusterNode(t, "n2", issue("n2"), n0.peer)
	waitMembers(t, n0.dir, 3)
	ref, img := pushImage(t)
	digests := map[string]bool{}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		digests[d.String()] = true
	}

	if _, err := thaw(t.Context(), "prefetch", "--data-dir", n1.dir, "--nodes", "n0,ghost", ref.Name()); err == nil || !strings.Contains(err.Error(), `"ghost" is not a live member`) {
		t.Errorf("prefetch on an unknown node: %v", err)
	}
	out, err := thaw(t.Context(), "prefetch", "--data-dir", n1.dir, "--nodes", "n0,n2", "--pin-for", "1h", "--wait", ref.Name())
	if err != nil {
		t.Fatalf("prefetch --nodes: %v\n%s", err, out)
	}
	mustContain(t, "prefetch --nodes", out, "job for n0", "job for n2", "done")
	for _, n := range []clusterNode{n0, n2} {
		var blobs []api.Blob
		if err := api.NewClient(filepath.Join(n.dir, "thaw.sock")).Get(t.Context(), "/api/v1/blobs", &blobs); err != nil {
			t.Fatal(err)
		}
		pinned := 0
		for _, b := range blobs {
			if digests[b.Digest] && b.Complete && b.Pinned {
				pinned++
			}
		}
		if pinned != len(digests) {
			t.Errorf("%s holds %d of the image's %d layers complete and pinned: %+v", n.dir, pinned, len(digests), blobs)
		}
	}
	// Another node's view may lag a commit briefly: poll.
	var jobs string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		jobs, err = thaw(t.Context(), "jobs", "--data-dir", n0.dir, "--node", "n2")
		if err == nil && strings.Contains(jobs, "done") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "jobs", jobs, "n2", "manual", "done")
	if strings.Contains(jobs, "n0 ") {
		t.Errorf("jobs --node n2 lists another node's job:\n%s", jobs)
	}

	out, err = thaw(t.Context(), "hint", "--data-dir", n2.dir, "--rate", "120", "resize", ref.Name())
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, "hint", out, "hint recorded: resize", "at 120/min")
	if _, err := thaw(t.Context(), "hint", "--data-dir", n2.dir, "--at", "2020-01-01T00:00:00Z", "resize", ref.Name()); err == nil || !strings.Contains(err.Error(), "over already") {
		t.Errorf("a hint in the past: %v", err)
	}
}
