package swarm_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"

	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/p2p"
)

// streamTap counts, per node, the stream and piece requests its server got
// and the stream bytes it sent; corrupt, if set, flips one byte of what a
// node's streams send.
type streamTap struct {
	mu      sync.Mutex
	streams map[string]int
	pulls   atomic.Int64
	bytes   atomic.Int64
}

func tapStreams(c *cluster, corrupt func(node string) bool) *streamTap {
	tap := &streamTap{streams: map[string]int{}}
	for _, n := range c.nodes {
		inner := n.swarm.Handler()
		id := string(n.id)
		n.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/stream"):
				tap.mu.Lock()
				tap.streams[id]++
				tap.mu.Unlock()
				w = &tapWriter{ResponseWriter: w, n: &tap.bytes, corrupt: corrupt != nil && corrupt(id)}
			case strings.Contains(r.URL.Path, "/pieces/"):
				tap.pulls.Add(1)
			}
			inner.ServeHTTP(w, r)
		}))
	}
	return tap
}

type tapWriter struct {
	http.ResponseWriter
	n       *atomic.Int64
	corrupt bool
	done    bool
}

func (w *tapWriter) Write(b []byte) (int, error) {
	if w.corrupt && !w.done && len(b) > 0 {
		b = append([]byte(nil), b...)
		b[0] ^= 0xff
		w.done = true
	}
	w.n.Add(int64(len(b)))
	return w.ResponseWriter.Write(b)
}

func (w *tapWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// TestBurstStreamsAlongAChain: in a burst, each downloader streams the blob
// from the node that arrived just before it, so every node feeds at most one
// other and the blob crosses each link once, with no piece pulled.
func TestBurstStreamsAlongAChain(t *testing.T) {
	o := newOrigin(t)
	// 2 s for the blob: every node starts streaming before any has it
	// whole (with two complete holders, a late node would pull instead).
	o.limit = rate.NewLimiter(2<<20, 64<<10)
	repo, d, data := o.blob(t, "chain", 4<<20)
	c := newCluster(t, 5, testConfig())
	tap := tapStreams(c, nil)
	burst(t, c, repo, d, data)
	if got := o.bytes(); got != int64(len(data)) {
		t.Fatalf("origin sent %d bytes for a %d-byte blob", got, len(data))
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	total := 0
	for node, n := range tap.streams {
		if n != 1 {
			t.Errorf("%s served %d streams, want at most 1 (a chain)", node, n)
		}
		total += n
	}
	if total != len(c.nodes)-1 {
		t.Errorf("%d streams for %d downloaders: %v", total, len(c.nodes)-1, tap.streams)
	}
	if got, want := tap.bytes.Load(), int64(len(c.nodes)-1)*int64(len(data)); got != want {
		t.Errorf("streams carried %d bytes, want %d (the blob once to each downloader)", got, want)
	}
	if n := tap.pulls.Load(); n != 0 {
		t.Errorf("%d pieces were pulled; the chain should have brought every one", n)
	}
}

// TestBadStreamIsDroppedNotBlamed: a stream that carries a bad piece is
// ended and the rest pulled; its sender is not avoided (it may only have
// passed its own source's bytes on), the blob arrives intact, and the
// origin is not asked again.
func TestBadStreamIsDroppedNotBlamed(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "badstream", 4<<20)
	c := newCluster(t, 2, testConfig())
	// node0 holds the blob whole; node1 streams it from node0, whose streams
	// flip a byte (its piece answers are sound).
	if _, err := c.nodes[0].fetcher.Ensure(t.Context(), repo, d); err != nil {
		t.Fatal(err)
	}
	tap := tapStreams(c, func(node string) bool { return node == "node0" })
	victim := c.nodes[1]
	burst(t, &cluster{coord: c.coord, nodes: c.nodes[1:]}, repo, d, data)
	if got := o.bytes(); got != int64(len(data)) {
		t.Fatalf("origin sent %d bytes for a %d-byte blob", got, len(data))
	}
	tap.mu.Lock()
	streams := tap.streams["node0"]
	tap.mu.Unlock()
	if streams != 1 {
		t.Fatalf("node0 served %d streams; the test needs node1 to stream from it", streams)
	}
	if bad := metricstest.Sum(t, victim.reg, "thaw_p2p_piece_duration_seconds", map[string]string{"result": "bad"}); bad != 1 {
		t.Errorf("%v bad pieces counted, want the one the stream carried", bad)
	}
	if avoided := metricstest.Sum(t, victim.reg, "thaw_p2p_bad_peers_total", nil); avoided != 0 {
		t.Errorf("%v peers avoided after a bad stream; its sender is not to blame", avoided)
	}
	if tap.pulls.Load() == 0 {
		t.Error("no piece was pulled after the stream was dropped")
	}
	if got := metricstest.Sum(t, victim.reg, "thaw_p2p_streams_total", map[string]string{"end": "bad"}); got != 1 {
		t.Errorf("thaw_p2p_streams_total{end=bad} = %v, want 1", got)
	}
}

// TestStreamRequests: the stream endpoint refuses a missing or negative
// start and one past the blob's end, and serves a complete blob from any
// piece.
func TestStreamRequests(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "streamreq", 1<<20)
	c := newCluster(t, 1, testConfig())
	n := c.nodes[0]
	if _, err := n.fetcher.Ensure(t.Context(), repo, d); err != nil {
		t.Fatal(err)
	}
	get := func(query string) (int, []byte) {
		resp, err := n.srv.Client().Get(n.srv.URL + "/p2p/v1/blobs/" + d.String() + "/stream" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	for q, want := range map[string]int{"": 400, "?from=-1": 400, "?from=x": 400, "?from=4": 416} {
		if code, body := get(q); code != want {
			t.Errorf("stream%s: %d %s, want %d", q, code, body, want)
		}
	}
	piece := testConfig().PieceSize
	if code, body := get("?from=1"); code != 200 || string(body) != string(data[piece:]) {
		t.Errorf("stream?from=1: %d, %d bytes; want 200 and the blob from piece 1 (%d bytes)", code, len(body), len(data)-int(piece))
	}
}

// TestSlowStreamDoesNotHoldBack: a node that streams the blob slowly (as a
// rate-limited or overloaded node ahead in the chain would) holds back only
// the pieces within the stream's lead; pulls take the rest from the other
// holder, and the download ends without waiting for the stream.
func TestSlowStreamDoesNotHoldBack(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "slowstream", 4<<20)
	cfg := testConfig()
	cfg.StreamLead = 2
	c := newCluster(t, 3, cfg)
	for _, n := range c.nodes[:2] {
		if _, err := n.fetcher.Ensure(t.Context(), repo, d); err != nil {
			t.Fatal(err)
		}
	}
	// node0 is known as a holder still downloading (as a node ahead in a
	// burst would be), so node2 streams from node1, the later holder and
	// the only complete one, at 128 KiB/s: 32 s for the blob if nothing
	// else brought it.
	n0 := c.nodes[0]
	if err := c.coord.Join(p2p.Member{ID: n0.id, PeerAddr: strings.TrimPrefix(n0.srv.URL, "https://")}).Announce(t.Context(), d, int64(len(data)), false); err != nil {
		t.Fatal(err)
	}
	var streamed atomic.Int64
	slow := rate.NewLimiter(128<<10, 64<<10)
	inner := c.nodes[1].swarm.Handler()
	c.nodes[1].setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/stream") {
			w = &slowWriter{ResponseWriter: w, lim: slow, n: &streamed}
		}
		inner.ServeHTTP(w, r)
	}))
	burst(t, &cluster{coord: c.coord, nodes: c.nodes[2:]}, repo, d, data)
	if got := streamed.Load(); got == 0 || got >= int64(len(data)) {
		t.Fatalf("the slow stream carried %d of %d bytes; want some, and pulls to bring the rest", got, len(data))
	}
	if got := peerBytes(t, c.nodes[2]); got != float64(len(data)) {
		t.Fatalf("node2 took %v bytes from peers, want %d", got, len(data))
	}
	if got := metricstest.Sum(t, c.nodes[2].reg, "thaw_p2p_streams_total", map[string]string{"end": "lagged"}); got != 1 {
		t.Errorf("thaw_p2p_streams_total{end=lagged} = %v, want 1", got)
	}
}

type slowWriter struct {
	http.ResponseWriter
	lim *rate.Limiter
	n   *atomic.Int64
}

func (w *slowWriter) Write(b []byte) (int, error) {
	var sent int
	for len(b) > 0 {
		k := min(len(b), 16<<10)
		if err := w.lim.WaitN(context.Background(), k); err != nil {
			return sent, err
		}
		m, err := w.ResponseWriter.Write(b[:k])
		sent += m
		w.n.Add(int64(m))
		if err != nil {
			return sent, err
		}
		b = b[k:]
	}
	return sent, nil
}

func (w *slowWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// TestStreamFromEarlierHolderWhenFeederDies: the node a download streams
// from dies mid-burst; the download streams the rest from the holder before
// it (here the seeder), going on with the piece it had half read, so the
// node streaming from it sees a pause and not a broken stream; nothing goes
// back to the origin.
func TestStreamFromEarlierHolderWhenFeederDies(t *testing.T) {
	o := newOrigin(t)
	o.limit = rate.NewLimiter(4<<20, 64<<10) // 2 s for the blob
	repo, d, data := o.blob(t, "refeed", 8<<20)
	c := newCluster(t, 4, testConfig())
	tap := tapStreams(c, nil)
	// Arrivals in order: node0 (the seeder), node1, node2, node3.
	var waits []func([]byte, ...*node)
	for i, n := range c.nodes {
		waits = append(waits, burstAsync(t, &cluster{coord: c.coord, nodes: []*node{n}}, repo, d))
		waitFor(t, "the node to hold the blob", func() bool {
			st, _ := c.coord.Join(p2p.Member{ID: "observer"}).Blob(t.Context(), d)
			return len(st.Holders) == i+1
		})
	}
	waitFor(t, "node3 to stream through node1 and node2", func() bool { return peerBytes(t, c.nodes[3]) > 0 })
	c.kill(c.nodes[1])
	waits[0](data, c.nodes[0])
	waits[2](data, c.nodes[2])
	waits[3](data, c.nodes[3])
	if got := o.bytes(); got != int64(len(data)) {
		t.Fatalf("origin sent %d bytes for a %d-byte blob", got, len(data))
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	if got := tap.streams["node0"]; got != 2 {
		t.Fatalf("node0 served %d streams, want 2 (node1's, then node2's once node1 died): %v", got, tap.streams)
	}
	for _, tc := range []struct {
		n    *node
		end  string
		want float64
	}{{c.nodes[2], "broke", 1}, {c.nodes[2], "done", 1}, {c.nodes[3], "broke", 0}, {c.nodes[3], "done", 1}} {
		if got := metricstest.Sum(t, tc.n.reg, "thaw_p2p_streams_total", map[string]string{"end": tc.end}); got != tc.want {
			t.Errorf("%s: thaw_p2p_streams_total{end=%s} = %v, want %v", tc.n.id, tc.end, got, tc.want)
		}
	}
}

// TestStreamWaitsForTheBlob: a stream asked of the seeder before it has
// the origin's answer (the first node of a burst's chain can be that quick)
// waits for the blob instead of failing.
func TestStreamWaitsForTheBlob(t *testing.T) {
	o := newOrigin(t)
	repo, d, data := o.blob(t, "early", 1<<20)
	c := newCluster(t, 1, testConfig())
	n := c.nodes[0]
	arrived := make(chan struct{})
	inner := n.swarm.Handler()
	n.setHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		inner.ServeHTTP(w, r)
	}))
	type answer struct {
		code int
		body []byte
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := n.srv.Client().Get(n.srv.URL + "/p2p/v1/blobs/" + d.String() + "/stream?from=0")
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, body, err}
	}()
	<-arrived // the request is at the node, which does not bring the blob in yet
	if _, err := n.fetcher.Ensure(t.Context(), repo, d); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.err != nil || a.code != http.StatusOK || !bytes.Equal(a.body, data) {
		t.Fatalf("stream asked before the blob: %d, %d bytes, %v; want 200 and the blob's %d bytes", a.code, len(a.body), a.err, len(data))
	}
}
