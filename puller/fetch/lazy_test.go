package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/thaw-dev/thaw/metrics/metricstest"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/store/storetest"
	"github.com/thaw-dev/thaw/puller/upstream"
)

// rangeOrigin is go-containerregistry's registry behind a handler that
// records the Range header of every blob GET and counts the body bytes it
// sends; with corruptAt >= 0 it flips that byte of the blob in every answer
// that holds it.
type rangeOrigin struct {
	srv       *httptest.Server
	repo      name.Repository
	served    atomic.Int64
	corruptAt atomic.Int64
	// failRanges answers range requests with 500; ignoreRanges answers
	// them with the whole blob, as some servers do.
	failRanges, ignoreRanges atomic.Bool

	mu     sync.Mutex
	ranges []string
}

func newRangeOrigin(t *testing.T) *rangeOrigin {
	t.Helper()
	o := &rangeOrigin{}
	o.corruptAt.Store(-1)
	reg := registry.New(registry.Logger(slog.NewLogLogger(slog.DiscardHandler, 0)))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/sha256:") {
			reg.ServeHTTP(w, r)
			return
		}
		o.mu.Lock()
		o.ranges = append(o.ranges, r.Header.Get("Range"))
		o.mu.Unlock()
		if r.Header.Get("Range") != "" {
			switch {
			case o.failRanges.Load():
				http.Error(w, "broken", http.StatusInternalServerError)
				return
			case o.ignoreRanges.Load():
				r.Header.Del("Range")
			}
		}
		reg.ServeHTTP(&countingWriter{ResponseWriter: w, o: o, start: firstByte(r.Header.Get("Range"))}, r)
	}))
	t.Cleanup(o.srv.Close)
	repo, err := name.NewRepository(strings.TrimPrefix(o.srv.URL, "http://") + "/team/lazy")
	if err != nil {
		t.Fatal(err)
	}
	o.repo = repo
	return o
}

// firstByte is where the answer to a "bytes=a-b" request starts.
func firstByte(h string) int64 {
	a, _, _ := strings.Cut(strings.TrimPrefix(h, "bytes="), "-")
	n, _ := strconv.ParseInt(a, 10, 64)
	return n
}

type countingWriter struct {
	http.ResponseWriter
	o     *rangeOrigin
	start int64
	off   int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if bad := w.o.corruptAt.Load(); bad >= w.start+w.off && bad < w.start+w.off+int64(len(p)) {
		p = bytes.Clone(p)
		p[bad-w.start-w.off] ^= 0xff
	}
	n, err := w.ResponseWriter.Write(p)
	w.off += int64(n)
	w.o.served.Add(int64(n))
	return n, err
}

// push uploads a random blob of size bytes.
func (o *rangeOrigin) push(t *testing.T, seed uint64, size int) ([]byte, v1.Hash) {
	t.Helper()
	data, dgst := storetest.Random(seed, size)
	if err := remote.WriteLayer(o.repo, static.NewLayer(data, types.OCILayer)); err != nil {
		t.Fatal(err)
	}
	o.reset()
	return data, dgst
}

func (o *rangeOrigin) reset() {
	o.mu.Lock()
	o.ranges = nil
	o.mu.Unlock()
	o.served.Store(0)
}

func (o *rangeOrigin) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.ranges...)
}

func newUpstream(t *testing.T) *upstream.Registry {
	t.Helper()
	up, err := upstream.New(upstream.DefaultConfig(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

// slowConfig fills in the background at 64 KiB/s: a test reading a range
// sees what its read fetched, not the fill.
func slowConfig() fetch.Config {
	cfg := fetch.DefaultConfig()
	cfg.BackgroundRate = 64 << 10
	return cfg
}

const mib = 1 << 20

// TestLazyTailRead reads the last bytes of a 16 MiB blob the node does not
// have: the read completes once about that chunk came, not the whole blob;
// then a whole-blob reader lifts the background rate and the blob commits,
// each byte fetched once.
func TestLazyTailRead(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 16 * mib
	data, dgst := o.push(t, 1, size)
	e := newEnv(t, slowConfig(), nil, newUpstream(t), nil)

	b, source, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Complete() || b.Size() != size || source != "upstream" {
		t.Fatalf("OpenLazy of an absent blob: complete %v, size %d, source %q", b.Complete(), b.Size(), source)
	}
	tail := make([]byte, 51)
	if n, err := b.ReadAt(tail, size-51); n != 51 || err != nil || !bytes.Equal(tail, data[size-51:]) {
		t.Fatalf("ReadAt(tail) = %d, %v", n, err)
	}
	// The tail's chunk alone: the background fill starts with an empty
	// bucket, and gets no chunk at 64 KiB/s in the time this test takes.
	if served := o.served.Load(); served > mib {
		t.Fatalf("origin served %d bytes for a 51-byte read at the end of a %d-byte blob; want its chunk", served, size)
	}
	if !slicesContains(o.seen(), fmt.Sprintf("bytes=%d-%d", size-mib, size-1)) {
		t.Fatalf("origin saw ranges %v, want the last chunk among them", o.seen())
	}
	// A read in the middle fetches its chunks only, in parallel requests.
	mid := make([]byte, 5*mib)
	if _, err := b.ReadAt(mid, 5*mib+100); err != nil || !bytes.Equal(mid, data[5*mib+100:10*mib+100]) {
		t.Fatalf("ReadAt(middle): %v", err)
	}
	if served := o.served.Load(); served > 7*mib {
		t.Fatalf("origin served %d bytes after reading 5 MiB in the middle; want the 7 chunks read", served)
	}

	if cached, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); cached || err != nil {
		t.Fatalf("Ensure = %v, %v", cached, err)
	}
	storetest.ReadAll(t, b)
	if served := o.served.Load(); served != size {
		t.Errorf("origin served %d bytes in all for a %d-byte blob; want each byte once (ranges %v)", served, size, o.seen())
	}
	demand := metricstest.Sum(t, e.reg, "thaw_lazy_fetched_bytes_total", map[string]string{"kind": "demand"})
	background := metricstest.Sum(t, e.reg, "thaw_lazy_fetched_bytes_total", map[string]string{"kind": "background"})
	if demand != 7*mib || demand+background != size {
		t.Errorf("lazy bytes: demand %v, background %v; want 7 MiB on demand and the rest in the background", demand, background)
	}
}

func slicesContains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestLazyCorruptChunk: the origin flips a byte in the chunk a reader asked
// for. The reader gets the bytes (unverified, as a range read must), but
// the commit refuses the blob: nothing is stored and readers get
// ErrDigestMismatch from then on.
func TestLazyCorruptChunk(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 4 * mib
	_, dgst := o.push(t, 2, size)
	o.corruptAt.Store(size - 10)
	e := newEnv(t, slowConfig(), nil, newUpstream(t), nil)

	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.ReadAt(make([]byte, 100), size-100); err != nil {
		t.Fatalf("ReadAt(tail): %v", err)
	}
	if _, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); !errors.Is(err, puller.ErrDigestMismatch) {
		t.Fatalf("Ensure = %v, want ErrDigestMismatch", err)
	}
	if _, err := b.ReadAt(make([]byte, 100), size-100); !errors.Is(err, puller.ErrDigestMismatch) {
		t.Errorf("ReadAt(tail) after the refusal = %v, want ErrDigestMismatch", err)
	}
	if _, err := e.store.Stat(t.Context(), dgst); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("Stat after the refusal = %v, want ErrNotFound", err)
	}
}

// TestLazyResumeAfterRestart: ranges fetched before a restart are not asked
// for again; the origin sees requests for the gaps only.
func TestLazyResumeAfterRestart(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 8 * mib
	data, dgst := o.push(t, 3, size)
	dir := t.TempDir()
	e := newEnv(t, slowConfig(), newStore(t, dir), newUpstream(t), nil)
	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{size - 1, 3*mib + 5} {
		if _, err := b.ReadAt(make([]byte, 1), off); err != nil {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
	}
	b.Close()
	e.fetcher.Close()
	info, err := e.store.Stat(t.Context(), dgst)
	if err != nil || info.Complete {
		t.Fatalf("Stat after Close = %+v, %v; want a partial", info, err)
	}
	before := o.served.Load()

	o.reset()
	st := newStore(t, dir)
	var present []store.Range
	if b, err := st.Open(t.Context(), dgst); err == nil {
		gaps := b.Missing(0, size)
		b.Close()
		present = store.Subtract([]store.Range{{Start: 0, End: size}}, gaps)
	}
	if len(present) == 0 {
		t.Fatalf("nothing present after the restart; the fetcher had %d bytes", before)
	}
	e = newEnv(t, fetch.DefaultConfig(), st, newUpstream(t), nil)
	if _, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); err != nil {
		t.Fatal(err)
	}
	checkStored(t, e, dgst, data)
	for _, h := range o.seen() {
		var a, z int64
		if _, err := fmt.Sscanf(h, "bytes=%d-%d", &a, &z); err != nil {
			t.Fatalf("origin saw Range %q after the restart, want closed ranges of the gaps", h)
		}
		for _, p := range present {
			if a < p.End && z >= p.Start {
				t.Errorf("after the restart the origin was asked for %s, which overlaps %d-%d present before", h, p.Start, p.End-1)
			}
		}
	}
	if served := o.served.Load(); served != size-info.Present {
		t.Errorf("origin served %d bytes after the restart, want the %d missing", served, size-info.Present)
	}
}

func checkStored(t *testing.T, e *env, dgst v1.Hash, data []byte) {
	t.Helper()
	b, err := e.store.Open(t.Context(), dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !b.Complete() || !bytes.Equal(storetest.ReadAll(t, b), data) {
		t.Fatalf("stored blob: complete %v, content differs", b.Complete())
	}
}

// TestLazyConcurrentReaders: readers of random ranges, racing each other and
// a full-speed fill, all read the right bytes and the blob commits.
func TestLazyConcurrentReaders(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 8 * mib
	data, dgst := o.push(t, 4, size)
	cfg := fetch.DefaultConfig()
	cfg.ChunkSize = 256 << 10
	cfg.MaxRangeRequest = 512 << 10
	cfg.BackgroundRate = 0
	e := newEnv(t, cfg, nil, newUpstream(t), nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
			if err != nil {
				t.Error(err)
				return
			}
			defer b.Close()
			for range 20 {
				off := rng.Int64N(size)
				p := make([]byte, min(rng.Int64N(300<<10)+1, size-off))
				if _, err := b.ReadAt(p, off); err != nil || !bytes.Equal(p, data[off:off+int64(len(p))]) {
					t.Errorf("ReadAt(%d bytes at %d): %v, equal %v", len(p), off, err, err == nil)
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); err != nil {
		t.Fatal(err)
	}
	checkStored(t, e, dgst, data)
}

// TestLazyWithSequentialSource: a source without ranges makes OpenLazy an
// Open: a read of the end waits for the stream, and gets the right bytes.
func TestLazyWithSequentialSource(t *testing.T) {
	data, dgst := storetest.Random(5, 3*chunk)
	src := newFakeSource(int64(len(data)))
	e := newEnv(t, slowConfig(), nil, src, nil)
	done := make(chan error, 1)
	go func() {
		b, _, err := e.fetcher.OpenLazy(t.Context(), repo, dgst)
		if err == nil {
			p := make([]byte, 10)
			_, err = b.ReadAt(p, int64(len(data))-10)
			if err == nil && !bytes.Equal(p, data[len(data)-10:]) {
				err = errors.New("wrong bytes")
			}
			b.Close()
		}
		done <- err
	}()
	s := <-src.streams
	s.send(t, data)
	s.w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if calls := src.calls(); len(calls) != 1 || calls[0] != 0 {
		t.Errorf("source calls %v, want one stream from 0", calls)
	}
}

// TestLazyRangeFailure: range requests that keep failing fail the fetch:
// the reader waiting gets the error (not a hang), the partial stays, and a
// later reader, the origin healed, gets its bytes.
func TestLazyRangeFailure(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 4 * mib
	data, dgst := o.push(t, 6, size)
	o.failRanges.Store(true)
	cfg := slowConfig()
	cfg.Retries, cfg.RetryBackoff = 1, time.Millisecond
	e := newEnv(t, cfg, nil, newUpstream(t), nil)
	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.ReadAt(make([]byte, 10), size-10); !errors.Is(err, puller.ErrUnavailable) {
		t.Fatalf("ReadAt with the origin failing ranges = %v, want ErrUnavailable", err)
	}
	if info, err := e.store.Stat(t.Context(), dgst); err != nil || info.Complete {
		t.Fatalf("Stat after the failure = %+v, %v; want the partial kept", info, err)
	}
	o.failRanges.Store(false)
	b2, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	p := make([]byte, 10)
	if _, err := b2.ReadAt(p, size-10); err != nil || !bytes.Equal(p, data[size-10:]) {
		t.Fatalf("ReadAt once the origin healed: %v", err)
	}
}

// TestLazyOriginIgnoresRanges: an origin that answers ranges with the whole
// blob makes the fetch sequential at full speed; readers get their bytes.
func TestLazyOriginIgnoresRanges(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 4 * mib
	data, dgst := o.push(t, 7, size)
	o.ignoreRanges.Store(true)
	e := newEnv(t, slowConfig(), nil, newUpstream(t), nil)
	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := make([]byte, 10)
	if _, err := b.ReadAt(p, size-10); err != nil || !bytes.Equal(p, data[size-10:]) {
		t.Fatalf("ReadAt from an origin ignoring ranges: %v", err)
	}
	if _, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); err != nil {
		t.Fatal(err)
	}
	checkStored(t, e, dgst, data)
}

// TestLazySlowFillIsNotIdle: a background rate so low that a chunk takes
// many idle timeouts to be allowed does not make the fetch give up: waiting
// for the rate is not the source stalling.
func TestLazySlowFillIsNotIdle(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 4 * mib
	data, dgst := o.push(t, 8, size)
	cfg := slowConfig()
	cfg.BackgroundRate = 1 << 10
	cfg.IdleTimeout, cfg.Retries, cfg.RetryBackoff = 20*time.Millisecond, 1, time.Millisecond
	e := newEnv(t, cfg, nil, newUpstream(t), nil)
	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Ten idle timeouts (and retries) go by while the fill waits for its
	// first chunk, 17 minutes away at this rate.
	time.Sleep(10 * cfg.IdleTimeout)
	p := make([]byte, 10)
	if _, err := b.ReadAt(p, size/2); err != nil || !bytes.Equal(p, data[size/2:size/2+10]) {
		t.Fatalf("ReadAt after ten idle timeouts of a slow fill: %v", err)
	}
	if got := metricstest.Sum(t, e.reg, "thaw_upstream_errors_total", nil); got != 0 {
		t.Errorf("thaw_upstream_errors_total = %v, want 0", got)
	}
}

// TestLazyFillYieldsToReaders: while readers fetch ranges, the background
// fill waits (Config.DemandQuiet), so start-up reads have the link to
// themselves; a whole-blob reader lifts the wait and the blob completes.
func TestLazyFillYieldsToReaders(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 16 * mib
	data, dgst := o.push(t, 7, size)
	cfg := fetch.DefaultConfig()
	cfg.BackgroundRate = 1 << 30 // not what holds the fill back here
	cfg.DemandQuiet, cfg.MaxYield = time.Hour, time.Hour
	e := newEnv(t, cfg, nil, newUpstream(t), nil)

	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tail := make([]byte, 100)
	if _, err := b.ReadAt(tail, size-100); err != nil || !bytes.Equal(tail, data[size-100:]) {
		t.Fatalf("ReadAt(tail): %v", err)
	}
	background := func() float64 {
		return metricstest.Sum(t, e.reg, "thaw_lazy_fetched_bytes_total", map[string]string{"kind": "background"})
	}
	before := background()
	// Unyielding, the fill would bring the other 15 MiB in milliseconds
	// at this rate; yielding, at most the chunk it had under way.
	time.Sleep(300 * time.Millisecond)
	if grew := background() - before; grew > mib {
		t.Fatalf("the fill fetched %v bytes while a reader had just read; want it to wait", grew)
	}
	if cached, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); cached || err != nil {
		t.Fatalf("Ensure = %v, %v", cached, err)
	}
	storetest.ReadAll(t, b)
	if served := o.served.Load(); served != size {
		t.Errorf("origin served %d bytes for a %d-byte blob; want each byte once", served, size)
	}
}

// streamOnly hides a Source's ranges, as the peer network's Source does.
type streamOnly struct {
	puller.Source
	calls atomic.Int64
}

func (s *streamOnly) FetchBlob(ctx context.Context, repo name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	s.calls.Add(1)
	return s.Source.FetchBlob(ctx, repo, dgst, offset)
}

// TestLazyRangesBesideASequentialSource: with a Source that serves no
// ranges (the peer network) and Config.Ranges (the origin), a reader's
// range comes by a range request at once, and the rest of the blob through
// the Source's stream; each byte is fetched once, and the range's bytes
// count as upstream bytes.
func TestLazyRangesBesideASequentialSource(t *testing.T) {
	o := newRangeOrigin(t)
	const size = 8 * mib
	data, dgst := o.push(t, 8, size)
	up := newUpstream(t)
	src := &streamOnly{Source: up}
	cfg := slowConfig()
	cfg.CountBytes, cfg.SourceName, cfg.Ranges = false, "cluster", up
	cfg.DemandQuiet, cfg.MaxYield = time.Minute, time.Minute
	e := newEnv(t, cfg, nil, src, nil)

	b, _, err := e.fetcher.OpenLazy(t.Context(), o.repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tail := make([]byte, 10)
	if _, err := b.ReadAt(tail, size-10); err != nil || !bytes.Equal(tail, data[size-10:]) {
		t.Fatalf("ReadAt(tail): %v", err)
	}
	tailRange := fmt.Sprintf("bytes=%d-%d", size-mib, size-1)
	if !slicesContains(o.seen(), tailRange) {
		t.Fatalf("origin saw %v, want the tail's chunk by range", o.seen())
	}
	// The Source's stream (a peer download at full speed) is not opened
	// while readers are fetching their ranges.
	if got := src.calls.Load(); got != 0 {
		t.Errorf("the Source's stream was opened %d times while a reader read; want it to wait", got)
	}
	// A read in the middle too: the fill then has two gaps to fill.
	midRange := fmt.Sprintf("bytes=%d-%d", 3*mib, 4*mib-1)
	mid := make([]byte, 10)
	if _, err := b.ReadAt(mid, 3*mib+5); err != nil || !bytes.Equal(mid, data[3*mib+5:3*mib+15]) {
		t.Fatalf("ReadAt(middle): %v", err)
	}
	if cached, err := e.fetcher.Ensure(t.Context(), o.repo, dgst); cached || err != nil {
		t.Fatalf("Ensure = %v, %v", cached, err)
	}
	storetest.ReadAll(t, b)
	// One stream for the whole fill, through the gaps: a peer download
	// reads ahead, so reopening it at each gap would fetch bytes again.
	if got := src.calls.Load(); got != 1 {
		t.Errorf("the Source's stream was opened %d times; want once", got)
	}
	for _, r := range o.seen() {
		if r != "" && r != tailRange && r != midRange {
			t.Errorf("origin saw range %q: only the reader's range goes by range request, the rest streams", r)
		}
	}
	if got := metricstest.Sum(t, e.reg, "thaw_fetched_bytes_total", map[string]string{"source": "upstream"}); got != 2*mib {
		t.Errorf("upstream bytes counted %v, want the two ranges' %d (the Source counts its own)", got, 2*mib)
	}
}
