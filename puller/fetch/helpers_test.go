package fetch_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/metrics"
	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/fetch"
	"github.com/thaw-dev/thaw/puller/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var repo = name.MustParseReference("registry.example/team/app:v1").Context()

// stream is one answer of fakeSource: the test writes the blob's bytes from
// offset on into w, and closes it (EOF), breaks it (CloseWithError) or lets
// it stall.
type stream struct {
	offset int64
	w      *io.PipeWriter
}

// send writes p into the stream; it returns once the fetcher has read it.
func (s *stream) send(t *testing.T, p []byte) {
	t.Helper()
	if _, err := s.w.Write(p); err != nil {
		t.Errorf("source write at offset %d: %v", s.offset, err)
	}
}

// fakeSource is a puller.Source the test drives: every FetchBlob call is
// recorded and hands the test a stream on streams. A stream's body is cut
// when the call's context is done, as an HTTP body is.
type fakeSource struct {
	streams chan *stream

	mu      sync.Mutex
	size    int64
	sizes   map[int]int64 // size announced by the n-th call (0-based), else size
	fail    map[int]error // error of the n-th call
	offsets []int64
}

var _ puller.Source = (*fakeSource)(nil)

func newFakeSource(size int64) *fakeSource {
	return &fakeSource{streams: make(chan *stream, 16), size: size, sizes: map[int]int64{}, fail: map[int]error{}}
}

func (s *fakeSource) FetchBlob(ctx context.Context, _ name.Repository, dgst v1.Hash, offset int64) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	call := len(s.offsets)
	s.offsets = append(s.offsets, offset)
	size, ok := s.sizes[call]
	if !ok {
		size = s.size
	}
	err := s.fail[call]
	s.mu.Unlock()
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", dgst, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, context.Cause(ctx)
	}
	pr, pw := io.Pipe()
	stop := context.AfterFunc(ctx, func() { pr.CloseWithError(context.Cause(ctx)) })
	s.streams <- &stream{offset: offset, w: pw}
	return &body{PipeReader: pr, stop: stop}, size, nil
}

func (s *fakeSource) calls() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.offsets...)
}

type body struct {
	*io.PipeReader
	stop func() bool
}

func (b *body) Close() error {
	b.stop()
	return b.PipeReader.Close()
}

// env is a Fetcher on a real store in a temporary directory.
type env struct {
	store   *store.Store
	fetcher *fetch.Fetcher
	reg     *prometheus.Registry
}

func testLogger() *slog.Logger {
	if os.Getenv("THAW_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func newStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	st, err := store.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newEnv(t *testing.T, cfg fetch.Config, st *store.Store, src puller.Source, manifests puller.ManifestSource) *env {
	t.Helper()
	if st == nil {
		st = newStore(t, t.TempDir())
	}
	reg := prometheus.NewRegistry()
	f, err := fetch.New(cfg, st, src, manifests, metrics.NewPuller(reg), testLogger())
	if err != nil {
		t.Fatalf("fetch.New: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return &env{store: st, fetcher: f, reg: reg}
}

// present returns how many bytes of dgst the store has and whether it is
// complete; -1 when it has none.
func present(t *testing.T, st store.Admin, dgst v1.Hash) (int64, bool) {
	t.Helper()
	info, err := st.Stat(context.Background(), dgst)
	if errors.Is(err, puller.ErrNotFound) {
		return -1, false
	}
	if err != nil {
		t.Fatalf("Stat(%s): %v", dgst, err)
	}
	return info.Present, info.Complete
}
