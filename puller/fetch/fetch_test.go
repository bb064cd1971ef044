package fetch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/thaw-dev/thaw/metrics/metricstest"
	"io"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

const chunk = 64 << 10

func TestConfigValidate(t *testing.T) {
	good := fetch.DefaultConfig()
	tests := []struct {
		name   string
		change func(*fetch.Config)
		ok     bool
	}{
		{"default", func(*fetch.Config) {}, true},
		{"no retries", func(c *fetch.Config) { c.Retries = 0 }, true},
		{"zero idle timeout", func(c *fetch.Config) { c.IdleTimeout = 0 }, false},
		{"negative retries", func(c *fetch.Config) { c.Retries = -1 }, false},
		{"negative backoff", func(c *fetch.Config) { c.RetryBackoff = -time.Second }, false},
		{"no source name", func(c *fetch.Config) { c.SourceName = "" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.change(&cfg)
			f, err := fetch.New(cfg, newStore(t, t.TempDir()), newFakeSource(0), nil, metrics.NewPuller(prometheus.NewRegistry()), testLogger())
			if (err == nil) != tt.ok {
				t.Fatalf("New(%+v) error = %v, want ok %v", cfg, err, tt.ok)
			}
			if f != nil {
				f.Close()
			}
		})
	}
}

func TestOpenCompleteBlobIsCacheHit(t *testing.T) {
	src := newFakeSource(0)
	e := newEnv(t, fetch.DefaultConfig(), nil, src, nil)
	data, _ := storetest.Random(1, 1000)
	dgst := storetest.Put(t, e.store, data)

	b, source, err := e.fetcher.Open(t.Context(), repo, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if source != metrics.SourceCache || !b.Complete() || !bytes.Equal(storetest.ReadAll(t, b), data) {
		t.Fatalf("Open of a stored blob: source %q complete %v", source, b.Complete())
	}
	if cached, err := e.fetcher.Ensure(t.Context(), repo, dgst); !cached || err != nil {
		t.Fatalf("Ensure of a stored blob = %v, %v; want cached", cached, err)
	}
	if calls := src.calls(); len(calls) != 0 {
		t.Fatalf("source called %v for a stored blob", calls)
	}
	if got := metricstest.Sum(t, e.reg, "thaw_cache_requests_total", map[string]string{"kind": "blob", "result": "hit"}); got != 1 {
		t.Fatalf("blob cache hits = %v, want 1", got)
	}
}

// A reader of a blob being fetched gets each byte as it lands: the first
// chunk before the source has sent the second.
func TestOpenStreamsAsBytesArrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(2, 3*chunk)
		src := newFakeSource(int64(len(data)))
		e := newEnv(t, fetch.DefaultConfig(), nil, src, nil)

		b, source, err := e.fetcher.Open(t.Context(), repo, dgst)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if source != metrics.SourceUpstream || b.Complete() || b.Size() != int64(len(data)) {
			t.Fatalf("Open while fetching: source %q, complete %v, size %d", source, b.Complete(), b.Size())
		}
		if got := metricstest.Sum(t, e.reg, "thaw_fetches_in_flight", nil); got != 1 {
			t.Fatalf("thaw_fetches_in_flight = %v during the fetch, want 1", got)
		}
		s := <-src.streams
		for i := range 3 {
			s.send(t, data[i*chunk:(i+1)*chunk])
			if i == 2 {
				s.w.Close()
			}
			// Before the next chunk is sent, this one is readable.
			got := make([]byte, chunk)
			n, err := b.ReadAt(got, int64(i*chunk))
			if err != nil && !(i == 2 && err == io.EOF) || n != chunk || !bytes.Equal(got, data[i*chunk:(i+1)*chunk]) {
				t.Fatalf("chunk %d: ReadAt = %d, %v (equal %v)", i, n, err, bytes.Equal(got[:n], data[i*chunk:i*chunk+n]))
			}
		}
		if cached, err := e.fetcher.Ensure(t.Context(), repo, dgst); err != nil {
			t.Fatalf("Ensure after the fetch: %v, %v", cached, err)
		}
		synctest.Wait() // the fetch goroutine has finished
		if n, complete := present(t, e.store, dgst); !complete || n != int64(len(data)) {
			t.Fatalf("store has %d bytes, complete %v", n, complete)
		}
		if got := src.calls(); !slices.Equal(got, []int64{0}) {
			t.Fatalf("source calls at offsets %v, want [0]", got)
		}
		for _, m := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"thaw_fetched_bytes_total", map[string]string{"source": "upstream"}, float64(len(data))},
			{"thaw_fetches_in_flight", nil, 0},
			{"thaw_pull_duration_seconds", map[string]string{"source": "upstream"}, 1},
			{"thaw_cache_requests_total", map[string]string{"kind": "blob", "result": "miss"}, 1},
			{"thaw_upstream_errors_total", nil, 0},
		} {
			if got := metricstest.Sum(t, e.reg, m.name, m.labels); got != m.want {
				t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
			}
		}
	})
}

func TestOneFetchForConcurrentCallers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(3, 2*chunk+7)
		src := newFakeSource(int64(len(data)))
		e := newEnv(t, fetch.DefaultConfig(), nil, src, nil)

		const openers, ensurers = 8, 8
		type result struct {
			what   string
			source string
			data   []byte
			err    error
		}
		results := make(chan result, openers+ensurers)
		for range openers {
			go func() {
				b, source, err := e.fetcher.Open(context.Background(), repo, dgst)
				if err != nil {
					results <- result{what: "Open", err: err}
					return
				}
				defer b.Close()
				got, err := io.ReadAll(io.NewSectionReader(b, 0, b.Size()))
				results <- result{what: "Open", source: source, data: got, err: err}
			}()
		}
		for range ensurers {
			go func() {
				cached, err := e.fetcher.Ensure(context.Background(), repo, dgst)
				if cached {
					err = errors.Join(err, errors.New("reported cached"))
				}
				results <- result{what: "Ensure", err: err}
			}()
		}
		synctest.Wait() // every caller is waiting on the fetch, which waits on the source
		if got := len(src.calls()); got != 1 {
			t.Fatalf("%d callers made %d source calls, want 1", openers+ensurers, got)
		}
		s := <-src.streams
		s.send(t, data)
		s.w.Close()
		for range openers + ensurers {
			r := <-results
			if r.err != nil {
				t.Fatalf("%s: %v", r.what, r.err)
			}
			if r.what == "Open" && (r.source != metrics.SourceUpstream || !bytes.Equal(r.data, data)) {
				t.Fatalf("Open: source %q, %d bytes (equal %v)", r.source, len(r.data), bytes.Equal(r.data, data))
			}
		}
		if got := len(src.calls()); got != 1 {
			t.Fatalf("source called %d times, want 1", got)
		}
		synctest.Wait()
		if got := metricstest.Sum(t, e.reg, "thaw_fetched_bytes_total", nil); got != float64(len(data)) {
			t.Fatalf("thaw_fetched_bytes_total = %v, want %d", got, len(data))
		}
	})
}

// script is what the source does with one stream.
type script func(t *testing.T, s *stream, data []byte)

// sendRange sends data[from:to] and leaves the stream open (a stall).
func sendRange(from, to int) script {
	return func(t *testing.T, s *stream, data []byte) { s.send(t, data[from:to]) }
}

// sendThenBreak sends data[from:to] and then breaks the connection.
func sendThenBreak(from, to int) script {
	return func(t *testing.T, s *stream, data []byte) {
		s.send(t, data[from:to])
		s.w.CloseWithError(io.ErrUnexpectedEOF)
	}
}

// sendRest sends the blob from the stream's offset to the end.
func sendRest(t *testing.T, s *stream, data []byte) {
	s.send(t, data[s.offset:])
	s.w.Close()
}

func nothing(*testing.T, *stream, []byte) {}

// trickle sends the blob a chunk every gap of (fake) time.
func trickle(gap time.Duration) script {
	return func(t *testing.T, s *stream, data []byte) {
		for off := s.offset; off < int64(len(data)); off += chunk {
			time.Sleep(gap) // a slow source, in the bubble's fake time
			s.send(t, data[off:min(off+chunk, int64(len(data)))])
		}
		s.w.Close()
	}
}

func TestResumeAndFailure(t *testing.T) {
	const size = 5 * chunk
	tests := []struct {
		name        string
		retries     int
		sizes       map[int]int64 // size the n-th source call announces
		fail        map[int]error
		scripts     []script
		wantOffsets []int64
		wantErr     error   // nil: the blob is complete
		wantPresent int64   // partial bytes kept after a failure; -1: none
		wantKind    string  // thaw_upstream_errors_total label
		wantElapsed float64 // seconds of (fake) time the fetch took; 0: not checked
	}{
		{
			name:        "broken stream resumes at the offset",
			retries:     3,
			scripts:     []script{sendThenBreak(0, chunk), sendThenBreak(chunk, 3*chunk), sendRest},
			wantOffsets: []int64{0, chunk, 3 * chunk},
			// backoff 1s, then 2s
			wantElapsed: 3,
		},
		{
			name:        "slow but steady stream is not cut",
			retries:     0,
			scripts:     []script{trickle(6 * time.Second)},
			wantOffsets: []int64{0},
			wantElapsed: 5 * 6,
		},
		{
			name:        "stalled stream is cut after the idle timeout and resumed",
			retries:     1,
			scripts:     []script{sendRange(0, 2*chunk), sendRest},
			wantOffsets: []int64{0, 2 * chunk},
			wantElapsed: 10 + 1, // idle timeout, backoff
		},
		{
			name:        "retries exhausted keeps the partial",
			retries:     2,
			scripts:     []script{sendThenBreak(0, chunk), sendThenBreak(chunk, 2*chunk), sendThenBreak(2*chunk, 3*chunk)},
			wantOffsets: []int64{0, chunk, 2 * chunk},
			wantErr:     io.ErrUnexpectedEOF,
			wantPresent: 3 * chunk,
			wantKind:    "other",
		},
		{
			name:        "idle timeout without retries",
			retries:     0,
			scripts:     []script{sendRange(0, chunk)},
			wantOffsets: []int64{0},
			wantErr:     puller.ErrUnavailable,
			wantPresent: chunk,
			wantKind:    "server",
			wantElapsed: 10,
		},
		{
			name:        "size changed on resume discards the partial",
			retries:     3,
			sizes:       map[int]int64{1: size + 1},
			scripts:     []script{sendThenBreak(0, chunk), nothing},
			wantOffsets: []int64{0, chunk},
			wantErr:     puller.ErrSizeMismatch,
			wantPresent: -1,
			wantKind:    "size_mismatch",
		},
		{
			name:        "not found on resume is not retried",
			retries:     3,
			fail:        map[int]error{1: puller.ErrNotFound},
			scripts:     []script{sendThenBreak(0, chunk)},
			wantOffsets: []int64{0, chunk},
			wantErr:     puller.ErrNotFound,
			wantPresent: chunk,
			wantKind:    "not_found",
		},
		{
			name:        "not found at once stores nothing",
			retries:     3,
			fail:        map[int]error{0: puller.ErrNotFound},
			wantOffsets: []int64{0},
			wantErr:     puller.ErrNotFound,
			wantPresent: -1,
			wantKind:    "not_found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				data, dgst := storetest.Random(4, size)
				src := newFakeSource(size)
				src.sizes, src.fail = tt.sizes, tt.fail
				if src.sizes == nil {
					src.sizes = map[int]int64{}
				}
				if src.fail == nil {
					src.fail = map[int]error{}
				}
				cfg := fetch.DefaultConfig()
				cfg.Retries, cfg.IdleTimeout, cfg.RetryBackoff = tt.retries, 10*time.Second, time.Second
				e := newEnv(t, cfg, nil, src, nil)

				start := time.Now()
				done := make(chan error, 1)
				go func() {
					_, err := e.fetcher.Ensure(context.Background(), repo, dgst)
					done <- err
				}()
				for _, sc := range tt.scripts {
					sc(t, <-src.streams, data)
				}
				err := <-done
				elapsed := time.Since(start).Seconds()
				synctest.Wait()

				if got := src.calls(); !slices.Equal(got, tt.wantOffsets) {
					t.Errorf("source called at offsets %v, want %v", got, tt.wantOffsets)
				}
				if tt.wantElapsed != 0 && elapsed != tt.wantElapsed {
					t.Errorf("fetch took %vs, want %vs", elapsed, tt.wantElapsed)
				}
				if got := metricstest.Sum(t, e.reg, "thaw_fetches_in_flight", nil); got != 0 {
					t.Errorf("thaw_fetches_in_flight = %v after the fetch", got)
				}
				n, complete := present(t, e.store, dgst)
				if tt.wantErr == nil {
					if err != nil {
						t.Fatalf("Ensure: %v", err)
					}
					if !complete || n != size {
						t.Fatalf("store has %d bytes, complete %v; want the whole blob", n, complete)
					}
					b, _, err := e.fetcher.Open(t.Context(), repo, dgst)
					if err != nil {
						t.Fatal(err)
					}
					defer b.Close()
					if !bytes.Equal(storetest.ReadAll(t, b), data) {
						t.Fatal("the resumed blob differs from the source's")
					}
					return
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Ensure = %v, want an error wrapping %v", err, tt.wantErr)
				}
				if complete || n != tt.wantPresent {
					t.Errorf("store has %d bytes (complete %v), want %d", n, complete, tt.wantPresent)
				}
				if got := metricstest.Sum(t, e.reg, "thaw_upstream_errors_total", map[string]string{"kind": tt.wantKind}); got != 1 {
					t.Errorf("thaw_upstream_errors_total{kind=%q} = %v, want 1", tt.wantKind, got)
				}
			})
		})
	}
}

// A partial blob left by a failed fetch is where the next fetch starts.
func TestPartialResumedByNextFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(5, 3*chunk)
		src := newFakeSource(int64(len(data)))
		cfg := fetch.DefaultConfig()
		cfg.Retries = 0
		e := newEnv(t, cfg, nil, src, nil)

		done := make(chan error, 1)
		go func() { _, err := e.fetcher.Ensure(context.Background(), repo, dgst); done <- err }()
		sendThenBreak(0, chunk)(t, <-src.streams, data)
		if err := <-done; err == nil {
			t.Fatal("Ensure of a broken stream without retries succeeded")
		}
		go func() { _, err := e.fetcher.Ensure(context.Background(), repo, dgst); done <- err }()
		sendRest(t, <-src.streams, data)
		if err := <-done; err != nil {
			t.Fatalf("second Ensure: %v", err)
		}
		if got := src.calls(); !slices.Equal(got, []int64{0, chunk}) {
			t.Fatalf("source called at offsets %v, want [0 %d]", got, chunk)
		}
		if got := metricstest.Sum(t, e.reg, "thaw_fetched_bytes_total", nil); got != float64(len(data)) {
			t.Fatalf("thaw_fetched_bytes_total = %v, want %d: the kept bytes were fetched again", got, len(data))
		}
	})
}

func TestDigestMismatchStoresNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(6, 2*chunk)
		wrong := bytes.Clone(data)
		wrong[len(wrong)/2] ^= 0xff
		src := newFakeSource(int64(len(data)))
		e := newEnv(t, fetch.DefaultConfig(), nil, src, nil)

		b, _, err := e.fetcher.Open(t.Context(), repo, dgst)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		readErr := make(chan error, 1)
		go func() {
			_, err := b.ReadAt(make([]byte, b.Size()), 0)
			readErr <- err
		}()
		ensureErr := make(chan error, 1)
		go func() { _, err := e.fetcher.Ensure(context.Background(), repo, dgst); ensureErr <- err }()
		synctest.Wait() // the reader and Ensure wait on the fetch
		s := <-src.streams
		s.send(t, wrong)
		s.w.Close()

		if err := <-ensureErr; !errors.Is(err, puller.ErrDigestMismatch) {
			t.Fatalf("Ensure = %v, want ErrDigestMismatch", err)
		}
		if err := <-readErr; !errors.Is(err, puller.ErrDigestMismatch) {
			t.Fatalf("a reader of the whole wrong blob got %v, want ErrDigestMismatch", err)
		}
		synctest.Wait()
		if n, _ := present(t, e.store, dgst); n != -1 {
			t.Fatalf("store kept %d bytes of a wrong blob", n)
		}
		if got := metricstest.Sum(t, e.reg, "thaw_upstream_errors_total", map[string]string{"kind": "digest_mismatch"}); got != 1 {
			t.Fatalf("thaw_upstream_errors_total{kind=digest_mismatch} = %v, want 1", got)
		}
		if got := len(src.calls()); got != 1 {
			t.Fatalf("a digest mismatch was retried: %d source calls", got)
		}
	})
}

func TestCloseStopsFetchesAndKeepsPartial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(7, 3*chunk)
		src := newFakeSource(int64(len(data)))
		cfg := fetch.DefaultConfig()
		cfg.IdleTimeout = time.Hour
		e := newEnv(t, cfg, nil, src, nil)

		b, _, err := e.fetcher.Open(t.Context(), repo, dgst)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		done := make(chan error, 1)
		go func() { _, err := e.fetcher.Ensure(context.Background(), repo, dgst); done <- err }()
		sendRange(0, chunk)(t, <-src.streams, data) // and then stall
		readErr := make(chan error, 1)
		go func() {
			_, err := b.ReadAt(make([]byte, chunk), chunk) // waits for bytes that will not come
			readErr <- err
		}()
		synctest.Wait()

		closed := time.Now()
		if err := e.fetcher.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if time.Since(closed) != 0 {
			t.Fatalf("Close took %s of fake time: it waited on a timer, not on the fetch", time.Since(closed))
		}
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Ensure during Close = %v, want context.Canceled", err)
		}
		if err := <-readErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("a waiting reader got %v, want context.Canceled", err)
		}
		if n, complete := present(t, e.store, dgst); complete || n != chunk {
			t.Fatalf("after Close the store has %d bytes (complete %v), want a partial of %d", n, complete, chunk)
		}
		if got := metricstest.Sum(t, e.reg, "thaw_fetches_in_flight", nil); got != 0 {
			t.Fatalf("thaw_fetches_in_flight = %v after Close", got)
		}
		if got := len(src.calls()); got != 1 {
			t.Fatalf("Close led to %d source calls, want 1 (no retry)", got)
		}

		// A new fetcher on the same store (a restarted daemon) resumes.
		src2 := newFakeSource(int64(len(data)))
		e2 := newEnv(t, fetch.DefaultConfig(), e.store, src2, nil)
		go func() { _, err := e2.fetcher.Ensure(context.Background(), repo, dgst); done <- err }()
		sendRest(t, <-src2.streams, data)
		if err := <-done; err != nil {
			t.Fatalf("Ensure after restart: %v", err)
		}
		if got := src2.calls(); !slices.Equal(got, []int64{chunk}) {
			t.Fatalf("restarted fetch called the source at %v, want [%d]", got, chunk)
		}
	})
}

func TestOpenWaitIsBoundedByContextButFetchIsNot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		data, dgst := storetest.Random(8, chunk)
		src := newFakeSource(chunk)
		release := make(chan struct{})
		e := newEnv(t, fetch.DefaultConfig(), nil, &blockingSource{fakeSource: src, release: release}, nil)

		// The source has not answered: Open waits for the fetch to start, as
		// long as its context lets it.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, _, err := e.fetcher.Open(ctx, repo, dgst); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Open with a source that does not answer = %v, want DeadlineExceeded", err)
		}
		// The fetch itself goes on, detached from the caller.
		close(release)
		s := <-src.streams
		s.send(t, data)
		s.w.Close()
		synctest.Wait()
		if n, complete := present(t, e.store, dgst); !complete || n != chunk {
			t.Fatalf("store has %d bytes, complete %v, after the detached fetch", n, complete)
		}
		if cached, err := e.fetcher.Ensure(context.Background(), repo, dgst); !cached || err != nil {
			t.Fatalf("Ensure after the detached fetch = %v, %v; want cached", cached, err)
		}
		if got := len(src.calls()); got != 1 {
			t.Fatalf("source called %d times, want 1", got)
		}
	})
}

// blockingSource holds every FetchBlob until release is closed.
type blockingSource struct {
	*fakeSource
	release chan struct{}
}

func (b *blockingSource) FetchBlob(ctx context.Context, r name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
	return b.fakeSource.FetchBlob(ctx, r, dgst, offset)
}

func TestErrorBeforeStartReachesCallers(t *testing.T) {
	_, dgst := storetest.Random(9, 100)
	src := newFakeSource(100)
	refused := fmt.Errorf("registry says: %w", puller.ErrUnauthorized)
	src.fail[0], src.fail[1] = refused, refused
	e := newEnv(t, fetch.DefaultConfig(), nil, src, nil)
	if _, _, err := e.fetcher.Open(t.Context(), repo, dgst); !errors.Is(err, puller.ErrUnauthorized) {
		t.Fatalf("Open = %v, want ErrUnauthorized", err)
	}
	if n, _ := present(t, e.store, dgst); n != -1 {
		t.Fatalf("store holds %d bytes after a refused fetch", n)
	}
	if _, err := e.fetcher.Ensure(t.Context(), repo, dgst); !errors.Is(err, puller.ErrUnauthorized) {
		t.Fatalf("Ensure = %v, want ErrUnauthorized", err)
	}
	if got := metricstest.Sum(t, e.reg, "thaw_upstream_errors_total", map[string]string{"kind": "unauthorized"}); got != 2 {
		t.Fatalf("thaw_upstream_errors_total{kind=unauthorized} = %v, want 2", got)
	}
}

func TestCountBytesAndOnCommit(t *testing.T) {
	tests := []struct {
		name        string
		countBytes  bool
		corrupt     bool
		wantCounted float64
		wantCommits int
	}{
		{"counted and committed", true, false, 3 * chunk, 1},
		{"not counted", false, false, 0, 1},
		{"refused blob is not committed", true, true, 3 * chunk, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				data, dgst := storetest.Random(10, 3*chunk)
				if tt.corrupt {
					data = bytes.Clone(data)
					data[0] ^= 1
				}
				type commit struct {
					dgst v1.Hash
					size int64
				}
				var commits []commit
				src := newFakeSource(int64(len(data)))
				cfg := fetch.DefaultConfig()
				cfg.CountBytes = tt.countBytes
				cfg.OnCommit = func(d v1.Hash, size int64) { commits = append(commits, commit{d, size}) }
				e := newEnv(t, cfg, nil, src, nil)

				done := make(chan error, 1)
				go func() { _, err := e.fetcher.Ensure(context.Background(), repo, dgst); done <- err }()
				sendRest(t, <-src.streams, data)
				if err := <-done; (err == nil) != !tt.corrupt {
					t.Fatalf("Ensure = %v", err)
				}
				if got := metricstest.Sum(t, e.reg, "thaw_fetched_bytes_total", nil); got != tt.wantCounted {
					t.Errorf("thaw_fetched_bytes_total = %v, want %v", got, tt.wantCounted)
				}
				if len(commits) != tt.wantCommits || tt.wantCommits == 1 && commits[0] != (commit{dgst, int64(len(data))}) {
					t.Errorf("OnCommit calls %v, want %d for %s", commits, tt.wantCommits, dgst)
				}
			})
		})
	}
}
