package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/goleak"

	"github.com/thaw-dev/thaw/puller"
	"github.com/thaw-dev/thaw/puller/store"
	"github.com/thaw-dev/thaw/puller/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, quota int64) store.ContentStore {
		return newStore(t, t.TempDir(), store.WithQuota(quota))
	})
}

func newStore(t testing.TB, root string, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.New(root, opts...)
	if err != nil {
		t.Fatalf("New(%s): %v", root, err)
	}
	return s
}

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock {
	return &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opt  store.Option
	}{
		{"negative quota", store.WithQuota(-1)},
		{"nil logger", store.WithLogger(nil)},
		{"zero partial max age", store.WithPartialMaxAge(0)},
		{"nil clock", store.WithClock(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := store.New(t.TempDir(), tt.opt); err == nil {
				t.Errorf("New with %s succeeded", tt.name)
			}
		})
	}
}

func TestLayout(t *testing.T) {
	root := t.TempDir()
	s := newStore(t, root)
	ctx := t.Context()
	data, dgst := storetest.Random(1, 1000)
	ing, err := s.Ingest(ctx, dgst, 1000)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if _, err := ing.Write(data[:10]); err != nil {
		t.Fatalf("Write: %v", err)
	}
	partial := filepath.Join(root, "ingest", "sha256", dgst.Hex)
	if got, err := os.ReadFile(filepath.Join(partial, "size")); err != nil || string(got) != "1000" {
		t.Errorf("size file = %q, %v; want 1000", got, err)
	}
	if fi, err := os.Stat(filepath.Join(partial, "data")); err != nil || fi.Size() != 10 {
		t.Errorf("data file: %v, %v; want 10 bytes", fi, err)
	}
	if _, err := ing.Write(data[10:]); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	fi, err := os.Stat(filepath.Join(root, "blobs", "sha256", dgst.Hex))
	if err != nil || fi.Size() != 1000 || fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("committed blob: %v, %v; want 1000 read-only bytes", fi, err)
	}
	if _, err := os.Stat(partial); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ingest directory after commit: %v, want gone", err)
	}
	if err := s.Pin(ctx, dgst); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "pins", "sha256", dgst.Hex)); err != nil {
		t.Errorf("pin file: %v", err)
	}
}

func TestDigestMismatchLeavesNothing(t *testing.T) {
	root := t.TempDir()
	s := newStore(t, root)
	_, dgst := storetest.Random(2, 1000)
	wrong, _ := storetest.Random(3, 1000)
	ing, err := s.Ingest(t.Context(), dgst, 1000)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if _, err := ing.Write(wrong); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := ing.Commit(t.Context()); !errors.Is(err, puller.ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
	}
	checkDirEmpty(t, filepath.Join(root, "blobs", "sha256"))
	checkDirEmpty(t, filepath.Join(root, "ingest", "sha256"))
}

func checkDirEmpty(t *testing.T, dir string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil || len(des) != 0 {
		t.Errorf("%s holds %v (%v), want nothing", dir, des, err)
	}
}

func TestRestartResumes(t *testing.T) {
	root := t.TempDir()
	s := newStore(t, root)
	ctx := t.Context()
	const size = 3 << 20
	data, dgst := storetest.Random(4, size)
	ing, err := s.Ingest(ctx, dgst, size)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if _, err := ing.Write(data[:size/2]); err != nil {
		t.Fatalf("Write: %v", err)
	}
	ing.Abort(errors.New("shutting down"), false)

	s = newStore(t, root)
	info, err := s.Stat(ctx, dgst)
	if err != nil {
		t.Fatalf("Stat after restart: %v", err)
	}
	if info.Complete || info.Size != size || info.Present != size/2 {
		t.Errorf("Stat after restart = %+v, want a partial with %d of %d bytes", info, size/2, size)
	}
	if used, _ := s.Usage(); used != size {
		t.Errorf("used after restart = %d, want %d", used, size)
	}
	ing, err = s.Ingest(ctx, dgst, size)
	if err != nil {
		t.Fatalf("Ingest after restart: %v", err)
	}
	if ing.Offset() != size/2 {
		t.Fatalf("Offset after restart = %d, want %d", ing.Offset(), size/2)
	}
	if _, err := ing.Write(data[size/2:]); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}

	s = newStore(t, root)
	b, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open after a second restart: %v", err)
	}
	defer b.Close()
	if got := storetest.ReadAll(t, b); !b.Complete() || !bytes.Equal(got, data) {
		t.Errorf("content after resume and restart differs")
	}
}

func TestRestartCleansUp(t *testing.T) {
	root := t.TempDir()
	s := newStore(t, root)
	ctx := t.Context()
	complete, _ := storetest.Random(5, 100)
	dComplete := storetest.Put(t, s, complete)
	if err := s.Pin(ctx, dComplete); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	_, dPartial := storetest.Random(6, 100)
	_, dNoSize := storetest.Random(7, 100)
	_, dBadSize := storetest.Random(8, 100)
	_, dTooLong := storetest.Random(9, 100)
	_, dNoData := storetest.Random(10, 100)

	ingest := func(d v1.Hash) string { return filepath.Join(root, "ingest", "sha256", d.Hex) }
	write := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(ingest(dPartial), "size"), "100")
	write(filepath.Join(ingest(dPartial), "size.tmp"), "10")
	write(filepath.Join(ingest(dPartial), "data"), "0123456789")
	write(filepath.Join(ingest(dNoSize), "data"), "0123456789")
	write(filepath.Join(ingest(dBadSize), "size"), "a hundred")
	write(filepath.Join(ingest(dBadSize), "data"), "0123456789")
	write(filepath.Join(ingest(dTooLong), "size"), "5")
	write(filepath.Join(ingest(dTooLong), "data"), "0123456789")
	write(filepath.Join(ingest(dNoData), "size"), "100")
	write(filepath.Join(ingest(dComplete), "size"), "100") // crash after rename
	write(filepath.Join(root, "blobs", "sha256", dPartial.Hex+".tmp"), "junk")
	write(filepath.Join(root, "blobs", "sha256", "README"), "not ours")

	s = newStore(t, root)
	infos, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	got := map[v1.Hash]store.Info{}
	for _, info := range infos {
		info.LastUsed = time.Time{}
		got[info.Digest] = info
	}
	want := map[v1.Hash]store.Info{
		dComplete: {Digest: dComplete, Size: 100, Present: 100, Complete: true, Pinned: true},
		dPartial:  {Digest: dPartial, Size: 100, Present: 10},
	}
	if len(got) != len(want) || got[dComplete] != want[dComplete] || got[dPartial] != want[dPartial] {
		t.Errorf("List after restart = %+v, want %+v", got, want)
	}
	for _, path := range []string{
		filepath.Join(ingest(dPartial), "size.tmp"),
		ingest(dNoSize), ingest(dBadSize), ingest(dTooLong), ingest(dNoData), ingest(dComplete),
		filepath.Join(root, "blobs", "sha256", dPartial.Hex+".tmp"),
	} {
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after restart: %v, want removed", path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "blobs", "sha256", "README")); err != nil {
		t.Errorf("a file the store does not own was touched: %v", err)
	}
}

func TestLRUEviction(t *testing.T) {
	c := newClock()
	s := newStore(t, t.TempDir(), store.WithQuota(300), store.WithClock(c.Now))
	ctx := t.Context()
	var digests []v1.Hash
	for i := range 3 {
		data, _ := storetest.Random(uint64(20+i), 100)
		digests = append(digests, storetest.Put(t, s, data))
		c.Advance(time.Second)
	}
	a, b, cc := digests[0], digests[1], digests[2]
	blob, err := s.Open(ctx, a) // a is now the most recently used
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	blob.Close()
	if info, _ := s.Stat(ctx, a); !info.LastUsed.Equal(c.Now()) {
		t.Errorf("LastUsed after Open = %v, want %v", info.LastUsed, c.Now())
	}
	c.Advance(time.Second)

	d, _ := storetest.Random(23, 100)
	storetest.Put(t, s, d)
	if _, err := s.Stat(ctx, b); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("least recently used blob still there: Stat = %v", err)
	}
	for _, dgst := range []v1.Hash{a, cc} {
		if _, err := s.Stat(ctx, dgst); err != nil {
			t.Errorf("Stat(%s) = %v, want kept", dgst, err)
		}
	}
}

func TestLRUSurvivesRestart(t *testing.T) {
	c := newClock()
	root := t.TempDir()
	s := newStore(t, root, store.WithClock(c.Now))
	ctx := t.Context()
	a, _ := storetest.Random(30, 100)
	b, _ := storetest.Random(31, 100)
	da := storetest.Put(t, s, a)
	c.Advance(time.Second)
	db := storetest.Put(t, s, b)
	c.Advance(2 * time.Minute)
	blob, err := s.Open(ctx, da)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	blob.Close()

	s = newStore(t, root, store.WithClock(c.Now), store.WithQuota(200))
	if info, _ := s.Stat(ctx, da); !info.LastUsed.Equal(c.Now()) {
		t.Errorf("LastUsed after restart = %v, want the last Open at %v", info.LastUsed, c.Now())
	}
	d, _ := storetest.Random(32, 100)
	storetest.Put(t, s, d)
	if _, err := s.Stat(ctx, db); !errors.Is(err, puller.ErrNotFound) {
		t.Errorf("blob unused since before the restart kept: Stat = %v", err)
	}
	if _, err := s.Stat(ctx, da); err != nil {
		t.Errorf("blob opened before the restart evicted: %v", err)
	}
}

func TestEvictStalePartials(t *testing.T) {
	c := newClock()
	s := newStore(t, t.TempDir(), store.WithClock(c.Now), store.WithPartialMaxAge(time.Hour))
	ctx := t.Context()
	partial := func(seed uint64) v1.Hash {
		data, dgst := storetest.Random(seed, 100)
		ing, err := s.Ingest(ctx, dgst, 100)
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		if _, err := ing.Write(data[:10]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		ing.Abort(nil, false)
		return dgst
	}
	stale, pinned, active := partial(40), partial(41), partial(42)
	if err := s.Pin(ctx, pinned); err != nil {
		t.Fatalf("Pin: %v", err)
	}
	ing, err := s.Ingest(ctx, active, 100)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	defer ing.Abort(nil, true)

	c.Advance(59 * time.Minute)
	if evicted, err := s.Evict(ctx, 1<<30); err != nil || len(evicted) != 0 {
		t.Errorf("Evict before the max age = %v, %v; want nothing", evicted, err)
	}
	fresh := partial(43)
	c.Advance(time.Minute)
	evicted, err := s.Evict(ctx, 1<<30)
	if err != nil || len(evicted) != 1 || evicted[0].Digest != stale || evicted[0].Complete || evicted[0].Present != 10 {
		t.Fatalf("Evict after the max age = %+v, %v; want only the stale partial %s", evicted, err, stale)
	}
	for _, dgst := range []v1.Hash{pinned, active, fresh} {
		if _, err := s.Stat(ctx, dgst); err != nil {
			t.Errorf("Stat(%s) = %v, want kept", dgst, err)
		}
	}
}

func TestDeleteWakesPartialReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		s := newStore(t, dir)
		ctx := t.Context()
		data, dgst := storetest.Random(50, 100)
		ing, err := s.Ingest(ctx, dgst, 100)
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		if _, err := ing.Write(data[:50]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		ing.Abort(nil, false)
		// A restarted store: the partial is on disk and no ingestion ever
		// ended in this process, so a reader of missing bytes waits.
		s = newStore(t, dir)
		b, err := s.Open(ctx, dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer b.Close()
		done := make(chan error, 1)
		go func() {
			_, err := b.ReadAt(make([]byte, 10), 60)
			done <- err
		}()
		synctest.Wait()
		if err := s.Delete(ctx, dgst); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if err := <-done; !errors.Is(err, puller.ErrNotFound) {
			t.Errorf("waiting ReadAt after Delete = %v, want ErrNotFound", err)
		}
	})
}

func TestCloseWakesReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, t.TempDir())
		_, dgst := storetest.Random(51, 100)
		ing, err := s.Ingest(t.Context(), dgst, 100)
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		defer ing.Abort(nil, true)
		b, err := s.Open(context.Background(), dgst)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := b.ReadAt(make([]byte, 10), 0)
			done <- err
		}()
		synctest.Wait()
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, os.ErrClosed) {
			t.Errorf("waiting ReadAt after Close = %v, want os.ErrClosed", err)
		}
		if info, _ := s.Stat(t.Context(), dgst); info.InUse != true {
			t.Errorf("InUse = false with the ingestion open")
		}
	})
}

func TestInUseFollowsRefs(t *testing.T) {
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	data, _ := storetest.Random(52, 10)
	dgst := storetest.Put(t, s, data)
	b1, _ := s.Open(ctx, dgst)
	b2, _ := s.Open(ctx, dgst)
	b1.Close()
	if err := b1.Close(); err == nil {
		t.Errorf("second Close succeeded")
	}
	if info, _ := s.Stat(ctx, dgst); !info.InUse {
		t.Errorf("InUse = false with one Blob open")
	}
	b2.Close()
	if info, _ := s.Stat(ctx, dgst); info.InUse {
		t.Errorf("InUse = true with every Blob closed")
	}
}

func BenchmarkReadAtComplete(b *testing.B) {
	s := newStore(b, b.TempDir())
	data, _ := storetest.Random(60, 8<<20)
	dgst := storetest.Put(b, s, data)
	blob, err := s.Open(context.Background(), dgst)
	if err != nil {
		b.Fatal(err)
	}
	defer blob.Close()
	b.Run("serial", func(b *testing.B) {
		p := make([]byte, 64<<10)
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		var off int64
		for b.Loop() {
			if _, err := blob.ReadAt(p, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
			off = (off + int64(len(p))) % int64(len(data))
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(64 << 10)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			p := make([]byte, 64<<10)
			var off int64
			for pb.Next() {
				if _, err := blob.ReadAt(p, off); err != nil && err != io.EOF {
					b.Fatal(err)
				}
				off = (off + int64(len(p))) % int64(len(data))
			}
		})
	})
}

// BenchmarkNew measures the startup scan of a store of 20000 blobs.
func BenchmarkNew(b *testing.B) {
	root := b.TempDir()
	dir := filepath.Join(root, "blobs", "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range 20000 {
		d := storetest.Digest([]byte(strconv.Itoa(i)))
		if err := os.WriteFile(filepath.Join(dir, d.Hex), []byte(strconv.Itoa(i)), 0o444); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		newStore(b, root)
	}
}

// TestOnRemove: every way a blob leaves the store is reported, so the
// cluster never lists this node as a holder of a blob it no longer has.
func TestOnRemove(t *testing.T) {
	var removed []v1.Hash
	s, err := store.New(t.TempDir(), store.WithOnRemove(func(d v1.Hash) { removed = append(removed, d) }))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	a, _ := storetest.Random(60, 1000)
	b, _ := storetest.Random(61, 1000)
	da, db := storetest.Put(t, s, a), storetest.Put(t, s, b)
	if err := s.Delete(ctx, da); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Evict(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || removed[0] != da || removed[1] != db {
		t.Fatalf("removed = %v, want [%s %s]", removed, da, db)
	}
}

// TestSparseResume: the ranges of a sparse partial survive a restart, and
// the resumed ingestion writes only the gaps.
func TestSparseResume(t *testing.T) {
	root := t.TempDir()
	ctx := t.Context()
	s := newStore(t, root)
	data, dgst := storetest.Random(40, 100000)
	ing, err := s.Ingest(ctx, dgst, 100000)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	for _, r := range []store.Range{{Start: 90000, End: 100000}, {Start: 0, End: 20000}, {Start: 50000, End: 60000}} {
		if _, err := ing.WriteAt(data[r.Start:r.End], r.Start); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
	}
	ing.Abort(nil, false)

	s = newStore(t, root)
	info, err := s.Stat(ctx, dgst)
	if err != nil || info.Present != 40000 || info.Complete {
		t.Fatalf("Stat after restart = %+v, %v; want 40000 bytes present", info, err)
	}
	b, err := s.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	p := make([]byte, 10000)
	if _, err := b.ReadAt(p, 90000); err != nil || !bytes.Equal(p, data[90000:]) {
		t.Fatalf("ReadAt(tail) after restart: %v", err)
	}
	ing, err = s.Ingest(ctx, dgst, 100000)
	if err != nil {
		t.Fatalf("Ingest after restart: %v", err)
	}
	want := []store.Range{{Start: 20000, End: 50000}, {Start: 60000, End: 90000}}
	got := ing.Missing(0, 100000)
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Missing after restart = %v, want %v", got, want)
	}
	if ing.Offset() != 20000 {
		t.Errorf("Offset after restart = %d, want 20000", ing.Offset())
	}
	for _, r := range got {
		if _, err := ing.WriteAt(data[r.Start:r.End], r.Start); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
	}
	if err := ing.Commit(ctx); err != nil {
		t.Fatalf("Commit after resume: %v", err)
	}
	storetest.ReadAll(t, b)
}

// TestRangesFileOnDisk covers what a restart makes of the ranges file: one
// that does not parse drops the partial; a partial from before ranges files
// (none) holds its data file's bytes; records past the data file's end
// are forgotten.
func TestRangesFileOnDisk(t *testing.T) {
	tests := []struct {
		name    string
		ranges  *string // nil: no ranges file
		data    int     // bytes in the data file
		present int64   // -1: the partial is removed
	}{
		{"garbage", ptr("0-10\nhello\n"), 100, -1},
		{"past the size", ptr("0-2000\n"), 100, -1},
		{"unsorted", ptr("50-60\n0-10\n"), 100, -1},
		{"legacy prefix", nil, 300, 300},
		{"past the data", ptr("0-10\n200-400\n"), 300, 110},
		{"good", ptr("0-10\n20-30\n"), 100, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			data, dgst := storetest.Random(41, 1000)
			dir := filepath.Join(root, "ingest", "sha256", dgst.Hex)
			must(t, os.MkdirAll(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(dir, "size"), []byte("1000"), 0o644))
			must(t, os.WriteFile(filepath.Join(dir, "data"), data[:tt.data], 0o644))
			if tt.ranges != nil {
				must(t, os.WriteFile(filepath.Join(dir, "ranges"), []byte(*tt.ranges), 0o644))
			}
			s := newStore(t, root)
			info, err := s.Stat(t.Context(), dgst)
			if tt.present < 0 {
				if err == nil {
					t.Fatalf("Stat = %+v; want the partial removed", info)
				}
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("partial directory: %v, want removed", err)
				}
				return
			}
			if err != nil || info.Present != tt.present {
				t.Fatalf("Stat = %+v, %v; want %d bytes present", info, err, tt.present)
			}
			if tt.ranges == nil {
				raw, err := os.ReadFile(filepath.Join(dir, "ranges"))
				if err != nil || string(raw) != "0-300\n" {
					t.Errorf("ranges file written for a legacy partial = %q, %v; want 0-300", raw, err)
				}
			}
		})
	}
}

func ptr(s string) *string { return &s }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCrashForgetsUnrecordedRanges: a crash (here: another Store opening the
// root while the ingestion is still open, as after a kill) finds only the
// ranges recorded after a sync. Bytes written since are in the data file but
// not trusted: they are fetched again, and what the restart trusts reads
// right.
func TestCrashForgetsUnrecordedRanges(t *testing.T) {
	root := t.TempDir()
	ctx := t.Context()
	s := newStore(t, root)
	const size = 40 << 20
	data, dgst := storetest.Random(42, size)
	ing, err := s.Ingest(ctx, dgst, size)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	defer ing.Abort(nil, true)
	// 36 MiB from the end first: past the 32 MiB mark, so they are synced and
	// recorded; then 1 MiB at the start, not recorded yet.
	if _, err := ing.WriteAt(data[4<<20:], 4<<20); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	if _, err := ing.WriteAt(data[:1<<20], 0); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}

	crashed := newStore(t, root)
	b, err := crashed.Open(ctx, dgst)
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	defer b.Close()
	want := []store.Range{{Start: 0, End: 4 << 20}}
	if got := b.Missing(0, size); len(got) != 1 || got[0] != want[0] {
		t.Fatalf("Missing after the crash = %v, want %v: only the synced ranges count", got, want)
	}
	p := make([]byte, 1<<20)
	if _, err := b.ReadAt(p, size-1<<20); err != nil || !bytes.Equal(p, data[size-1<<20:]) {
		t.Fatalf("ReadAt(recorded tail) after the crash: %v", err)
	}
}
