package mirror_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/puller/store/storetest"
)

// BenchmarkTailRangeOfAbsentBlob compares, in one run, the time to answer
// "Range: bytes=-51" (how the stargz snapshotter starts on an eStargz layer:
// its footer) for a 64 MiB blob the node does not have, over an origin link
// paced at 100 MiB/s: with lazy loading (the chunk holding the range is
// fetched first) and sequentially (the blob streams from its start, as
// before). It reports both times, their ratio and the origin bytes each
// read cost.
//
//	go test -run '^$' -bench BenchmarkTailRangeOfAbsentBlob -benchtime 5x ./puller/mirror
func BenchmarkTailRangeOfAbsentBlob(b *testing.B) {
	const size = 64 << 20
	const linkRate = 100 << 20 // bytes per second
	o := newOrigin(b)
	o.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		cw := &countingWriter{ResponseWriter: &pacedWriter{ResponseWriter: w, rate: linkRate, start: time.Now()}}
		next.ServeHTTP(cw, r)
		o.mu.Lock()
		o.blobGET[r.URL.Path] += cw.n
		o.mu.Unlock()
		return true
	})
	data, dgst := storetest.Random(99, size)
	repo, err := name.NewRepository(o.host + "/bench/lazy")
	if err != nil {
		b.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(data, types.OCILayer)); err != nil {
		b.Fatal(err)
	}
	path := "/v2/bench/lazy/blobs/" + dgst.String() + "?ns=" + o.host

	tail := func(sequential bool) (time.Duration, int64) {
		n := newNode(b, nodeOptions{sequential: sequential})
		before := o.blobBytes()
		req, err := http.NewRequest(http.MethodGet, n.url+path, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Range", "bytes=-51")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		// Stop this node's fetch (the lazy one fills in behind) before
		// the next run shares the link.
		n.fetcher.Close()
		if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[size-51:]) {
			b.Fatalf("sequential %v: %s, %v", sequential, resp.Status, err)
		}
		return took, o.blobBytes() - before
	}
	var lazy, seq time.Duration
	var lazyBytes, seqBytes int64
	for b.Loop() {
		d, n := tail(false)
		lazy, lazyBytes = lazy+d, lazyBytes+n
		d, n = tail(true)
		seq, seqBytes = seq+d, seqBytes+n
	}
	runs := float64(b.N)
	b.ReportMetric(lazy.Seconds()*1000/runs, "lazy-ms")
	b.ReportMetric(seq.Seconds()*1000/runs, "sequential-ms")
	b.ReportMetric(seq.Seconds()/lazy.Seconds(), "sequential/lazy")
	b.ReportMetric(float64(lazyBytes)/runs/(1<<20), "lazy-origin-MiB")
	b.ReportMetric(float64(seqBytes)/runs/(1<<20), "sequential-origin-MiB")
}

// pacedWriter paces what it writes to rate bytes per second since start, as
// a link of that bandwidth would.
type pacedWriter struct {
	http.ResponseWriter
	rate  int64
	start time.Time
	sent  int64
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		piece := b[:min(len(b), 64<<10)]
		n, err := p.ResponseWriter.Write(piece)
		written += n
		p.sent += int64(n)
		if err != nil {
			return written, err
		}
		b = b[n:]
		if due := p.start.Add(time.Duration(float64(p.sent) / float64(p.rate) * float64(time.Second))); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
	}
	return written, nil
}
